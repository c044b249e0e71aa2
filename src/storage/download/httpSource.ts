// A plain HTTP(S) resource read with node:http/https: a web server, or a presigned S3 URL.
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { PipelineError } from '../../pipeline/types.ts';
import { DownloadReason } from './reasons.ts';
import {
  type ObjectBody,
  type ObjectInfo,
  type ObjectSource,
  sourceChanged,
  transportFault,
  trustedCAs,
} from './source.ts';
import { redactUrl } from './url.ts';

const MAX_REDIRECTS = 5;

function send(url: URL, headers: Record<string, string>, signal: AbortSignal, ca: string[] | undefined) {
  return new Promise<IncomingMessage>((resolve, reject) => {
    const request =
      url.protocol === 'https:'
        ? httpsRequest(url, { headers, signal, ...(ca ? { ca } : {}) }, resolve)
        : httpRequest(url, { headers, signal }, resolve);
    request.once('error', reject);
    request.end();
  });
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
function versionOf(headers: IncomingHttpHeaders): string | undefined {
  const etag = headers.etag;
  if (etag && !etag.startsWith('W/')) return etag;
  return headers['last-modified'];
}

export class HttpSource implements ObjectSource {
  readonly description: string;
  readonly #url: URL;
  readonly #ca: string[] | undefined;

  constructor(url: URL, caBundle?: string) {
    this.#url = url;
    this.#ca = trustedCAs(caBundle);
    this.description = redactUrl(url);
  }

  async stat({ signal }: { signal: AbortSignal }): Promise<ObjectInfo> {
    // A one-byte GET, not HEAD: presigned URLs are signed for GET only.
    const response = await this.#get({ range: 'bytes=0-0' }, signal);
    response.destroy();
    const { total } = parseContentRange(response.headers['content-range']);
    const length = response.headers['content-length'];
    const sizeBytes = response.statusCode === 200 && length !== undefined ? Number(length) : total;
    if (sizeBytes === undefined || !Number.isSafeInteger(sizeBytes))
      throw new PipelineError(
        DownloadReason.SourceRequestFailed,
        `${this.description} does not state its size (no Content-Length or Content-Range), which the download needs to check space and completeness`,
        { terminal: false },
      );
    const version = versionOf(response.headers);
    return version === undefined ? { sizeBytes } : { sizeBytes, version };
  }

  async open(offset: number, info: ObjectInfo, signal: AbortSignal): Promise<ObjectBody> {
    const headers: Record<string, string> = {};
    if (offset > 0) {
      headers.range = `bytes=${offset}-`;
      // The server sends the whole (new) object instead of a range if it changed meanwhile.
      if (info.version !== undefined) headers['if-range'] = info.version;
    }
    const response = await this.#get(headers, signal);
    const version = versionOf(response.headers);
    if (info.version !== undefined && version !== undefined && version !== info.version) {
      response.destroy();
      throw sourceChanged(this.description, `version ${info.version} became ${version}`);
    }
    if (response.statusCode === 206) {
      const { start, total } = parseContentRange(response.headers['content-range']);
      if (start !== offset || total !== info.sizeBytes) {
        response.destroy();
        throw sourceChanged(
          this.description,
          `asked for bytes ${offset}- of ${info.sizeBytes}, got ${response.headers['content-range']}`,
        );
      }
      return { body: response, offset };
    }
    const length = response.headers['content-length'];
    if (length !== undefined && Number(length) !== info.sizeBytes) {
      response.destroy();
      throw sourceChanged(this.description, `size ${info.sizeBytes} became ${length}`);
    }
    // A 200 to a range request: the server does not do ranges, so the body starts at 0.
    return { body: response, offset: 0 };
  }

  /** GET following redirects; error statuses become PipelineErrors or retryable faults. */
  async #get(headers: Record<string, string>, signal: AbortSignal): Promise<IncomingMessage> {
    let url = this.#url;
    for (let redirects = 0; ; redirects++) {
      let response: IncomingMessage;
      try {
        response = await send(url, headers, signal, this.#ca);
      } catch (error) {
        throw transportFault(error, this.description);
      }
      const status = response.statusCode ?? 0;
      const location = response.headers.location;
      if (status >= 300 && status < 400 && location !== undefined && redirects < MAX_REDIRECTS) {
        response.resume();
        url = new URL(location, url);
        continue;
      }
      if (status >= 200 && status < 300) return response;
      response.resume();
      throw this.#statusFault(status);
    }
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
