// Wires the informer, the work queue, the job runner and the reconciler together the way
// controller-runtime does: event handlers only enqueue keys; workers take keys from the queue,
// reconcile, and back off per key on errors.
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import {
  CACHED_IMAGE,
  type CachedImage,
  type CachedImageStatus,
  GROUP,
  VERSION,
  VOLUME_PROVISION,
  type VolumeProvision,
  type VolumeProvisionStatus,
} from '../api/v1alpha1.ts';
import { JobRunner } from '../jobs/runner.ts';
import type { CustomObjectApi, EventRecorder, SecretReader, VolumeProvisionApi } from '../k8s/api.ts';
import { errorMessage } from '../k8s/errors.ts';
import { StatusWriter } from '../k8s/status-writer.ts';
import type { CacheControl, Pipeline } from '../pipeline/types.ts';
import type { Logger } from '../telemetry/logger.ts';
import type { InformerMetrics, JobMetrics, WorkQueueMetrics } from '../telemetry/metrics.ts';
import type { BackoffPolicy } from '../util/backoff.ts';
import { type Clock, systemClock } from '../util/clock.ts';
import { CachedImageReconciler } from './cached-image-reconciler.ts';
import { Informer, objectKey } from './informer.ts';
import { Reconciler } from './reconciler.ts';
import { WorkQueue } from './workqueue.ts';

export interface ControllerOptions {
  nodeName: string;
  kubeConfig: KubeConfig;
  api: VolumeProvisionApi;
  cachedImageApi: CustomObjectApi<CachedImage>;
  secrets: SecretReader;
  events: EventRecorder;
  cachedImageEvents: EventRecorder<CachedImage>;
  pipeline: Pipeline & CacheControl;
  logger: Logger;
  maxConcurrentJobs: number;
  statusUpdateIntervalMs: number;
  workers: number;
  clock?: Clock;
  /** Per-key backoff after reconcile errors. */
  reconcileBackoff?: BackoffPolicy;
  /** Delays between job attempts after retryable failures. */
  retryBackoff?: BackoffPolicy;
  metrics?: {
    jobs: JobMetrics;
    /** The queue and informer metrics of one kind. */
    kind(kind: { kind: string; plural: string }): KindMetrics;
  };
  /** How often a Cached image is confirmed in the cache again; default 10 minutes. */
  cachedImageResyncMs?: number;
}

/**
 * Only changes a user or another controller makes need a reconcile; status patches (our
 * own writes) change neither generation, deletion, nor finalizers.
 */
export function needsReconcile(previous: KubernetesObject, current: KubernetesObject): boolean {
  const a = previous.metadata ?? {};
  const b = current.metadata ?? {};
  return (
    a.generation !== b.generation ||
    a.deletionTimestamp !== b.deletionTimestamp ||
    (a.finalizers ?? []).join() !== (b.finalizers ?? []).join()
  );
}

interface KindLoopOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  plural: string;
  nodeName: string;
  list(fieldSelector: string | undefined): ReturnType<CustomObjectApi<T>['list']>;
  reconcile(key: string): Promise<{ requeueAfterMs?: number }>;
  workers: number;
  logger: Logger;
  clock: Clock;
  backoff: BackoffPolicy;
  metrics?: KindMetrics;
}

export interface KindMetrics {
  queue: WorkQueueMetrics;
  informer: InformerMetrics;
}

/** One kind's informer, work queue and workers: events enqueue keys, workers reconcile them. */
class KindLoop<T extends KubernetesObject> {
  readonly informer: Informer<T>;
  readonly queue: WorkQueue<string>;
  readonly #options: KindLoopOptions<T>;
  readonly #workers: Promise<void>[] = [];

  constructor(options: KindLoopOptions<T>) {
    this.#options = options;
    this.queue = new WorkQueue<string>({
      clock: options.clock,
      backoff: options.backoff,
      ...(options.metrics ? { metrics: options.metrics.queue } : {}),
    });
    const enqueue = (object: T) => this.queue.add(objectKey(object));
    this.informer = new Informer<T>({
      kubeConfig: options.kubeConfig,
      path: `/apis/${GROUP}/${VERSION}/${options.plural}`,
      // The API server filters by node (the CRDs declare spec.nodeName selectable), so this
      // pod never receives, stores or decodes other nodes' objects.
      fieldSelector: `spec.nodeName=${options.nodeName}`,
      list: options.list,
      handlers: {
        add: enqueue,
        update: (previous, current) => {
          if (needsReconcile(previous, current)) enqueue(current);
        },
        delete: enqueue,
      },
      ...(options.metrics ? { metrics: options.metrics.informer } : {}),
      onError: (error, retryInMs) =>
        options.logger.warn(
          { kind: options.plural, err: errorMessage(error), retryInMs },
          'list/watch failed; retrying',
        ),
      clock: options.clock,
    });
  }

