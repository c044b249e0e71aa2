// The one interface through which the controller drives provisioning. The controller owns
// Kubernetes (objects, Secrets, status); the pipeline owns the node (cache, qemu-img, LVM).
import type { ImageSource, VolumeProvisionSpec } from '../api/v1alpha1.ts';
import type { Logger } from '../telemetry/logger.ts';

/** Read from the Secret named by `spec.source.secretRef`. */
export interface SourceCredentials {
  accessKeyId?: string;
  secretKey?: string;
  /** PEM bundle trusted for the source's TLS endpoint, from the Secret's `ca.crt`. */
  caBundle?: string;
}

export interface ProvisionRequest {
  /** The VolumeProvision's metadata.uid: tags the volume so the controller knows it made it. */
  uid: string;
  namespace: string;
  name: string;
  spec: VolumeProvisionSpec;
  credentials?: SourceCredentials;
}

export type PipelineStage = 'Initializing' | 'Downloading' | 'Converting' | 'Finalizing';

export interface ProgressReport {
  stage: PipelineStage;
  stagePercent: number;
  overallPercent: number;
  /** Whole bytes: the CRD's status fields are integers, and the API server refuses 1.5. */
  bytesProcessed: number;
  bytesTotal: number;
  etaSeconds?: number;
  cacheHit?: boolean;
}

export interface ProvisionResult {
  /** Where libvirt finds the volume: /dev/VG/LV, or the file's path. */
  devicePath: string;
  virtualSize: number;
  cacheHit: boolean;
}

export interface ProvisionOptions {
  /** Aborted when the object is deleted or the controller shuts down. */
  signal: AbortSignal;
  onProgress(report: ProgressReport): void;
  /** The job's logger (job_id, correlation_id, image_url), for what the pipeline decides. */
  logger?: Logger;
}

export interface Pipeline {
  /**
   * Creates the target volume and fills it with the image. Safe to call again after a crash
   * for the same request: it reuses what it made before, identified by `uid`.
   */
  provision(request: ProvisionRequest, options: ProvisionOptions): Promise<ProvisionResult>;
  /** Removes the volume made for `uid`, if there is one and it carries that UID. Idempotent. */
  release(request: Pick<ProvisionRequest, 'uid' | 'spec'>): Promise<void>;
}

/** The node cache as the CachedImage kind needs it. */
export interface CacheControl {
  /** Downloads the image into the cache unless a valid copy is there. */
  prewarm(
    source: ImageSource,
    credentials: SourceCredentials | undefined,
    signal: AbortSignal,
  ): Promise<{ sizeBytes: number; sha256: string; hit: boolean; lastUsed: Date }>;
  /** Removes the entry (false: there was none); throws CachedImageInUse while a job reads it. */
  evict(url: string): Promise<boolean>;
}

/**
 * A failure with a CamelCase reason for the Ready condition and Events. Terminal failures
 * (bad image, checksum mismatch, name conflict) are not retried; others are, with backoff.
 */
export class PipelineError extends Error {
  readonly reason: string;
  readonly terminal: boolean;

  constructor(reason: string, message: string, options: { terminal: boolean; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.name = 'PipelineError';
    this.reason = reason;
    this.terminal = options.terminal;
  }
}
