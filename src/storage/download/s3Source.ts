// An object in an S3-compatible endpoint (MinIO), path-style. The minio client states the
// object, reads the checksum sidecar and signs; the object's body is read from a presigned
// URL by HttpSource, whose transport holds far less memory than the client's node:http.
import * as http from 'node:http';
import * as https from 'node:https';
import { Client, S3Error } from 'minio';
import type { SourceCredentials } from '../../pipeline/types.ts';
import { PipelineError } from '../../pipeline/types.ts';
import { LruMap } from '../../util/lru.ts';
import { parseSha256Sidecar } from './checksum.ts';
import { HttpSource } from './httpSource.ts';
import { DownloadReason } from './reasons.ts';
import {
  errorCode,
  type ObjectBody,
  type ObjectInfo,
  type ObjectSource,
  transportFault,
  trustedCAs,
} from './source.ts';
import { describeLocation, type S3Endpoint, s3ObjectUrl } from './url.ts';

const NOT_FOUND = new Set(['NotFound', 'NoSuchKey', 'NoSuchBucket']);
const DENIED = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'AllAccessDisabled',
]);
const RETRYABLE = new Set([
  'SlowDown',
  'InternalError',
  'ServiceUnavailable',
  'RequestTimeout',
  'XMinioServerNotInitialized',
]);
/** What S3 answers a request signed for the wrong region (HEAD answers carry only a status). */
const WRONG_REGION = new Set([
  'AuthorizationHeaderMalformed',
  'PermanentRedirect',
  'MovedPermanently',
  'BadRequest',
]);
/** A real sidecar is one sha256sum line; anything bigger is not one. */
const MAX_SIDECAR_BYTES = 4096;
/** A presigned URL serves one GET that starts at once; S3 checks the expiry only at its start. */
const PRESIGNED_URL_SECONDS = 15 * 60;
/** As Node's global agent: shorter than S3's and MinIO's own idle timeouts, so a reused connection is not one the server is closing. */
const IDLE_CONNECTION_MS = 5_000;

/**
 * Kept-alive agents per protocol and CA bundle, shared by every call and job: a job's stat,
 * sidecar read and presign, and the next job's, reuse one connection instead of opening (and
 * against a remote S3, handshaking TLS) one each. An agent dropped from here is only forgotten:
 * its idle connections close on their own after IDLE_CONNECTION_MS.
 */
const agents = new LruMap<string, http.Agent>(8);
/**
 * Bucket regions per endpoint. Without a configured region, minio asks a bucket's region once
 * per client, and a client lives for one call; this keeps the answer across calls.
 */
const regions = new LruMap<string, string>(64);

function sharedAgent(useSSL: boolean, caBundle: string | undefined): http.Agent {
  const key = `${useSSL} ${caBundle ?? ''}`;
  const existing = agents.get(key);
  if (existing) return existing;
  const options = { keepAlive: true, timeout: IDLE_CONNECTION_MS };
  const ca = trustedCAs(caBundle);
  const agent = useSSL ? new https.Agent(ca ? { ...options, ca } : options) : new http.Agent(options);
  agents.set(key, agent);
  return agent;
}

export interface S3Object {
  endpoint: S3Endpoint;
  bucket: string;
  key: string;
}

export class S3Source implements ObjectSource {
  readonly description: string;
  readonly #object: S3Object;
  readonly #credentials: SourceCredentials;

  constructor(object: S3Object, credentials: SourceCredentials = {}) {
    const { accessKeyId, secretKey } = credentials;
    if ((accessKeyId === undefined) !== (secretKey === undefined))
      throw new PipelineError(
        DownloadReason.InvalidCredentials,
        'the source Secret must hold both accessKeyId and secretKey, or neither for anonymous access',
        { terminal: false },
      );
    this.#object = object;
    this.#credentials = credentials;
    this.description = describeLocation({ kind: 's3', ...object });
  }

  async stat({ signal, withSidecar }: { signal: AbortSignal; withSidecar: boolean }): Promise<ObjectInfo> {
    const { bucket, key } = this.#object;
    const sidecarKey = `${key}.sha256`;
    const statImage = () => this.#call(signal, (client) => client.statObject(bucket, key));
    const readSidecar = async () => (withSidecar ? this.#readSmallObject(sidecarKey, signal) : undefined);
    let stat: Awaited<ReturnType<typeof statImage>>;
    let content: string | undefined;
    if (this.#knownRegion() !== undefined) {
      // Both at once: a round trip less per job.
      const [image, sidecar] = await Promise.allSettled([statImage(), readSidecar()]);
      // The image's own error first: a missing image matters more than its sidecar.
      if (image.status === 'rejected') throw image.reason;
      if (sidecar.status === 'rejected') throw sidecar.reason;
      [stat, content] = [image.value, sidecar.value];
    } else {
      // One after the other while the bucket's region is unknown, so only the first asks.
      stat = await statImage();
      content = await readSidecar();
    }
    // The client strips the ETag's quotes; the body's GET compares and sends it in HTTP form.
    const info: ObjectInfo = { sizeBytes: stat.size, version: `"${stat.etag}"` };
    if (content === undefined) return info;
    return { ...info, sidecar: parseSha256Sidecar(content, `s3://${bucket}/${sidecarKey}`) };
  }

  async open(offset: number, info: ObjectInfo, signal: AbortSignal, end?: number): Promise<ObjectBody> {
    const { endpoint, bucket, key } = this.#object;
    // The client cannot presign without credentials; an anonymous read needs no signature.
    const url =
      this.#credentials.accessKeyId === undefined
        ? s3ObjectUrl(endpoint, bucket, key)
        : new URL(
            await this.#call(signal, (client) =>
              client.presignedGetObject(bucket, key, PRESIGNED_URL_SECONDS),
            ),
          );
    // HttpSource checks the range and the ETag (If-Range), and names the object as we do.
    const body = new HttpSource(url, {
      caBundle: this.#credentials.caBundle,
      description: this.description,
    });
    return body.open(offset, info, signal, end);
  }

