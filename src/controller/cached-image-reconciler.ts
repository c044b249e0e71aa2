// Reconciles one CachedImage: the user's handle on this node's image cache. Creating one
// pre-warms the cache (a job under the same semaphore as provisioning); its status says
// what is cached; deleting it evicts the entry, waiting while a job still reads the image.
import {
  CACHED_IMAGE,
  type CachedImage,
  type CachedImageStatus,
  type Condition,
  FINALIZER,
  TRACEPARENT_ANNOTATION,
} from '../api/v1alpha1.ts';
import { ArrivalOrder } from '../jobs/arrival-order.ts';
import type { JobRunner } from '../jobs/runner.ts';
import type { EventRecorder, SecretReader } from '../k8s/api.ts';
import { errorMessage } from '../k8s/errors.ts';
import { refOf, type StatusWriter } from '../k8s/status-writer.ts';
import { type CacheControl, PipelineError } from '../pipeline/types.ts';
import { type Logger, redactUrlText } from '../telemetry/logger.ts';
import { inJobSpan } from '../telemetry/tracing.ts';
import { type BackoffPolicy, backoffDelay } from '../util/backoff.ts';
import type { Clock } from '../util/clock.ts';
import { readSourceCredentials } from './credentials.ts';
import { setCondition } from './status.ts';

export interface CachedImageReconcilerDeps {
  nodeName: string;
  cache: { get(key: string): CachedImage | undefined };
  objects: { setFinalizers(object: CachedImage, finalizers: string[]): Promise<unknown> };
  secrets: SecretReader;
  events: EventRecorder<CachedImage>;
  status: StatusWriter<CachedImageStatus>;
  runner: JobRunner;
  control: CacheControl;
  clock: Clock;
  logger: Logger;
  retryBackoff: BackoffPolicy;
  /** How often a Cached image is checked again (it may have been evicted for space). */
  resyncMs: number;
  requeue(key: string): void;
}

/** Job keys share the runner with VolumeProvision keys, so they carry the kind. */
export const cachedImageJobKey = (key: string): string => `${CACHED_IMAGE.plural}/${key}`;

export class CachedImageReconciler {
  readonly #deps: CachedImageReconcilerDeps;
  readonly #retryAt = new Map<string, number>();
  readonly #attempts = new Map<string, number>();
  /** When each Cached image was last confirmed in the cache (in memory: a restart checks again). */
  readonly #checkedAt = new Map<string, number>();
  readonly #order = new ArrivalOrder();

  constructor(deps: CachedImageReconcilerDeps) {
    this.#deps = deps;
  }

