// Reconciles one VolumeProvision from the latest cached object: a level-triggered state
// machine. Each call looks at what is (object, status, running job) and does the next step:
// finalizer first, then a job under the runner's semaphore, then cleanup on deletion with the
// finalizer removed last. Job outcomes reach the API server only through the StatusWriter.
import {
  type Condition,
  FINALIZER,
  type Stage,
  TRACEPARENT_ANNOTATION,
  type VolumeProvision,
  type VolumeProvisionStatus,
} from '../api/v1alpha1.ts';
import { ArrivalOrder } from '../jobs/arrival-order.ts';
import { JobAbort, type JobRunner } from '../jobs/runner.ts';
import type { EventRecorder, SecretReader, VolumeProvisionApi } from '../k8s/api.ts';
import { errorMessage } from '../k8s/errors.ts';
import { refOf, type StatusWriter } from '../k8s/status-writer.ts';
import {
  type Pipeline,
  PipelineError,
  type ProgressReport,
  type ProvisionRequest,
} from '../pipeline/types.ts';
import { type Logger, redactUrlText } from '../telemetry/logger.ts';
import type { JobMetrics, JobStatus } from '../telemetry/metrics.ts';
import { inJobSpan, recordFailure } from '../telemetry/tracing.ts';
import { type BackoffPolicy, backoffDelay } from '../util/backoff.ts';
import type { Clock } from '../util/clock.ts';
import { readSourceCredentials } from './credentials.ts';
import { setCondition } from './status.ts';

export interface ReconcilerDeps {
  nodeName: string;
  cache: { get(key: string): VolumeProvision | undefined };
  objects: Pick<VolumeProvisionApi, 'setFinalizers'>;
  secrets: SecretReader;
  events: EventRecorder;
  status: StatusWriter<VolumeProvisionStatus>;
  runner: JobRunner;
  pipeline: Pipeline;
  clock: Clock;
  logger: Logger;
  /** Delays between attempts after a retryable failure. */
  retryBackoff: BackoffPolicy;
  /** Called when a job ends, so the key is reconciled again. */
  requeue(key: string): void;
  metrics?: JobMetrics;
}

export interface ReconcileResult {
  requeueAfterMs?: number;
}

const READY = 'Ready';

const STAGE_MESSAGES: Record<ProgressReport['stage'], string> = {
  Initializing: 'Inspecting the source image',
  Downloading: 'Downloading the image into the node cache',
  Converting: 'Converting the image into the volume',
  Finalizing: 'Finalizing the volume',
};

/** How one attempt ended; `shutdown` hands the job back to the next start and counts as nothing. */
type JobOutcome = { status: JobStatus; error?: string } | { status: 'shutdown' };

const generationOf = (object: VolumeProvision): number => object.metadata?.generation ?? 0;

export class Reconciler {
  readonly #deps: ReconcilerDeps;
  /** Earliest time of the next attempt per key, after a retryable failure. */
  readonly #retryAt = new Map<string, number>();
  readonly #order = new ArrivalOrder();

  constructor(deps: ReconcilerDeps) {
    this.#deps = deps;
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const { cache, nodeName, runner, logger } = this.#deps;
    const cached = cache.get(key);
    if (!cached) {
      // Gone from the API server: nothing may run for it any more.
      await runner.cancel(key);
      this.#retryAt.delete(key);
      this.#order.forget(key);
      return {};
    }
    if (cached.spec.nodeName !== nodeName) {
      logger.warn({ key, nodeName: cached.spec.nodeName }, 'ignoring an object meant for another node');
      return {};
    }
    this.#order.arrive(key);
    if (cached.metadata?.deletionTimestamp) return this.#finalize(key, cached);

    // Before any external work, so that a deletion always waits for our cleanup. The reconcile
    // goes on with the patched object instead of waiting for its watch echo, which then finds
    // the job submitted. (The API server adds no finalizer to an object being deleted, and the
    // patch is conditional on the resourceVersion, so the result is never being deleted.)
    const finalizers = cached.metadata?.finalizers ?? [];
    const object = finalizers.includes(FINALIZER)
      ? cached
      : await this.#deps.objects.setFinalizers(cached, [...finalizers, FINALIZER]);

    const ref = refOf(object);
    this.#deps.status.observe(ref, object.status);
    const status = this.#deps.status.current(ref.uid) ?? {};
    const generation = generationOf(object);

    if (runner.has(key)) return {};
    if (status.stage === 'Completed' || status.stage === 'Failed') {
      // Spec changes that can still happen (reclaimPolicy) need no work, only acknowledgement.
      if (status.observedGeneration !== generation) {
        await this.#setStatus(object, { ...status, observedGeneration: generation }, true);
      }
      return {};
    }
    const retryAt = this.#retryAt.get(key);
    const now = this.#deps.clock.now();
    if (retryAt !== undefined && retryAt > now) return { requeueAfterMs: retryAt - now };

    runner.submit(
      key,
      (signal) => this.#observedJob(key, object, signal),
      this.#order.rank(key, object.metadata?.creationTimestamp),
    );
    const position = runner.positionOf(key);
    if (position !== undefined && position > 0) await this.#markQueued(object, status, position);
    return {};
  }

