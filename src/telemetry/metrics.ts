// Prometheus metrics: every name of the monitoring seed (docs/observability.md), Node.js's
// default process metrics, and controller-runtime style work-queue metrics, all in one
// explicit Registry (never prom-client's global one, which once left /metrics silently empty
// when a second copy of the library registered elsewhere).
// The code that does the work only sees the narrow interfaces below, with no-op versions, so
// unit tests and components built without telemetry need none of this.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

const PREFIX = 'libvirt_volume_provisioner_';

export type JobStatus = 'completed' | 'failed' | 'cancelled';
export const JOB_STATUSES: readonly JobStatus[] = ['completed', 'failed', 'cancelled'];

/** Image steps whose failures are counted; error_type is a PipelineError reason or an errno code. */
export type ImageOperation = 'stat' | 'download' | 'inspect' | 'convert';
export type Stage = 'download' | 'convert';
export const STAGES: readonly Stage[] = ['download', 'convert'];

/** Node-local storage: today the image cache folder, later its SQLite index (issue 4). */
export type StorageOperation = 'open' | 'acquire';
export const STORAGE_OPERATIONS: readonly StorageOperation[] = ['open', 'acquire'];
export type StorageErrorType = 'no_space' | 'permission' | 'io';
export const STORAGE_ERROR_TYPES: readonly StorageErrorType[] = ['no_space', 'permission', 'io'];

export type Dependency = 'minio' | 'lvm' | 'libvirt' | 'storage';
export const DEPENDENCIES: readonly Dependency[] = ['minio', 'lvm', 'libvirt', 'storage'];

export interface JobMetrics {
  /** A job reached a terminal outcome for this attempt, after `seconds`. */
  jobFinished(status: JobStatus, seconds: number): void;
}

export interface PipelineMetrics {
  cacheLookup(hit: boolean): void;
  imageDownloaded(imageType: string, sizeBytes: number): void;
  imageError(operation: ImageOperation, errorType: string): void;
  /** Live throughput while a stage runs. */
  stageThroughput(stage: Stage, bytesPerSecond: number): void;
  stageCompleted(stage: Stage, seconds: number, bytes: number): void;
  storageOperation(operation: StorageOperation, error?: StorageErrorType): void;
}

/** What one informer received from the API server, counted as client-go's reflector does. */
export interface InformerMetrics {
  received(source: 'list' | 'watch', objects: number): void;
}

/** controller-runtime's workqueue metrics for one named queue. */
export interface WorkQueueMetrics {
  added(): void;
  depth(length: number): void;
  /** A key left the queue for a worker after waiting `seconds`. */
  started(waitedSeconds: number): void;
  /** A worker finished a key after `seconds`. */
  finished(workedSeconds: number): void;
  retried(): void;
}

export const noopJobMetrics: JobMetrics = { jobFinished: () => {} };
export const noopPipelineMetrics: PipelineMetrics = {
  cacheLookup: () => {},
  imageDownloaded: () => {},
  imageError: () => {},
  stageThroughput: () => {},
  stageCompleted: () => {},
  storageOperation: () => {},
};

export interface JobSlots {
  running: number;
  slots: number;
}

/** All job slots busy: the seed's `degraded` (at capacity, not `> slots`). */
export const atCapacity = ({ running, slots }: JobSlots): boolean => running >= slots;

const NON_COUNTER_TOTALS = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
];

/** Lookups the rolling cache hit ratio looks back over. */
const HIT_RATIO_WINDOW = 100;

const SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const JOB_BUCKETS = [1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600];
const SIZE_BUCKETS = [1, 16, 64, 256, 1024, 4096, 16384, 65536].map((mib) => mib * 1024 * 1024);