  async reconcile(key: string): Promise<{ requeueAfterMs?: number }> {
    const { cache, nodeName, runner } = this.#deps;
    const jobKey = cachedImageJobKey(key);
    const object = cache.get(key);
    if (!object) {
      await runner.cancel(jobKey);
      this.#drop(key);
      return {};
    }
    if (object.spec.nodeName !== nodeName) return {};
    this.#order.arrive(key);
    const finalizers = object.metadata?.finalizers ?? [];
    if (object.metadata?.deletionTimestamp) {
      await runner.cancel(jobKey);
      if (!finalizers.includes(FINALIZER)) return {};
      await this.#evict(object);
      this.#deps.status.forget(refOf(object).uid);
      this.#drop(key);
      await this.#deps.objects.setFinalizers(
        object,
        finalizers.filter((finalizer) => finalizer !== FINALIZER),
      );
      return {};
    }
    if (!finalizers.includes(FINALIZER)) {
      await this.#deps.objects.setFinalizers(object, [...finalizers, FINALIZER]);
      return {};
    }
    const ref = refOf(object);
    this.#deps.status.observe(ref, object.status);
    const status = this.#deps.status.current(ref.uid) ?? {};
    if (runner.has(jobKey) || status.phase === 'Failed') return {};
    const now = this.#deps.clock.now();
    const retryAt = this.#retryAt.get(key);
    if (retryAt !== undefined && retryAt > now) return { requeueAfterMs: retryAt - now };
    if (status.phase === 'Cached') {
      // Checked again now and then: the entry may have been evicted to make room.
      const checked = this.#checkedAt.get(key);
      if (checked !== undefined && now - checked < this.#deps.resyncMs) {
        return { requeueAfterMs: this.#deps.resyncMs - (now - checked) };
      }
    }
    runner.submit(
      jobKey,
      (signal) =>
        inJobSpan(
          'runCacheJob',
          { 'job.id': ref.uid, 'job.type': 'cache', 'image.url': redactUrlText(object.spec.source.url) },
          object.metadata?.annotations?.[TRACEPARENT_ANNOTATION],
          () => this.#prewarm(key, object, signal),
        ),
      this.#order.rank(key, object.metadata?.creationTimestamp),
    );
    if (status.phase === undefined) {
      await this.#setStatus(object, status, 'Pending', {
        reason: 'Queued',
        message: 'Waiting for a free job slot',
      });
    }
    return {};
  }

  async #prewarm(key: string, object: CachedImage, signal: AbortSignal): Promise<void> {
    const ref = refOf(object);
    const logger = this.#deps.logger.child({ job_id: ref.uid, key, kind: CACHED_IMAGE.kind });
    let status = this.#deps.status.current(ref.uid) ?? object.status ?? {};
    try {
      if (status.phase !== 'Cached') {
        status = await this.#setStatus(object, status, 'Downloading', {
          reason: 'Downloading',
          message: 'Downloading the image into the node cache',
        });
      }
      const credentials = await readSourceCredentials(this.#deps.secrets, ref.namespace, object.spec.source);
      const cached = await this.#deps.control.prewarm(object.spec.source, credentials, signal);
      const wasCached = status.phase === 'Cached';
      await this.#setStatus(
        object,
        {
          ...status,
          sizeBytes: cached.sizeBytes,
          sha256: cached.sha256,
          lastUsedTime: cached.lastUsed.toISOString(),
        },
        'Cached',
        {
          status: 'True',
          reason: 'Cached',
          message: `Cached on ${this.#deps.nodeName} (${cached.sizeBytes} bytes)`,
        },
      );
      this.#forget(key);
      this.#checkedAt.set(key, this.#deps.clock.now());
      if (!wasCached || !cached.hit) {
        this.#deps.events.record(object, 'Normal', 'Cached', `Image cached on ${this.#deps.nodeName}`);
      }
      logger.info({ hit: cached.hit, sizeBytes: cached.sizeBytes }, 'cache job completed');
    } catch (error) {
      if (signal.aborted) return;
      const failure =
        error instanceof PipelineError
          ? error
          : new PipelineError('CacheFailed', errorMessage(error), { terminal: false, cause: error });
      if (failure.terminal) {
        await this.#setStatus(object, status, 'Failed', { reason: failure.reason, message: failure.message });
      } else {
        const attempts = (this.#attempts.get(key) ?? 0) + 1;
        this.#attempts.set(key, attempts);
        const delay = backoffDelay(attempts, this.#deps.retryBackoff);
        this.#retryAt.set(key, this.#deps.clock.now() + delay);
        const message = `${failure.message}; retrying in ${Math.ceil(delay / 1000)}s (attempt ${attempts})`;
        await this.#setStatus(object, status, status.phase === 'Cached' ? 'Cached' : 'Pending', {
          reason: failure.reason,
          message,
        });
      }
      this.#deps.events.record(object, 'Warning', failure.reason, failure.message);
      logger.warn({ reason: failure.reason, err: failure }, 'cache job failed');
    } finally {
      this.#deps.requeue(key);
    }
  }

  async #evict(object: CachedImage): Promise<void> {
    try {
      await this.#deps.control.evict(object.spec.source.url);
    } catch (error) {
      // In use: the reconcile fails and is retried with backoff; the finalizer stays.
      this.#deps.events.record(object, 'Normal', 'EvictionDeferred', errorMessage(error));
      throw error;
    }
    this.#deps.events.record(
      object,
      'Normal',
      'Evicted',
      `Image removed from the cache of ${this.#deps.nodeName}`,
    );
  }

  async #setStatus(
    object: CachedImage,
    status: CachedImageStatus,
    phase: NonNullable<CachedImageStatus['phase']>,
    ready: { status?: Condition['status']; reason: string; message: string },
  ): Promise<CachedImageStatus> {
    const generation = object.metadata?.generation ?? 0;
    const next: CachedImageStatus = {
      ...status,
      phase,
      message: ready.message,
      observedGeneration: generation,
      conditions: setCondition(
        status.conditions,
        { type: 'Ready', status: ready.status ?? 'False', reason: ready.reason, message: ready.message },
        generation,
        new Date(this.#deps.clock.now()),
      ),
    };
    await this.#deps.status.set(refOf(object), next, { immediate: status.phase !== phase });
    return next;
  }

  #forget(key: string): void {
    this.#retryAt.delete(key);
    this.#attempts.delete(key);
  }

  /** Drops all memory of an object that is gone. */
  #drop(key: string): void {
    this.#forget(key);
    this.#checkedAt.delete(key);
    this.#order.forget(key);
  }
}
