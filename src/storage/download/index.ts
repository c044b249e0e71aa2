// The download step of the pipeline: one image from S3/MinIO or HTTP(S) into a local folder.

export { BoundedWriter } from './bounded-writer.ts';
export type { ChecksumAlgorithm, ExpectedChecksum } from './checksum.ts';
export { parseChecksum, parseSha256Sidecar } from './checksum.ts';
export type {
  Downloader,
  DownloaderConfig,
  DownloadMirror,
  DownloadOptions,
  DownloadProgress,
  DownloadResult,
  DownloadSource,
  PartialFile,
  RetryPolicy,
  SourceStat,
} from './download.ts';
export {
  createDownloader,
  DEFAULT_SYNC_INTERVAL_BYTES,
  FREE_SPACE_FACTOR,
  freeSpace,
  isPartialFile,
  PARTIAL_FILE_PREFIX,
} from './download.ts';
export type { PageCache } from './pageCache.ts';
export { ddPageCache, TrailingEviction } from './pageCache.ts';
export { DownloadReason } from './reasons.ts';
export type { S3Endpoint, SourceLocation } from './url.ts';
export { parseS3Endpoint, parseSourceUrl, redactUrl } from './url.ts';