  start(): void {
    this.informer.start();
    for (let index = 0; index < this.#options.workers; index += 1) this.#workers.push(this.#work());
  }

  /** Stops taking keys and watching; resolves once no worker is reconciling. */
  async stop(): Promise<void> {
    this.queue.shutDown();
    await this.informer.stop();
    await Promise.all(this.#workers);
  }

  async #work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      try {
        const result = await this.#options.reconcile(key);
        this.queue.forget(key);
        if (result.requeueAfterMs !== undefined) this.queue.addAfter(key, result.requeueAfterMs);
      } catch (error) {
        const delay = this.queue.addRateLimited(key);
        this.#options.logger.warn(
          { kind: this.#options.plural, key, err: errorMessage(error), retryInMs: delay },
          'reconcile failed; retrying',
        );
      } finally {
        this.queue.done(key);
      }
    }
  }
}

/** The node's controller: VolumeProvision and CachedImage loops sharing one job runner. */
export class Controller {
  readonly runner: JobRunner;
  readonly #volumes: KindLoop<VolumeProvision>;
  readonly #cachedImages: KindLoop<CachedImage>;
  readonly #status: StatusWriter<VolumeProvisionStatus>;
  readonly #cachedImageStatus: StatusWriter<CachedImageStatus>;
  readonly #options: ControllerOptions;

  constructor(options: ControllerOptions) {
    this.#options = options;
    const clock = options.clock ?? systemClock;
    const logger = options.logger;
    const backoff = options.reconcileBackoff ?? { baseMs: 500, maxMs: 5 * 60_000 };
    const retryBackoff = options.retryBackoff ?? { baseMs: 5_000, maxMs: 5 * 60_000 };
    const onStatusError = (ref: { namespace: string; name: string }, error: unknown) =>
      logger.warn({ key: `${ref.namespace}/${ref.name}`, err: errorMessage(error) }, 'status write failed');
    this.#status = new StatusWriter(options.api, {
      intervalMs: options.statusUpdateIntervalMs,
      clock,
      onError: onStatusError,
    });
    this.#cachedImageStatus = new StatusWriter(options.cachedImageApi, {
      intervalMs: options.statusUpdateIntervalMs,
      clock,
      onError: onStatusError,
    });
    this.runner = new JobRunner(options.maxConcurrentJobs, {
      queueChanged: (waiting) => reconciler.queueChanged(waiting),
      finished: (key, error) => {
        if (error) logger.error({ key, err: error }, 'job task threw');
      },
    });
    const reconciler: Reconciler = new Reconciler({
      nodeName: options.nodeName,
      cache: { get: (key) => this.#volumes.informer.get(key) },
      objects: options.api,
      secrets: options.secrets,
      events: options.events,
      status: this.#status,
      runner: this.runner,
      pipeline: options.pipeline,
      clock,
      logger,
      retryBackoff,
      requeue: (key) => this.#volumes.queue.add(key),
      ...(options.metrics ? { metrics: options.metrics.jobs } : {}),
    });
    const cachedImageReconciler = new CachedImageReconciler({
      nodeName: options.nodeName,
      cache: { get: (key) => this.#cachedImages.informer.get(key) },
      objects: options.cachedImageApi,
      secrets: options.secrets,
      events: options.cachedImageEvents,
      status: this.#cachedImageStatus,
      runner: this.runner,
      control: options.pipeline,
      clock,
      logger,
      retryBackoff,
      resyncMs: options.cachedImageResyncMs ?? 10 * 60_000,
      requeue: (key) => this.#cachedImages.queue.add(key),
    });
    const shared = {
      kubeConfig: options.kubeConfig,
      nodeName: options.nodeName,
      workers: options.workers,
      logger,
      clock,
      backoff,
    };
    this.#volumes = new KindLoop<VolumeProvision>({
      ...shared,
      plural: VOLUME_PROVISION.plural,
      list: (fieldSelector) => options.api.list(fieldSelector),
      reconcile: (key) => reconciler.reconcile(key),
      ...(options.metrics ? { metrics: options.metrics.kind(VOLUME_PROVISION) } : {}),
    });
    this.#cachedImages = new KindLoop<CachedImage>({
      ...shared,
      plural: CACHED_IMAGE.plural,
      list: (fieldSelector) => options.cachedImageApi.list(fieldSelector),
      reconcile: (key) => cachedImageReconciler.reconcile(key),
      ...(options.metrics ? { metrics: options.metrics.kind(CACHED_IMAGE) } : {}),
    });
  }

  /** Both informers have listed once. */
  get hasSynced(): boolean {
    return this.#volumes.informer.hasSynced && this.#cachedImages.informer.hasSynced;
  }

  start(): void {
    this.#volumes.start();
    this.#cachedImages.start();
  }

  /**
   * Graceful stop: take no new work, hand running jobs back (their status stays, so the
   * next start resumes them), flush pending status, all within `timeoutMs`.
   */
  async stop(timeoutMs: number): Promise<void> {
    const stopping = (async () => {
      const loops = Promise.all([this.#volumes.stop(), this.#cachedImages.stop()]);
      await this.runner.shutDown();
      await loops;
      await Promise.all([this.#status.flushAll(), this.#cachedImageStatus.flushAll()]);
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
}
