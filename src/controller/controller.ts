// Wires the informer, the work queue, the job runner and the reconciler together the way
// controller-runtime does: event handlers only enqueue keys; workers take keys from the queue,
// reconcile, and back off per key on errors.
import type { KubeConfig } from '@kubernetes/client-node';
import { GROUP, VERSION, VOLUME_PROVISION, type VolumeProvision } from '../api/v1alpha1.ts';
import { JobRunner } from '../jobs/runner.ts';
import type { EventRecorder, SecretReader, VolumeProvisionApi } from '../k8s/api.ts';
import { errorMessage } from '../k8s/errors.ts';
import { StatusWriter } from '../k8s/status-writer.ts';
import type { Pipeline } from '../pipeline/types.ts';
import type { Logger } from '../telemetry/logger.ts';
import type { BackoffPolicy } from '../util/backoff.ts';
import { type Clock, systemClock } from '../util/clock.ts';
import { Informer, objectKey } from './informer.ts';
import { Reconciler } from './reconciler.ts';
import { WorkQueue } from './workqueue.ts';

export interface ControllerOptions {
  nodeName: string;
  kubeConfig: KubeConfig;
  api: VolumeProvisionApi;
  secrets: SecretReader;
  events: EventRecorder;
  pipeline: Pipeline;
  logger: Logger;
  maxConcurrentJobs: number;
  statusUpdateIntervalMs: number;
  workers: number;
  clock?: Clock;
  /** Per-key backoff after reconcile errors. */
  reconcileBackoff?: BackoffPolicy;
  /** Delays between job attempts after retryable failures. */
  retryBackoff?: BackoffPolicy;
}

/**
 * Only changes a user or another controller makes need a reconcile; status patches (our
 * own writes) change neither generation, deletion, nor finalizers.
 */
export function needsReconcile(previous: VolumeProvision, current: VolumeProvision): boolean {
  const a = previous.metadata ?? {};
  const b = current.metadata ?? {};
  return (
    a.generation !== b.generation ||
    a.deletionTimestamp !== b.deletionTimestamp ||
    (a.finalizers ?? []).join() !== (b.finalizers ?? []).join()
  );
}

export class Controller {
  readonly informer: Informer<VolumeProvision>;
  readonly runner: JobRunner;
  readonly #queue: WorkQueue<string>;
  readonly #reconciler: Reconciler;
  readonly #status: StatusWriter;
  readonly #options: ControllerOptions;
  readonly #workers: Promise<void>[] = [];

  constructor(options: ControllerOptions) {
    this.#options = options;
    const clock = options.clock ?? systemClock;
    const logger = options.logger;
    this.#queue = new WorkQueue<string>({
      clock,
      backoff: options.reconcileBackoff ?? { baseMs: 500, maxMs: 5 * 60_000 },
    });
    this.#status = new StatusWriter(options.api, {
      intervalMs: options.statusUpdateIntervalMs,
      clock,
      onError: (ref, error) =>
        logger.warn({ key: `${ref.namespace}/${ref.name}`, err: errorMessage(error) }, 'status write failed'),
    });
    this.runner = new JobRunner(options.maxConcurrentJobs, {
      queueChanged: (waiting) => this.#reconciler.queueChanged(waiting),
      finished: (key, error) => {
        if (error) logger.error({ key, err: error }, 'job task threw');
      },
    });
    this.#reconciler = new Reconciler({
      nodeName: options.nodeName,
      cache: { get: (key) => this.informer.get(key) },
      objects: options.api,
      secrets: options.secrets,
      events: options.events,
      status: this.#status,
      runner: this.runner,
      pipeline: options.pipeline,
      clock,
      logger,
      retryBackoff: options.retryBackoff ?? { baseMs: 5_000, maxMs: 5 * 60_000 },
      requeue: (key) => this.#queue.add(key),
    });
    const enqueue = (object: VolumeProvision) => this.#queue.add(objectKey(object));
    this.informer = new Informer<VolumeProvision>({
      kubeConfig: options.kubeConfig,
      path: `/apis/${GROUP}/${VERSION}/${VOLUME_PROVISION.plural}`,
      // The API server filters by node (the CRD declares spec.nodeName selectable), so this
      // pod never receives, stores or decodes other nodes' objects.
      fieldSelector: `spec.nodeName=${options.nodeName}`,
      list: (fieldSelector) => options.api.list(fieldSelector),
      handlers: {
        add: enqueue,
        update: (previous, current) => {
          if (needsReconcile(previous, current)) enqueue(current);
        },
        delete: enqueue,
      },
      onError: (error, retryInMs) =>
        logger.warn({ err: errorMessage(error), retryInMs }, 'list/watch failed; retrying'),
      clock,
    });
  }

  get hasSynced(): boolean {
    return this.informer.hasSynced;
  }

  start(): void {
    this.informer.start();
    for (let index = 0; index < this.#options.workers; index += 1) this.#workers.push(this.#work());
  }

  /**
   * Graceful stop: take no new work, hand running jobs back (their status stays, so the
   * next start resumes them), flush pending status, all within `timeoutMs`.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.#queue.shutDown();
    const stopping = (async () => {
      await this.informer.stop();
      await this.runner.shutDown();
      await Promise.all(this.#workers);
      await this.#status.flushAll();
    })();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const outcome = await Promise.race([stopping.then(() => 'stopped' as const), deadline]);
    clearTimeout(timer);
    if (outcome === 'timeout')
      this.#options.logger.warn({ timeoutMs }, 'jobs did not stop in time; exiting anyway');
  }

  async #work(): Promise<void> {
    const logger = this.#options.logger;
    for (;;) {
      const key = await this.#queue.get();
      if (key === undefined) return;
      try {
        const result = await this.#reconciler.reconcile(key);
        this.#queue.forget(key);
        if (result.requeueAfterMs !== undefined) this.#queue.addAfter(key, result.requeueAfterMs);
      } catch (error) {
        const delay = this.#queue.addRateLimited(key);
        logger.warn({ key, err: errorMessage(error), retryInMs: delay }, 'reconcile failed; retrying');
      } finally {
        this.#queue.done(key);
      }
    }
  }
}
