// The CamelCase reasons this module puts on PipelineError, for the Ready condition and Events.
// Terminal reasons need a change of the spec; the others may clear up on their own (a Secret
// fixed, an object uploaded, space freed, a server back), so the controller retries them.
export const DownloadReason = {
  /** The URL is not one this controller can fetch. Terminal. */
  InvalidSourceURL: 'InvalidSourceURL',
  /** `spec.source.checksum` is not `sha256:<hex>` or `sha512:<hex>`. Terminal. */
  InvalidChecksum: 'InvalidChecksum',
  /** The content does not match the expected checksum. Terminal. */
  ChecksumMismatch: 'ChecksumMismatch',
  /** The Secret lacks one of accessKeyId/secretKey. Retried: the Secret can be fixed. */
  InvalidCredentials: 'InvalidCredentials',
  /** The `<key>.sha256` object next to the image cannot be parsed. Retried: it can be fixed. */
  InvalidChecksumSidecar: 'InvalidChecksumSidecar',
  /** 404: the object (or bucket) does not exist yet. Retried: it may be uploaded later. */
  SourceNotFound: 'SourceNotFound',
  /** 401/403 or bad S3 credentials. Retried: the Secret or the policy can be fixed. */
  SourceAccessDenied: 'SourceAccessDenied',
  /** The server's certificate is not trusted with the given CA. Retried: `ca.crt` can be fixed. */
  SourceTLSFailed: 'SourceTLSFailed',
  /** The server refused the request for another reason (a 4xx), or gave no size. */
  SourceRequestFailed: 'SourceRequestFailed',
  /** The object changed while it was being downloaded (ETag or length differ). */
  SourceChanged: 'SourceChanged',
  /** Network faults or 5xx responses outlasted the retries. */
  SourceUnavailable: 'SourceUnavailable',
  /** No byte arrived within the stall timeout, on every retry. */
  DownloadStalled: 'DownloadStalled',
  /** The cache folder has less free space than the image needs. Retried: space can be freed. */
  InsufficientCacheSpace: 'InsufficientCacheSpace',
  /** Writing into the cache folder failed (an I/O error, permissions). */
  CacheWriteFailed: 'CacheWriteFailed',
} as const;
export type DownloadReason = (typeof DownloadReason)[keyof typeof DownloadReason];
