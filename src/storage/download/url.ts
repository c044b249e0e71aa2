// Turns `spec.source.url` into where the bytes come from: an object in an S3/MinIO endpoint, or
// a plain HTTP(S) resource. Messages name the URL without its query string or user info, since
// presigned URLs carry their signature there.
import { PipelineError } from '../../pipeline/types.ts';
import { DownloadReason } from './reasons.ts';

/** An S3-compatible endpoint, addressed path-style (`/bucket/key`), as MinIO expects. */
export interface S3Endpoint {
  useSSL: boolean;
  host: string;
  port: number;
  /** Left out, the client asks the bucket for its region. */
  region?: string;
}

export type SourceLocation =
  | { kind: 's3'; endpoint: S3Endpoint; bucket: string; key: string }
  | { kind: 'http'; url: URL };

export interface ParseSourceOptions {
  /** The controller's configured endpoint that `s3://` URLs refer to. */
  s3Endpoint?: S3Endpoint;
  /** With S3 credentials, an `http(s)://host/bucket/key` URL is read as an S3 object. */
  hasS3Credentials: boolean;
}

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function invalid(message: string): PipelineError {
  return new PipelineError(DownloadReason.InvalidSourceURL, message, { terminal: true });
}

/** `scheme://host/path`, never the query, fragment or user info. */
export function redactUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

export function describeLocation(location: SourceLocation): string {
  if (location.kind === 'http') return redactUrl(location.url);
  const { useSSL, host, port } = location.endpoint;
  return `s3://${location.bucket}/${location.key} at ${useSSL ? 'https' : 'http'}://${host}:${port}`;
}

/** The object's path-style URL, unsigned: what an anonymous read of a public bucket GETs. */
export function s3ObjectUrl(endpoint: S3Endpoint, bucket: string, key: string): URL {
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  const path = [bucket, ...key.split('/')].map(encodeURIComponent).join('/');
  return new URL(`${endpoint.useSSL ? 'https' : 'http'}://${host}:${endpoint.port}/${path}`);
}

/** Parses the controller's S3 endpoint setting, e.g. `https://minio.storage.svc:9000`. */
export function parseS3Endpoint(endpointUrl: string, region?: string): S3Endpoint {
  let url: URL;
  try {
    url = new URL(endpointUrl);
  } catch {
    throw new Error(`S3 endpoint "${endpointUrl}" is not a URL; expected e.g. https://minio.example:9000`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new Error(`S3 endpoint "${redactUrl(url)}" must be http:// or https://`);
  if (url.username || url.password || url.search || (url.pathname !== '/' && url.pathname !== ''))
    throw new Error(`S3 endpoint "${redactUrl(url)}" must be a bare origin such as https://host:port`);
  return endpointOf(url, region);
}

function endpointOf(url: URL, region?: string): S3Endpoint {
  const useSSL = url.protocol === 'https:';
  // URL.hostname keeps IPv6 brackets; the minio client wants them off.
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = url.port ? Number(url.port) : useSSL ? 443 : 80;
  return region === undefined ? { useSSL, host, port } : { useSSL, host, port, region };
}

function decodePath(path: string, shown: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    throw invalid(`source URL "${shown}" has a malformed percent-encoding`);
  }
}

function bucketAndKey(bucket: string, key: string, shown: string): { bucket: string; key: string } {
  if (!BUCKET_NAME.test(bucket) || bucket.includes('..'))
    throw invalid(
      `source URL "${shown}": "${bucket}" is not a valid bucket name (3-63 lowercase letters, digits, dots or hyphens)`,
    );
  if (key === '' || key.endsWith('/'))
    throw invalid(`source URL "${shown}" names no object: add the object's key after the bucket`);
  return { bucket, key };
}

/**
 * Validates a source URL. Accepts `s3://bucket/key` (needs the controller's S3 endpoint), and
 * `http(s)://` URLs: read as `https://endpoint/bucket/key` of an S3 endpoint when S3
 * credentials are given, else as a plain HTTP resource.
 */
export function parseSourceUrl(raw: string, options: ParseSourceOptions): SourceLocation {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    const shown = raw.split('?')[0] ?? '';
    throw invalid(`source URL "${shown}" is not a valid URL; use s3://bucket/key or https://host/path`);
  }
  const shown = redactUrl(url);
  if (url.username || url.password)
    throw invalid(`source URL "${shown}" must not carry user info; put credentials in the Secret`);

  if (url.protocol === 's3:') {
    if (url.port || url.search || url.hash)
      throw invalid(`source URL "${shown}": s3:// URLs take only a bucket and a key (s3://bucket/key)`);
    if (!options.s3Endpoint)
      throw invalid(
        `source URL "${shown}" is s3://, but the controller has no S3 endpoint configured; configure one or use the object's https:// URL`,
      );
    const key = decodePath(url.pathname.replace(/^\//, ''), shown);
    return { kind: 's3', endpoint: options.s3Endpoint, ...bucketAndKey(url.hostname, key, shown) };
  }

  if (url.protocol === 'http:' || url.protocol === 'https:') {
    if (!options.hasS3Credentials) return { kind: 'http', url };
    if (url.search)
      throw invalid(
        `source URL "${shown}" has a query string, which an S3 object URL (https://host/bucket/key) does not take`,
      );
    const path = decodePath(url.pathname, shown);
    const [, bucket = '', ...keyParts] = path.split('/');
    return { kind: 's3', endpoint: endpointOf(url), ...bucketAndKey(bucket, keyParts.join('/'), shown) };
  }

  throw invalid(
    `source URL "${shown}" has the unsupported scheme "${url.protocol.replace(/:$/, '')}"; use s3://, https:// or http://`,
  );
}
