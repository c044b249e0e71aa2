// The lvp.dev/v1alpha1 API as TypeScript types. The CRDs in crds/ are the contract the API
// server enforces; these types mirror them for the controller.
import type { KubernetesObject } from '@kubernetes/client-node';

export const GROUP = 'lvp.dev';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

export const VOLUME_PROVISION = { kind: 'VolumeProvision', plural: 'volumeprovisions' } as const;
export const CACHED_IMAGE = { kind: 'CachedImage', plural: 'cachedimages' } as const;

/** Added before any external work, removed last: the controller's cleanup promise. */
export const FINALIZER = 'lvp.dev/cleanup';
/** Optional W3C traceparent of whoever created the object. */
export const TRACEPARENT_ANNOTATION = 'lvp.dev/traceparent';

/** metav1.Condition as it travels in JSON (client-node's V1Condition holds Dates). */
export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  observedGeneration?: number;
  lastTransitionTime: string;
  /** CamelCase, machine-readable. */
  reason: string;
  message: string;
}

export type ImageFormat = 'qcow2' | 'raw';
export type TargetType = 'lvm' | 'file';
export type ReclaimPolicy = 'Delete' | 'Retain';

export interface ImageSource {
  /** `s3://bucket/key`, or an `http(s)://` URL (a MinIO/S3 endpoint or any HTTP server). */
  url: string;
  /** A Secret in the object's namespace: keys `accessKeyId`, `secretKey` and optionally `ca.crt`. */
  secretRef?: { name: string };
  /** Declared and enforced, never guessed from the file. */
  format: ImageFormat;
  /** `sha256:<64 hex>` or `sha512:<128 hex>`. */
  checksum?: string;
}

export interface VolumeTarget {
  type: TargetType;
  /** LVM logical volume name, or the file name for a `file` target. */
  volumeName: string;
  /** A Kubernetes quantity (int-or-string, as in the CRD); at least the image's virtual size. */
  size: string | number;
  /** `lvm` only; defaults to the controller's configured volume group. */
  volumeGroup?: string;
  /** A libvirt storage pool to refresh once the volume is ready. */
  libvirtPool?: string;
}

export interface VolumeProvisionSpec {
  nodeName: string;
  source: ImageSource;
  target: VolumeTarget;
  reclaimPolicy: ReclaimPolicy;
  correlationId?: string;
}

export const STAGES = [
  'Queued',
  'Initializing',
  'Downloading',
  'Converting',
  'Finalizing',
  'Completed',
  'Failed',
] as const;
export type Stage = (typeof STAGES)[number];

export interface Progress {
  stagePercent: number;
  overallPercent: number;
  bytesProcessed: number;
  bytesTotal: number;
  etaSeconds?: number;
}

export interface VolumeProvisionStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  stage?: Stage;
  progress?: Progress;
  queuePosition?: number;
  cacheHit?: boolean;
  devicePath?: string;
  virtualSize?: number;
  attempts?: number;
  startTime?: string;
  completionTime?: string;
  message?: string;
}

export interface VolumeProvision extends KubernetesObject {
  spec: VolumeProvisionSpec;
  status?: VolumeProvisionStatus;
}

export interface CachedImageSpec {
  nodeName: string;
  source: ImageSource;
}

export interface CachedImageStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  phase?: 'Pending' | 'Downloading' | 'Cached' | 'Failed';
  sizeBytes?: number;
  sha256?: string;
  lastUsedTime?: string;
  message?: string;
}

export interface CachedImage extends KubernetesObject {
  spec: CachedImageSpec;
  status?: CachedImageStatus;
}