export class ProvisionerMetrics implements JobMetrics, PipelineMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'method' | 'endpoint' | 'status'>;
  readonly requestDuration: Histogram<'method' | 'endpoint'>;
  readonly #jobs: Counter<'status'>;
  readonly #jobDuration: Histogram<'status'>;
  readonly #cacheHits: Counter;
  readonly #cacheMisses: Counter;
  readonly #cacheHitRatio: Gauge;
  readonly #downloads: Counter;
  readonly #downloadSize: Histogram<'image_type'>;
  readonly #imageErrors: Counter<'operation' | 'error_type'>;
  readonly #storageOperations: Counter<'operation' | 'result'>;
  readonly #storageErrors: Counter<'operation' | 'error_type'>;
  readonly #stageDuration: Histogram<'stage'>;
  readonly #stageThroughput: Gauge<'stage'>;
  readonly #dependenciesUp: Gauge<'dependency'>;
  readonly #informerReceived: Counter<'resource' | 'source'>;
  readonly #queueDepth: Gauge<'name'>;
  readonly #queueAdds: Counter<'name'>;
  readonly #queueLatency: Histogram<'name'>;
  readonly #workDuration: Histogram<'name'>;
  readonly #retries: Counter<'name'>;
  readonly #recentLookups: boolean[] = [];
  #jobSlots: () => JobSlots = () => ({ running: 0, slots: 1 });

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // Gauges named *_total break Prometheus naming rules (promtool check metrics rejects them);
    // each is the sum of its per-type gauge, which stays.
    for (const name of NON_COUNTER_TOTALS) this.registry.removeSingleMetric(name);
    this.requests = new Counter({
      name: `${PREFIX}requests_total`,
      help: 'Total HTTP requests',
      labelNames: ['method', 'endpoint', 'status'],
      registers,
    });
    this.requestDuration = new Histogram({
      name: `${PREFIX}request_duration_seconds`,
      help: 'HTTP request latency',
      labelNames: ['method', 'endpoint'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    // Read at scrape time from the job runner, so they can never drift from it.
    const slots = () => this.#jobSlots();
    new Gauge({
      name: `${PREFIX}active_jobs`,
      help: 'Currently running jobs',
      registers,
      collect() {
        this.set(slots().running);
      },
    });
    new Gauge({
      name: `${PREFIX}health_status`,
      help: '1=healthy, 0=degraded (all job slots busy)',
      registers,
      collect() {
        this.set(atCapacity(slots()) ? 0 : 1);
      },
    });
    this.#jobs = new Counter({
      name: `${PREFIX}jobs_total`,
      help: 'Jobs by terminal status: completed, failed, cancelled',
      labelNames: ['status'],
      registers,
    });
    this.#jobDuration = new Histogram({
      name: `${PREFIX}job_duration_seconds`,
      help: 'Job execution duration',
      labelNames: ['status'],
      buckets: JOB_BUCKETS,
      registers,
    });
    for (const status of JOB_STATUSES) this.#jobs.inc({ status }, 0);
    this.#cacheHits = new Counter({
      name: `${PREFIX}cache_hits_total`,
      help: 'Cache hits (image already local and valid)',
      registers,
    });
    this.#cacheMisses = new Counter({
      name: `${PREFIX}cache_misses_total`,
      help: 'Cache misses (download required)',
      registers,
    });
    this.#cacheHitRatio = new Gauge({
      name: `${PREFIX}cache_hit_ratio`,
      help: `Rolling cache hit ratio (0.0-1.0) over the last ${HIT_RATIO_WINDOW} lookups`,
      registers,
    });
    this.#downloads = new Counter({
      name: `${PREFIX}images_downloaded_total`,
      help: 'Successful image downloads',
      registers,
    });
    this.#downloadSize = new Histogram({
      name: `${PREFIX}image_download_size_bytes`,
      help: 'Downloaded image sizes',
      labelNames: ['image_type'],
      buckets: SIZE_BUCKETS,
      registers,
    });
    this.#imageErrors = new Counter({
      name: `${PREFIX}image_errors_total`,
      help: 'Image operation errors',
      labelNames: ['operation', 'error_type'],
      registers,
    });
    this.#storageOperations = new Counter({
      name: `${PREFIX}storage_operations_total`,
      help: 'Storage operations',
      labelNames: ['operation', 'result'],
      registers,
    });
    this.#storageErrors = new Counter({
      name: `${PREFIX}storage_errors_total`,
      help: 'Storage errors',
      labelNames: ['operation', 'error_type'],
      registers,
    });
    for (const operation of STORAGE_OPERATIONS) {
      for (const result of ['success', 'error']) this.#storageOperations.inc({ operation, result }, 0);
      for (const error_type of STORAGE_ERROR_TYPES) this.#storageErrors.inc({ operation, error_type }, 0);
    }
    this.#stageDuration = new Histogram({
      name: `${PREFIX}stage_duration_seconds`,
      help: 'Download/convert stage durations',
      labelNames: ['stage'],
      buckets: JOB_BUCKETS,
      registers,
    });
    this.#stageThroughput = new Gauge({
      name: `${PREFIX}stage_throughput_bytes_per_second`,
      help: 'Current throughput per stage',
      labelNames: ['stage'],
      registers,
    });
    this.#dependenciesUp = new Gauge({
      name: `${PREFIX}dependencies_up`,
      help: '1=up, 0=down per dependency: minio, lvm, libvirt, storage',
      labelNames: ['dependency'],
      registers,
    });
    this.#informerReceived = new Counter({
      name: `${PREFIX}informer_received_objects_total`,
      help: 'Objects an informer received from the API server, from list pages and watch events',
      labelNames: ['resource', 'source'],
      registers,
    });
    this.#queueDepth = new Gauge({
      name: 'workqueue_depth',
      help: 'Current depth of workqueue',
      labelNames: ['name'],
      registers,
    });
    this.#queueAdds = new Counter({
      name: 'workqueue_adds_total',
      help: 'Total number of adds handled by workqueue',
      labelNames: ['name'],
      registers,
    });
    this.#queueLatency = new Histogram({
      name: 'workqueue_queue_duration_seconds',
      help: 'How long in seconds an item stays in workqueue before being requested',
      labelNames: ['name'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.#workDuration = new Histogram({
      name: 'workqueue_work_duration_seconds',
      help: 'How long in seconds processing an item from workqueue takes',
      labelNames: ['name'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.#retries = new Counter({
      name: 'workqueue_retries_total',
      help: 'Total number of retries handled by workqueue',
      labelNames: ['name'],
      registers,
    });
  }

  /** Where active_jobs and health_status are read from at scrape time. */
  observeJobSlots(read: () => JobSlots): void {
    this.#jobSlots = read;
  }

  jobFinished(status: JobStatus, seconds: number): void {
    this.#jobs.inc({ status });
    this.#jobDuration.observe({ status }, seconds);
  }

  cacheLookup(hit: boolean): void {
    (hit ? this.#cacheHits : this.#cacheMisses).inc();
    this.#recentLookups.push(hit);
    if (this.#recentLookups.length > HIT_RATIO_WINDOW) this.#recentLookups.shift();
    const hits = this.#recentLookups.filter(Boolean).length;
    this.#cacheHitRatio.set(hits / this.#recentLookups.length);
  }

  imageDownloaded(imageType: string, sizeBytes: number): void {
    this.#downloads.inc();
    this.#downloadSize.observe({ image_type: imageType }, sizeBytes);
  }

  imageError(operation: ImageOperation, errorType: string): void {
    this.#imageErrors.inc({ operation, error_type: errorType });
  }

  stageThroughput(stage: Stage, bytesPerSecond: number): void {
    if (Number.isFinite(bytesPerSecond)) this.#stageThroughput.set({ stage }, bytesPerSecond);
  }

  stageCompleted(stage: Stage, seconds: number, bytes: number): void {
    this.#stageDuration.observe({ stage }, seconds);
    if (seconds > 0) this.stageThroughput(stage, bytes / seconds);
  }

  storageOperation(operation: StorageOperation, error?: StorageErrorType): void {
    this.#storageOperations.inc({ operation, result: error ? 'error' : 'success' });
    if (error) this.#storageErrors.inc({ operation, error_type: error });
  }

  dependencyUp(dependency: Dependency, up: boolean): void {
    this.#dependenciesUp.set({ dependency }, up ? 1 : 0);
  }

  /** The metrics of one resource's informer; other nodes' objects must never count here. */
  informer(resource: string): InformerMetrics {
    for (const source of ['list', 'watch']) this.#informerReceived.inc({ resource, source }, 0);
    return { received: (source, objects) => this.#informerReceived.inc({ resource, source }, objects) };
  }

  /** The metrics of one work queue, labelled `name` as in controller-runtime. */
  workQueue(name: string): WorkQueueMetrics {
    const labels = { name };
    this.#queueDepth.set(labels, 0);
    this.#queueAdds.inc(labels, 0);
    this.#retries.inc(labels, 0);
    return {
      added: () => this.#queueAdds.inc(labels),
      depth: (length) => this.#queueDepth.set(labels, length),
      started: (seconds) => this.#queueLatency.observe(labels, seconds),
      finished: (seconds) => this.#workDuration.observe(labels, seconds),
      retried: () => this.#retries.inc(labels),
    };
  }
}

/** Sorts a failure into the bounded error_type values of the storage metrics. */
export function storageErrorType(error: unknown): StorageErrorType {
  const code = (error as { code?: unknown; reason?: unknown } | undefined)?.code;
  const reason = (error as { reason?: unknown } | undefined)?.reason;
  if (code === 'ENOSPC' || code === 'EDQUOT' || reason === 'InsufficientCacheSpace') return 'no_space';
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return 'permission';
  return 'io';
}

/** A bounded error_type for image errors: the PipelineError reason, an errno code, or Unknown. */
export function imageErrorType(error: unknown): string {
  const { reason, code } = (error ?? {}) as { reason?: unknown; code?: unknown };
  if (typeof reason === 'string' && /^[A-Z][A-Za-z]{1,63}$/.test(reason)) return reason;
  if (typeof code === 'string' && /^E[A-Z]{1,15}$/.test(code)) return code;
  return 'Unknown';
}