  /** The object's text, or undefined when it is absent. One GET, cut off past MAX_SIDECAR_BYTES. */
  async #readSmallObject(key: string, signal: AbortSignal): Promise<string | undefined> {
    try {
      return await this.#call(signal, async (client) => {
        const chunks: Buffer[] = [];
        let size = 0;
        const body = await client.getObject(this.#object.bucket, key);
        for await (const chunk of body as AsyncIterable<Buffer>) {
          size += chunk.length;
          if (size > MAX_SIDECAR_BYTES) {
            body.destroy();
            throw new PipelineError(
              DownloadReason.InvalidChecksumSidecar,
              `s3://${this.#object.bucket}/${key} is more than ${MAX_SIDECAR_BYTES} bytes, too big for a sha256 checksum line`,
              { terminal: false },
            );
          }
          chunks.push(chunk);
        }
        return Buffer.concat(chunks).toString('utf8');
      });
    } catch (error) {
      // Without s3:ListBucket, S3 answers 403 for a key that does not exist, so a denied
      // sidecar (after the image itself was readable) counts as no sidecar.
      if (
        error instanceof PipelineError &&
        (error.reason === DownloadReason.SourceNotFound || error.reason === DownloadReason.SourceAccessDenied)
      )
        return undefined;
      throw error;
    }
  }

  #regionKey(): string {
    const { endpoint, bucket } = this.#object;
    return `${endpoint.useSSL}://${endpoint.host}:${endpoint.port}/${bucket}`;
  }

  /** The configured region, else the one a call learnt for this bucket. */
  #knownRegion(): string | undefined {
    return this.#object.endpoint.region ?? regions.get(this.#regionKey());
  }

  async #call<T>(signal: AbortSignal, operation: (client: Client) => Promise<T>): Promise<T> {
    const { endpoint, bucket } = this.#object;
    const regionKey = this.#regionKey();
    const knownRegion = this.#knownRegion();
    const client = this.#client(signal, knownRegion);
    try {
      const result = await operation(client);
      // Answered from the client's own memory of the bucket, without a request.
      if (knownRegion === undefined) regions.set(regionKey, await client.getBucketRegionAsync(bucket));
      return result;
    } catch (error) {
      // The bucket may have been made anew in another region since; ask again next time.
      const code = errorCode(error);
      if (endpoint.region === undefined && code !== undefined && WRONG_REGION.has(code))
        regions.delete(regionKey);
      throw this.#fault(error);
    }
  }

  /**
   * A client for one call, over the shared agent. The minio client takes no AbortSignal, so its
   * transport hands `signal` to each request: aborting ends a request that waits for headers or
   * streams a body, and only that request.
   */
  #client(signal: AbortSignal, region: string | undefined): Client {
    const { endpoint } = this.#object;
    const { accessKeyId, secretKey } = this.#credentials;
    const protocol = endpoint.useSSL ? https : http;
    const request = (options: http.RequestOptions, callback?: (response: http.IncomingMessage) => void) =>
      protocol.request({ ...options, signal }, callback);
    return new Client({
      endPoint: endpoint.host,
      port: endpoint.port,
      useSSL: endpoint.useSSL,
      pathStyle: true,
      transport: { request: request as typeof http.request },
      transportAgent: sharedAgent(endpoint.useSSL, this.#credentials.caBundle),
      // Retries belong to the downloader, which resumes where the transfer stopped.
      retryOptions: { disableRetry: true },
      ...(region !== undefined ? { region } : {}),
      ...(accessKeyId !== undefined && secretKey !== undefined ? { accessKey: accessKeyId, secretKey } : {}),
    });
  }

  #fault(error: unknown): unknown {
    if (error instanceof PipelineError) return error;
    const code = errorCode(error);
    const detail = `${code ?? 'error'}: ${error instanceof Error ? error.message : String(error)}`;
    if (code !== undefined && NOT_FOUND.has(code))
      return new PipelineError(
        DownloadReason.SourceNotFound,
        `${this.description} does not exist (${detail})`,
        { terminal: false, cause: error },
      );
    if (code !== undefined && DENIED.has(code))
      return new PipelineError(
        DownloadReason.SourceAccessDenied,
        `${this.description}: access denied (${detail}); check accessKeyId and secretKey in the Secret and the bucket policy`,
        { terminal: false, cause: error },
      );
    if (error instanceof S3Error && !(code !== undefined && RETRYABLE.has(code)))
      return new PipelineError(DownloadReason.SourceRequestFailed, `${this.description}: ${detail}`, {
        terminal: false,
        cause: error,
      });
    return transportFault(error, this.description);
  }
}
