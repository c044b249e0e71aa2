// A plain HTTP(S) resource: a web server, or a presigned S3 URL (S3Source reads object bodies
// this way too). The stat's small request goes through undici, whose kept-alive connections
// the next stat reuses; the body, where the time goes, through httpGet (see http-get.ts).
// Not node:http for either: its per-read buffers wait for a major GC, so receiving 512 MiB
// held 90-94 MB of them at the peak even when every chunk was dropped at once.
import type { Readable } from 'node:stream';
import { createSecureContext, type SecureContext } from 'node:tls';
import { Agent, request } from 'undici';
import { PipelineError } from '../../pipeline/types.ts';
import { LruMap } from '../../util/lru.ts';
import { httpGet } from './http-get.ts';
import { DownloadReason } from './reasons.ts';
import {
  type ObjectBody,
  type ObjectInfo,
  type ObjectSource,
  RangesNotSupported,
  sourceChanged,
  transportFault,
  trustedCAs,
} from './source.ts';
import { redactUrl } from './url.ts';

const MAX_REDIRECTS = 5;
/** CA bundles whose trust is kept; Secrets with distinct private CAs are few per node. */
const MAX_CA_TRUSTS = 8;
interface Trust {
  /** For undici's requests. */
  agent: Agent;
  /** For httpGet's. */
  secureContext: SecureContext;
}
// close() lets a dropped Agent's requests in progress finish.
const caTrusts = new LruMap<string, Trust>(MAX_CA_TRUSTS, ({ agent }) => void agent.close());

/**
 * One Agent and TLS context per CA bundle, shared by every source that trusts it, so that
 * stats reuse connections instead of each opening its own and leaving an Agent to its
 * keep-alive timeout, and no transfer parses the bundle and the public roots again.
 */
function trusting(caBundle: string): Trust {
  const existing = caTrusts.get(caBundle);
  if (existing) return existing;
  const secureContext = createSecureContext({ ca: trustedCAs(caBundle) });
  const trust = { agent: new Agent({ connect: { secureContext } }), secureContext };
  caTrusts.set(caBundle, trust);
  return trust;
}

/** An answer from either client, as this file reads it. */
interface Response {
  statusCode: number;
  headers: Readonly<Record<string, string | string[] | undefined>>;
  body: Readable;
  /** Drops a body that will not be read. */
  discard(): void;
}

/** Sends one GET of `url`; redirects and statuses are the caller's. */
type Send = (url: URL, headers: Record<string, string>, signal: AbortSignal) => Promise<Response>;

/** One header's value; a repeated header counts as absent, since it cannot be trusted. */
function header(response: Response, name: string): string | undefined {
  const value = response.headers[name];
  return typeof value === 'string' ? value : undefined;
}

function parseContentRange(header: string | undefined): { start?: number; total?: number } {
  const match = /^bytes (?:(\d+)-\d+|\*)\/(\d+)$/.exec(header?.trim() ?? '');
  if (!match) return {};
  return {
    ...(match[1] !== undefined ? { start: Number(match[1]) } : {}),
    ...(match[2] !== undefined ? { total: Number(match[2]) } : {}),
  };
}

/** A strong ETag, else Last-Modified: what `If-Range` accepts to resume the same version. */
function versionOf(response: Response): string | undefined {
  const etag = header(response, 'etag');
  if (etag && !etag.startsWith('W/')) return etag;
  return header(response, 'last-modified');
}

export interface HttpSourceOptions {
  /** PEM CA certificates trusted besides the public roots. */
  caBundle?: string | undefined;
  /** Names the resource in messages; default: the URL without its query and credentials. */
  description?: string;
}

export class HttpSource implements ObjectSource {
  readonly description: string;
  readonly #url: URL;
  /** Node's CAs, or the ones shared by every source trusting the same CA bundle. */
  readonly #trust: Trust | undefined;

  constructor(url: URL, options: HttpSourceOptions = {}) {
    this.#url = url;
    this.#trust = options.caBundle === undefined ? undefined : trusting(options.caBundle);
    this.description = options.description ?? redactUrl(url);
  }

  /** A small request, over undici's kept-alive connections. */
  readonly #sendSmall: Send = async (url, headers, signal) => {
    const {
      statusCode,
      headers: received,
      body,
    } = await request(url, {
      headers,
      signal,
      ...(this.#trust ? { dispatcher: this.#trust.agent } : {}),
    });
    // `destroy()` would make undici's body emit an error that nothing listens to; `dump()`
    // never rejects, reads a small body to keep the connection, and closes a big one.
    return { statusCode, headers: received, body, discard: () => void body.dump() };
  };

