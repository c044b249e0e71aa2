// The one interface the downloader reads bytes through, with one implementation per protocol
// (S3 via the minio client, plain HTTP in httpSource.ts). A source throws PipelineError for a
// definite answer (not found, denied, changed); any other error is a transient fault that the
// downloader retries, resuming at the byte where it stopped.
import type { Readable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { PipelineError } from '../../pipeline/types.ts';
import type { ExpectedChecksum } from './checksum.ts';
import { DownloadReason } from './reasons.ts';

export interface ObjectInfo {
  sizeBytes: number;
  /** ETag or Last-Modified seen by `stat`; a resumed request must see the same object. */
  version?: string;
  /** The `<key>.sha256` object, when asked for and present. */
  sidecar?: ExpectedChecksum;
}

export interface ObjectBody {
  body: Readable;
  /** Where `body` starts: the offset asked for, or 0 when the server ignored the range. */
  offset: number;
}

export interface ObjectSource {
  /** Names the object in messages; never holds secrets. */
  readonly description: string;
  stat(options: { signal: AbortSignal; withSidecar: boolean }): Promise<ObjectInfo>;
  /**
   * The content from `offset` to `end` (exclusive; default: the end of the object). Aborting
   * `signal` ends the request and the body. With `end`, a server that does not do ranges
   * throws RangesNotSupported instead of sending the whole object.
   */
  open(offset: number, info: ObjectInfo, signal: AbortSignal, end?: number): Promise<ObjectBody>;
}

/** The server answered a range request with the whole object. */
export class RangesNotSupported extends Error {
  constructor(description: string) {
    super(`${description} does not serve byte ranges`);
    this.name = 'RangesNotSupported';
  }
}

/** A CA bundle adds to the public roots, so redirects to public hosts keep working. */
export function trustedCAs(caBundle: string | undefined): string[] | undefined {
  return caBundle === undefined ? undefined : [...rootCertificates, caBundle];
}

const TLS_ERROR_CODE = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL/;

export function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string')
    return error.code;
  return undefined;
}

/** An untrusted certificate will not fix itself on retry; everything else network-level might. */
export function transportFault(error: unknown, description: string): unknown {
  const code = errorCode(error);
  if (code !== undefined && TLS_ERROR_CODE.test(code)) {
    const detail = error instanceof Error ? error.message : code;
    return new PipelineError(
      DownloadReason.SourceTLSFailed,
      `${description}: TLS failed (${detail}); put the CA that signed the server's certificate into the Secret's ca.crt`,
      { terminal: false, cause: error },
    );
  }
  return error;
}

export function sourceChanged(description: string, detail: string): PipelineError {
  return new PipelineError(
    DownloadReason.SourceChanged,
    `${description} changed during the download (${detail}); it will be downloaded again`,
    { terminal: false },
  );
}