  /** Keeps queuePosition of waiting jobs current; called by the runner's observer. */
  queueChanged(waiting: readonly string[]): void {
    waiting.forEach((key, index) => {
      const object = this.#deps.cache.get(key);
      if (!object || object.metadata?.deletionTimestamp) return;
      const status = this.#deps.status.current(refOf(object).uid) ?? object.status ?? {};
      if (status.queuePosition !== index + 1) void this.#markQueued(object, status, index + 1);
    });
  }

  #markQueued(object: VolumeProvision, status: VolumeProvisionStatus, position: number): Promise<void> {
    const message = `Waiting for a free job slot (position ${position})`;
    return this.#setStatus(
      object,
      this.#withStage(object, status, 'Queued', { reason: 'Queued', message }, { queuePosition: position }),
      status.stage !== 'Queued',
    );
  }

  async #finalize(key: string, object: VolumeProvision): Promise<ReconcileResult> {
    const { runner, pipeline, events, logger } = this.#deps;
    await runner.cancel(key);
    this.#retryAt.delete(key);
    const finalizers = object.metadata?.finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) return {};
    const ref = refOf(object);
    this.#deps.status.forget(ref.uid);
    if (object.spec.reclaimPolicy === 'Delete') {
      try {
        await pipeline.release({ uid: ref.uid, spec: object.spec });
      } catch (error) {
        events.record(
          object,
          'Warning',
          'CleanupFailed',
          `Could not remove the volume: ${errorMessage(error)}`,
        );
        throw error;
      }
      events.record(object, 'Normal', 'VolumeDeleted', `Removed ${object.spec.target.volumeName}`);
    } else {
      events.record(
        object,
        'Normal',
        'VolumeRetained',
        `Kept ${object.spec.target.volumeName} (reclaimPolicy Retain)`,
      );
    }
    await this.#deps.objects.setFinalizers(
      object,
      finalizers.filter((finalizer) => finalizer !== FINALIZER),
    );
    logger.info({ key }, 'finalized');
    return {};
  }

  /** Runs a job in its runJob span and counts its outcome. */
  #observedJob(key: string, object: VolumeProvision, signal: AbortSignal): Promise<void> {
    const { uid, namespace, name } = refOf(object);
    const startedAt = this.#deps.clock.now();
    const attributes = {
      'job.id': uid,
      'job.correlation_id': object.spec.correlationId ?? '',
      'k8s.namespace.name': namespace,
      'k8s.volumeprovision.name': name,
      'image.url': redactUrlText(object.spec.source.url),
      'image.format': object.spec.source.format,
      'volume.name': object.spec.target.volumeName,
      'volume.type': object.spec.target.type,
    };
    const traceparent = object.metadata?.annotations?.[TRACEPARENT_ANNOTATION];
    return inJobSpan('runJob', attributes, traceparent, async (span) => {
      const outcome = await this.#runJob(key, object, signal);
      span.setAttribute('job.status', outcome.status);
      if (outcome.status === 'shutdown') return;
      if (outcome.status === 'failed') recordFailure(span, outcome.error ?? 'failed');
      this.#deps.metrics?.jobFinished(outcome.status, (this.#deps.clock.now() - startedAt) / 1000);
    });
  }

  async #runJob(key: string, object: VolumeProvision, signal: AbortSignal): Promise<JobOutcome> {
    const { status: writer, clock, events, pipeline } = this.#deps;
    const ref = refOf(object);
    const logger = this.#deps.logger.child({
      job_id: ref.uid,
      correlation_id: object.spec.correlationId,
      key,
      image_url: object.spec.source.url,
    });
    const before = writer.current(ref.uid) ?? object.status ?? {};
    const attempts = (before.attempts ?? 0) + 1;
    let status: VolumeProvisionStatus = this.#withStage(
      object,
      { ...before, attempts, startTime: before.startTime ?? new Date(clock.now()).toISOString() },
      'Initializing',
      { reason: 'Initializing', message: 'Reading the source credentials' },
    );
    // Not awaited: the job's first steps need not wait for a round trip to the API server,
    // and the writer keeps this object's writes in order.
    void this.#setStatus(object, status, true);
    logger.info({ attempts }, 'job started');
    try {
      const credentials = await readSourceCredentials(this.#deps.secrets, ref.namespace, object.spec.source);
      const request: ProvisionRequest = {
        uid: ref.uid,
        namespace: ref.namespace,
        name: ref.name,
        spec: object.spec,
        ...(credentials ? { credentials } : {}),
      };
      const result = await pipeline.provision(request, {
        signal,
        logger,
        onProgress: (report) => {
          if (signal.aborted) return;
          const changed = report.stage !== status.stage;
          status = this.#withProgress(object, status, report);
          void this.#setStatus(object, status, changed);
        },
      });
      signal.throwIfAborted();
      status = this.#withStage(
        object,
        {
          ...status,
          devicePath: result.devicePath,
          virtualSize: result.virtualSize,
          cacheHit: result.cacheHit,
          completionTime: new Date(clock.now()).toISOString(),
          progress: {
            ...(status.progress ?? { bytesProcessed: 0, bytesTotal: 0 }),
            stagePercent: 100,
            overallPercent: 100,
            etaSeconds: 0,
          },
        },
        'Completed',
        { status: 'True', reason: 'Provisioned', message: `Volume ready at ${result.devicePath}` },
      );
      await this.#setStatus(object, status, true);
      this.#retryAt.delete(key);
      events.record(object, 'Normal', 'Provisioned', `Volume ready at ${result.devicePath}`);
      logger.info({ devicePath: result.devicePath, cacheHit: result.cacheHit }, 'job completed');
      return { status: 'completed' };
    } catch (error) {
      if (signal.aborted) {
        // Cancelled for deletion, or handed back at shutdown: neither is a failure. The
        // deletion's reconcile cleans up; the next start resumes from the status left here.
        const reason = signal.reason instanceof JobAbort ? signal.reason.kind : 'aborted';
        logger.info({ reason }, 'job stopped');
        return { status: reason === 'shutdown' ? 'shutdown' : 'cancelled' };
      }
      const failure =
        error instanceof PipelineError
          ? error
          : new PipelineError('ProvisioningFailed', errorMessage(error), { terminal: false, cause: error });
      if (failure.terminal) {
        status = this.#withStage(object, status, 'Failed', {
          reason: failure.reason,
          message: failure.message,
        });
        await this.#setStatus(object, status, true);
        events.record(object, 'Warning', failure.reason, failure.message);
        logger.error({ reason: failure.reason, err: failure }, 'job failed');
        return { status: 'failed', error: failure.message };
      }
      const delay = backoffDelay(attempts, this.#deps.retryBackoff, Math.random);
      this.#retryAt.set(key, clock.now() + delay);
      const message = `${failure.message}; retrying in ${Math.ceil(delay / 1000)}s (attempt ${attempts})`;
      status = this.#withStage(object, status, 'Queued', { reason: failure.reason, message });
      await this.#setStatus(object, status, true);
      events.record(object, 'Warning', failure.reason, message);
      logger.warn({ reason: failure.reason, err: failure, retryInMs: delay }, 'job failed; will retry');
      return { status: 'failed', error: failure.message };
    } finally {
      this.#deps.requeue(key);
    }
  }

  #withStage(
    object: VolumeProvision,
    status: VolumeProvisionStatus,
    stage: Stage,
    ready: { status?: Condition['status']; reason: string; message: string },
    extra: Partial<VolumeProvisionStatus> = {},
  ): VolumeProvisionStatus {
    const generation = generationOf(object);
    const { queuePosition: _dropped, ...rest } = status;
    return {
      ...rest,
      ...extra,
      stage,
      message: ready.message,
      observedGeneration: generation,
      conditions: setCondition(
        status.conditions,
        { type: READY, status: ready.status ?? 'False', reason: ready.reason, message: ready.message },
        generation,
        new Date(this.#deps.clock.now()),
      ),
    };
  }

  #withProgress(
    object: VolumeProvision,
    status: VolumeProvisionStatus,
    report: ProgressReport,
  ): VolumeProvisionStatus {
    const previous = status.stage === report.stage ? status.progress : undefined;
    // Percentages never go backwards within a job, whatever a stage reports.
    const overallPercent = Math.max(status.progress?.overallPercent ?? 0, Math.floor(report.overallPercent));
    const stagePercent = Math.max(previous?.stagePercent ?? 0, Math.floor(report.stagePercent));
    const progress = {
      stagePercent,
      overallPercent,
      bytesProcessed: report.bytesProcessed,
      bytesTotal: report.bytesTotal,
      ...(report.etaSeconds === undefined ? {} : { etaSeconds: Math.round(report.etaSeconds) }),
    };
    const withCache = report.cacheHit === undefined ? {} : { cacheHit: report.cacheHit };
    if (report.stage === status.stage) return { ...status, progress, ...withCache };
    return this.#withStage(
      object,
      { ...status, ...withCache },
      report.stage,
      {
        reason: report.stage,
        message: STAGE_MESSAGES[report.stage],
      },
      { progress },
    );
  }

  async #setStatus(
    object: VolumeProvision,
    status: VolumeProvisionStatus,
    immediate: boolean,
  ): Promise<void> {
    await this.#deps.status.set(refOf(object), status, { immediate });
  }
}