  /** A transfer, over a connection of its own that reads into large batches. */
  readonly #sendBulk: Send = (url, headers, signal) =>
    httpGet(url, { headers, signal, ...(this.#trust ? { secureContext: this.#trust.secureContext } : {}) });

  async stat({ signal }: { signal: AbortSignal }): Promise<ObjectInfo> {
    // A one-byte GET, not HEAD: presigned URLs are signed for GET only.
    const response = await this.#get({ range: 'bytes=0-0' }, signal, this.#sendSmall);
    response.discard();
    const { total } = parseContentRange(header(response, 'content-range'));
    const length = header(response, 'content-length');
    const sizeBytes = response.statusCode === 200 && length !== undefined ? Number(length) : total;
    if (sizeBytes === undefined || !Number.isSafeInteger(sizeBytes))
      throw new PipelineError(
        DownloadReason.SourceRequestFailed,
        `${this.description} does not state its size (no Content-Length or Content-Range), which the download needs to check space and completeness`,
        { terminal: false },
      );
    const version = versionOf(response);
    return version === undefined ? { sizeBytes } : { sizeBytes, version };
  }

  async open(offset: number, info: ObjectInfo, signal: AbortSignal, end?: number): Promise<ObjectBody> {
    const headers: Record<string, string> = {};
    const bounded = end !== undefined && end < info.sizeBytes;
    if (offset > 0 || bounded) {
      headers.range = `bytes=${offset}-${bounded ? end - 1 : ''}`;
      // The server sends the whole (new) object instead of a range if it changed meanwhile.
      if (info.version !== undefined) headers['if-range'] = info.version;
    }
    const response = await this.#get(headers, signal, this.#sendBulk);
    const { body } = response;
    const version = versionOf(response);
    if (info.version !== undefined && version !== undefined && version !== info.version) {
      response.discard();
      throw sourceChanged(this.description, `version ${info.version} became ${version}`);
    }
    if (response.statusCode === 206) {
      const contentRange = header(response, 'content-range');
      const { start, total } = parseContentRange(contentRange);
      if (start !== offset || total !== info.sizeBytes) {
        response.discard();
        throw sourceChanged(
          this.description,
          `asked for bytes ${headers.range?.slice('bytes='.length)} of ${info.sizeBytes}, got ${contentRange}`,
        );
      }
      return { body, offset };
    }
    const length = header(response, 'content-length');
    if (length !== undefined && Number(length) !== info.sizeBytes) {
      response.discard();
      throw sourceChanged(this.description, `size ${info.sizeBytes} became ${length}`);
    }
    if (bounded) {
      response.discard();
      throw new RangesNotSupported(this.description);
    }
    // A 200 to a range request: the server does not do ranges, so the body starts at 0.
    return { body, offset: 0 };
  }

  /** GET following redirects; error statuses become PipelineErrors or retryable faults. */
  async #get(headers: Record<string, string>, signal: AbortSignal, send: Send): Promise<Response> {
    let url = this.#url;
    for (let redirects = 0; ; redirects++) {
      let response: Response;
      try {
        response = await send(url, headers, signal);
      } catch (error) {
        throw transportFault(error, this.description);
      }
      const status = response.statusCode;
      const location = header(response, 'location');
      if (status >= 300 && status < 400 && location !== undefined) {
        response.discard();
        url = this.#redirected(url, location, redirects);
        continue;
      }
      if (status >= 200 && status < 300) return response;
      response.discard();
      throw this.#statusFault(status);
    }
  }

  /** Where a redirect leads; refuses a loop, a bad Location and any scheme but http(s). */
  #redirected(from: URL, location: string, redirects: number): URL {
    const refuse = (why: string) =>
      new PipelineError(DownloadReason.SourceRequestFailed, `${this.description} ${why}`, {
        terminal: false,
      });
    if (redirects >= MAX_REDIRECTS) throw refuse(`redirected more than ${MAX_REDIRECTS} times`);
    const next = URL.parse(location, from.href);
    if (!next) throw refuse('redirected to a Location that is not a URL');
    if (next.protocol !== 'http:' && next.protocol !== 'https:')
      throw refuse(`redirected to ${redactUrl(next)}, which is not an http(s) URL`);
    return next;
  }

  #statusFault(status: number): unknown {
    const answer = `${this.description} answered HTTP ${status}`;
    if (status === 404 || status === 410)
      return new PipelineError(DownloadReason.SourceNotFound, `${answer}: the image does not exist`, {
        terminal: false,
      });
    if (status === 401 || status === 403)
      return new PipelineError(
        DownloadReason.SourceAccessDenied,
        `${answer}: access denied; check the URL (an expired presigned URL?) and the credentials`,
        { terminal: false },
      );
    if (status === 408 || status === 429 || status >= 500) return new Error(answer);
    return new PipelineError(DownloadReason.SourceRequestFailed, answer, { terminal: false });
  }
}
