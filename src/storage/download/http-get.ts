// A bare HTTP/1.1 GET for image bodies. The socket reads straight into large batch buffers
// (net's `onread` with a buffer chosen per read), and the body is those batches. Receiving
// then costs no allocation per 64 KiB chunk, no copy into and out of a WebAssembly parser and
// no stream round per chunk: 216 MB from MinIO on loopback, hashed with SHA-256, took 0.17 s
// against undici's 0.35 s (curl, not hashing: 0.18 s). A connection whose answer ended
// cleanly waits, kept alive, for the next request to the same server: a download over
// parallel ranges makes one request per 4 MiB, and a new connection for each would cost a
// TCP handshake, TCP's slow start and, over https, a TLS handshake on the main thread.
import { connect as connectTcp, isIP, type OnReadOpts, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { type ConnectionOptions, connect as connectTls, type SecureContext } from 'node:tls';

/**
 * What the body's batches hold at most. Its reader hashes each batch on the main thread in
 * one go; 4 MiB batches (2.5 ms of SHA-256 each) made a download behind a 200 MB/s link about
 * 10 % slower than 1 MiB ones, and were no faster on loopback (2026-12-03).
 */
const BODY_BATCH_BYTES = 1024 * 1024;
/** A response head (status line and headers) longer than this is refused. */
export const MAX_HEAD_BYTES = 64 * 1024;
/** Received bytes wait at most this long for their batch to fill before the body gets them. */
const IDLE_PUSH_MS = 100;
/** A chunk-size line (with extensions) or trailer line longer than this is refused. */
const MAX_CHUNK_LINE_BYTES = 4 * 1024;
/**
 * How long a kept-alive connection waits for its next request: below the idle timeouts of
 * common servers (Node's 5 s), so that the client, not the server, closes it.
 */
const IDLE_CONNECTION_MS = 4_000;
/** Kept-alive connections per server; a download keeps at most its range requests in flight. */
const MAX_IDLE_PER_SERVER = 16;

export interface HttpGetOptions {
  /** Request headers besides Host and Connection; names and values must be plain. */
  headers: Readonly<Record<string, string>>;
  /** Aborting ends the request, or the body with the signal's reason. */
  signal: AbortSignal;
  /** For https: the CAs to trust; default: Node's. */
  secureContext?: SecureContext;
  /** For tests: the most a batch holds (default BODY_BATCH_BYTES). */
  batchBytes?: number;
}

export interface HttpGetResponse {
  statusCode: number;
  /** Lower-case names; a header sent more than once has all its values. */
  headers: Readonly<Record<string, string | string[]>>;
  /** The decoded body in batches of at most `batchBytes`; errors if the connection ends early. */
  body: Readable;
  /** Closes the connection without reading the body. */
  discard(): void;
}

/**
 * A response the client cannot read safely. The download retries it as any other fault (a
 * proxy may have garbled one answer); a server that always answers so fails after the
 * retries, with this message.
 */
export class HttpProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HttpProtocolError';
  }
}

export function httpGet(url: URL, options: HttpGetOptions): Promise<HttpGetResponse> {
  return new Promise((resolve, reject) => {
    options.signal.throwIfAborted();
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw new TypeError(`not an http(s) URL: ${url.protocol}`);
    new ResponseReader(url, options, resolve, reject);
  });
}

/** The reader a connection's reads and events go to, while it has one. */
interface ConnectionUser {
  /** Where the next read should land; never empty. */
  readBuffer(): Buffer;
  /** `bytes` were read into `into`: what readBuffer gave, or a buffer given before it took over. */
  received(bytes: number, into: Buffer): void;
  broken(error: Error): void;
  ended(): void;
}

/**
 * Where a connection reads while it has no reader. Node asks for the next read's buffer right
 * after each read (and once as it connects), so the first read for a new reader lands in the
 * buffer asked for before: this one, or the previous reader's. The reader copies it over.
 */
const IDLE_READ_BUFFER = Buffer.alloc(64);

/** One socket, used by one request at a time; between requests it waits in `idleConnections`. */
class Connection {
  readonly socket: Socket;
  readonly server: string;
  user: ConnectionUser | undefined;
  /** It carried a request before: a failure before any answer may be a server that closed it. */
  reused = false;
  #idleTimer: NodeJS.Timeout | undefined;
  /** Where the next read lands. */
  #readInto: Buffer = IDLE_READ_BUFFER;

  constructor(url: URL, server: string, secureContext: SecureContext | undefined) {
    this.server = server;
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const onread: OnReadOpts = {
      buffer: () => {
        this.#readInto = this.user?.readBuffer() ?? IDLE_READ_BUFFER;
        return this.#readInto;
      },
      callback: (bytes: number) => {
        // An idle connection gets nothing from a server that keeps to the protocol.
        if (this.user) this.user.received(bytes, this.#readInto);
        else this.close();
        return true;
      },
    };
    // tls.connect takes `onread` as net.connect does (Node's docs); @types/node omits it.
    const tlsOptions: ConnectionOptions & { onread: OnReadOpts } = {
      host,
      port: Number(url.port || 443),
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...(secureContext ? { secureContext } : {}),
      onread,
    };
    this.socket =
      url.protocol === 'https:'
        ? connectTls(tlsOptions)
        : connectTcp({ host, port: Number(url.port || 80), onread });
    this.socket.on('error', (error) => (this.user ? this.user.broken(error) : this.close()));
    this.socket.on('end', () => (this.user ? this.user.ended() : this.close()));
    this.socket.on('close', () => this.#forget());
  }

  /** A kept-alive connection to the server, else a new one; `user` gets its reads from now. */
  static open(url: URL, secureContext: SecureContext | undefined, user: ConnectionUser): Connection {
    const server = `${url.protocol}//${url.host} ${secureContext ? contextId(secureContext) : ''}`;
    const connection = idleConnections.get(server)?.pop() ?? new Connection(url, server, secureContext);
    clearTimeout(connection.#idleTimer);
    connection.user = user;
    connection.socket.ref();
    connection.socket.resume();
    return connection;
  }

  /** Waits for the next request to the server, or closes after IDLE_CONNECTION_MS. */
  keep(): void {
    this.user = undefined;
    this.reused = true;
    const idle = idleConnections.get(this.server) ?? [];
    if (this.socket.destroyed || idle.length >= MAX_IDLE_PER_SERVER) {
      this.close();
      return;
    }
    idle.push(this);
    idleConnections.set(this.server, idle);
    // Reading on, so that the server's close is noticed; an idle socket keeps no process alive.
    this.socket.resume();
    this.socket.unref();
    this.#idleTimer = setTimeout(() => this.close(), IDLE_CONNECTION_MS).unref();
  }

  close(): void {
    this.user = undefined;
    this.socket.destroy();
    this.#forget();
  }

  #forget(): void {
    clearTimeout(this.#idleTimer);
    const idle = idleConnections.get(this.server);
    const index = idle?.indexOf(this) ?? -1;
    if (index >= 0) idle?.splice(index, 1);
    if (idle?.length === 0) idleConnections.delete(this.server);
  }
}

/** Kept-alive connections by server (scheme, host, port and trusted CAs). */
const idleConnections = new Map<string, Connection[]>();
const contextIds = new WeakMap<SecureContext, number>();
let nextContextId = 0;
function contextId(context: SecureContext): number {
  let id = contextIds.get(context);
  if (id === undefined) {
    id = nextContextId++;
    contextIds.set(context, id);
  }
  return id;
}

const LF = 0x0a;
const HEAD_END = Buffer.from('\r\n\r\n');
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

type Framing =
  | { kind: 'length'; remaining: number }
  | { kind: 'close' }
  | {
      kind: 'chunked';
      /**
       * size: reading a chunk-size line; data: inside a chunk; dataEnd: its CRLF; trailer:
       * after the last chunk, until an empty line; done: the body is complete.
       */
      state: 'size' | 'data' | 'dataEnd' | 'trailer' | 'done';
      remaining: number;
      line: string;
    };

/**
 * One request and its response. Every read lands in `#batch` after `#filled` bytes; the head,
 * and in a chunked body the framing, is cut out of it in place, so the body's bytes are
 * copied only by the kernel. A full batch goes to the body and a new one takes its place.
 * Bytes that wait longer than IDLE_PUSH_MS (a slow link, a stall) go to the body as a view
 * of the batch, and so do the bytes before a connection breaks, ahead of the error, so that
 * a resumed download starts after the bytes that arrived.
 */
class ResponseReader implements ConnectionUser {
  readonly #url: URL;
  readonly #options: HttpGetOptions;
  readonly #request: string;
  #connection: Connection;
  /** Bytes of the answer arrived (on this connection). */
  #answered = false;
  /** The answer allows the connection to carry another request after it. */
  #keepAlive = false;
  readonly #batchBytes: number;
  readonly #signal: AbortSignal;
  #batch: Buffer;
  #filled = 0;
  /** The batch's bytes before this went to the body already. */
  #pushed = 0;
  #idlePush: NodeJS.Timeout | undefined;
  #head = true;
  /** The body ended, or the request failed: nothing more happens. */
  #done = false;
  /** What the body fails with once its reader has taken the bytes before it. */
  #pendingError: Error | undefined;
  #framing: Framing = { kind: 'close' };
  #body: Readable | undefined;
  #settle: { resolve: (response: HttpGetResponse) => void; reject: (error: unknown) => void } | undefined;
  readonly #onAbort = () => this.#fail(this.#signal.reason);

  constructor(
    url: URL,
    options: HttpGetOptions,
    resolve: (response: HttpGetResponse) => void,
    reject: (error: unknown) => void,
  ) {
    this.#settle = { resolve, reject };
    this.#signal = options.signal;
    this.#batchBytes = options.batchBytes ?? BODY_BATCH_BYTES;
    this.#batch = Buffer.allocUnsafeSlow(this.#batchBytes);
    this.#url = url;
    this.#options = options;
    this.#request = requestHead(url, options.headers);
    this.#connection = this.#send();
    this.#signal.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Writes the request on a kept-alive connection, or a new one (once connected). */
  #send(): Connection {
    const connection = Connection.open(this.#url, this.#options.secureContext, this);
    connection.socket.write(this.#request);
    return connection;
  }

  readBuffer(): Buffer {
    return this.#batch.subarray(this.#filled);
  }

  received(bytes: number, into: Buffer): void {
    this.#answered = true;
    const mine =
      into.buffer === this.#batch.buffer && into.byteOffset === this.#batch.byteOffset + this.#filled;
    if (mine) {
      this.#received(bytes);
      return;
    }
    for (let offset = 0; offset < bytes && !this.#done; ) {
      // At least a byte of room: a full batch is replaced, a head that fills one is refused.
      const taken = Math.min(bytes - offset, this.#batch.length - this.#filled);
      into.copy(this.#batch, this.#filled, offset, offset + taken);
      this.#received(taken);
      offset += taken;
    }
  }

  ended(): void {
    if (this.#staleConnection()) return;
    this.#ended();
  }

  broken(error: Error): void {
    if (this.#staleConnection()) return;
    this.#broken(error);
  }

  /**
   * A kept-alive connection that fails before any answer was most likely closed by the
   * server meanwhile: the request goes once more, on a new connection.
   */
  #staleConnection(): boolean {
    if (this.#done || this.#answered || !this.#connection.reused) return false;
    this.#connection.close();
    this.#connection = this.#send();
    return true;
  }

  /** `bytes` more were read into the batch at `#filled`. */
  #received(bytes: number): void {
    if (this.#done) return;
    try {
      if (this.#head) this.#readHead(bytes);
      else this.#readBody(this.#filled, bytes);
    } catch (error) {
      this.#fail(error);
    }
  }

  #readHead(bytes: number): void {
    const searchFrom = Math.max(0, this.#filled - 3);
    this.#filled += bytes;
    const end = this.#batch.subarray(0, this.#filled).indexOf(HEAD_END, searchFrom);
    // A test's small batch must hold the head too.
    if ((end < 0 ? this.#filled : end) > Math.min(MAX_HEAD_BYTES, this.#batch.length - 1))
      throw new HttpProtocolError(`the response head is longer than ${MAX_HEAD_BYTES} bytes`);
    if (end < 0) return;
    const { statusCode, headers, keepAlive } = parseHead(this.#batch.toString('latin1', 0, end));
    const rest = this.#filled - end - HEAD_END.length;
    this.#batch.copyWithin(0, end + HEAD_END.length, this.#filled);
    this.#filled = 0;
    // An informational answer (103 Early Hints) comes before the real one.
    if (statusCode < 200) {
      if (rest > 0) this.#readHead(rest);
      return;
    }
    this.#head = false;
    this.#framing = framingOf(headers);
    // Only a body of known length shows where the next answer would start.
    this.#keepAlive = keepAlive && this.#framing.kind === 'length';
    const body = new Readable({
      highWaterMark: this.#batchBytes,
      read: () => this.#wanted(),
      // A reader that stops early (a download switching to ranges) lets go of the connection.
      destroy: (error, callback) => {
        if (!this.#done) {
          this.#done = true;
          this.#close();
        }
        callback(error);
      },
    });
    this.#body = body;
    const settle = this.#settle;
    this.#settle = undefined;
    settle?.resolve({ statusCode, headers, body, discard: () => this.#discard() });
    if (rest > 0) this.#readBody(0, rest);
    else if (this.#framing.kind === 'length' && this.#framing.remaining === 0) this.#finish();
  }

  /** Takes `bytes` new bytes at `from` in the batch into the body. */
  #readBody(from: number, bytes: number): void {
    const framing = this.#framing;
    if (framing.kind === 'chunked') this.#filled = from + decodeChunked(framing, this.#batch, from, bytes);
    else if (framing.kind === 'length') {
      // Bytes past the announced length are not the body's; the connection closes after it.
      const taken = Math.min(bytes, framing.remaining);
      if (taken < bytes) this.#keepAlive = false;
      framing.remaining -= taken;
      this.#filled = from + taken;
    } else this.#filled = from + bytes;
    const done =
      (framing.kind === 'length' && framing.remaining === 0) ||
      (framing.kind === 'chunked' && framing.state === 'done');
    if (done) this.#finish();
    else if (this.#filled === this.#batch.length) {
      this.#pushFilled();
      this.#batch = Buffer.allocUnsafeSlow(this.#batchBytes);
      this.#filled = 0;
      this.#pushed = 0;
    } else this.#idlePush ??= setTimeout(() => this.#pushFilled(), IDLE_PUSH_MS);
  }

  /**
   * The body's reader wants more: read on, or fail it if nothing it has not read is left.
   * An empty push keeps the stream asking, so that it asks again once it is empty.
   */
  #wanted(): void {
    const body = this.#body;
    if (!this.#pendingError) {
      // Not once the connection went back to the pool: it may be another request's now.
      if (this.#connection.user === this) this.#connection.socket.resume();
    } else if (body?.readableLength === 0) body.destroy(this.#pendingError);
    else body?.push(Buffer.alloc(0));
  }

  /** Hands the batch's new bytes to the body; pauses reading while the body is full. */
  #pushFilled(): void {
    clearTimeout(this.#idlePush);
    this.#idlePush = undefined;
    if (this.#filled === this.#pushed) return;
    // A whole batch goes as itself, so that its reader can free its memory at once.
    const whole = this.#pushed === 0 && this.#filled === this.#batch.length;
    const bytes = whole ? this.#batch : this.#batch.subarray(this.#pushed, this.#filled);
    this.#pushed = this.#filled;
    if (!this.#body?.push(bytes)) this.#connection.socket.pause();
  }

  #finish(): void {
    this.#done = true;
    this.#pushFilled();
    this.#body?.push(null);
    this.#close(this.#keepAlive);
  }

  /** The server closed the connection: the end of a close-delimited body, else too early. */
  #ended(): void {
    if (this.#done) return;
    if (this.#head) this.#fail(new Error('the server closed the connection before a complete response head'));
    else if (this.#framing.kind === 'close') this.#finish();
    else this.#broken(new Error('the server closed the connection before the end of the body'));
  }

  /** The connection failed: the body gets the bytes that arrived, then the error. */
  #broken(error: Error): void {
    if (!this.#done) this.#pushFilled();
    this.#fail(error);
  }

  /**
   * Ends the request with `error`: the answer's promise rejects, or the body fails once its
   * reader has taken what came before. Never at once on a body nobody reads yet: its error
   * event would have no listener.
   */
  #fail(error: unknown): void {
    if (this.#done) return;
    this.#done = true;
    const settle = this.#settle;
    this.#settle = undefined;
    settle?.reject(error);
    this.#close();
    const body = this.#body;
    if (!body) return;
    this.#pendingError = error instanceof Error ? error : new Error(String(error));
    if (body.readableLength === 0 && body.readableFlowing !== null) body.destroy(this.#pendingError);
  }

  #discard(): void {
    this.#done = true;
    this.#body?.destroy();
    this.#close();
  }

  /**
   * Lets go of the connection: kept for the next request, or closed. Once only: a kept
   * connection may carry another request by the time this reader's body is discarded.
   */
  #close(keep = false): void {
    clearTimeout(this.#idlePush);
    this.#signal.removeEventListener('abort', this.#onAbort);
    if (this.#connection.user !== this) return;
    if (keep) this.#connection.keep();
    else this.#connection.close();
  }
}

function requestHead(url: URL, headers: Readonly<Record<string, string>>): string {
  const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`];
  for (const [name, value] of Object.entries(headers)) {
    if (!TOKEN.test(name) || !/^[\t\x20-\x7e]*$/.test(value))
      throw new TypeError(`invalid request header ${JSON.stringify(name)}`);
    lines.push(`${name}: ${value}`);
  }
  lines.push('', '');
  return lines.join('\r\n');
}

function parseHead(head: string): {
  statusCode: number;
  headers: Record<string, string | string[]>;
  /** HTTP/1.1 without `Connection: close`: the connection may carry another request. */
  keepAlive: boolean;
} {
  const [statusLine = '', ...fields] = head.split('\r\n');
  const status = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(statusLine);
  if (!status)
    throw new HttpProtocolError(`not an HTTP/1.1 status line: ${JSON.stringify(statusLine.slice(0, 80))}`);
  const headers: Record<string, string | string[]> = {};
  for (const field of fields) {
    const colon = field.indexOf(':');
    const name = field.slice(0, colon).toLowerCase();
    const value = field.slice(colon + 1).trim();
    // Folded lines (obsolete) and whitespace before the colon are how smuggling starts.
    if (colon < 1 || !TOKEN.test(name) || !FIELD_VALUE.test(value))
      throw new HttpProtocolError(`malformed response header line ${JSON.stringify(field.slice(0, 80))}`);
    const previous = headers[name];
    headers[name] =
      previous === undefined ? value : [...(Array.isArray(previous) ? previous : [previous]), value];
  }
  const connection = [headers.connection ?? []].flat().join(',');
  const keepAlive = status[1] === '1' && !/(?:^|,)\s*close\s*(?:,|$)/i.test(connection);
  return { statusCode: Number(status[2]), headers, keepAlive };
}

function framingOf(headers: Record<string, string | string[]>): Framing {
  const encoding = headers['transfer-encoding'];
  const length = headers['content-length'];
  if (encoding !== undefined) {
    if (length !== undefined)
      throw new HttpProtocolError('the response has both Transfer-Encoding and Content-Length');
    if (typeof encoding !== 'string' || encoding.toLowerCase() !== 'chunked')
      throw new HttpProtocolError(`unsupported Transfer-Encoding ${JSON.stringify(encoding)}`);
    return { kind: 'chunked', state: 'size', remaining: 0, line: '' };
  }
  if (length === undefined) return { kind: 'close' };
  if (typeof length !== 'string' || !/^\d{1,15}$/.test(length))
    throw new HttpProtocolError(`invalid Content-Length ${JSON.stringify(length)}`);
  return { kind: 'length', remaining: Number(length) };
}

/**
 * Decodes `bytes` chunked-encoded bytes at `from` in `batch` in place: the data moves down
 * over the framing. Returns how many data bytes are now at `from`. The last chunk and its
 * trailer leave the state at done.
 */
function decodeChunked(
  framing: Extract<Framing, { kind: 'chunked' }>,
  batch: Buffer,
  from: number,
  bytes: number,
): number {
  let read = from;
  let write = from;
  const end = from + bytes;
  while (read < end && framing.state !== 'done') {
    if (framing.state === 'data') {
      const take = Math.min(framing.remaining, end - read);
      if (write !== read) batch.copyWithin(write, read, read + take);
      read += take;
      write += take;
      framing.remaining -= take;
      if (framing.remaining === 0) {
        framing.state = 'dataEnd';
        framing.line = '';
      }
      continue;
    }
    // Up to and with the line's LF, or to the end of what arrived.
    const newline = batch.subarray(read, end).indexOf(LF);
    const lineEnd = newline < 0 ? end : read + newline + 1;
    framing.line += batch.toString('latin1', read, lineEnd);
    read = lineEnd;
    if (framing.line.length > MAX_CHUNK_LINE_BYTES)
      throw new HttpProtocolError('a chunk-size or trailer line is too long');
    if (!framing.line.endsWith('\n')) continue;
    if (!framing.line.endsWith('\r\n')) throw new HttpProtocolError('a chunk line does not end with CRLF');
    const line = framing.line.slice(0, -2);
    framing.line = '';
    if (framing.state === 'dataEnd') {
      if (line !== '') throw new HttpProtocolError('a chunk is longer than its size');
      framing.state = 'size';
    } else if (framing.state === 'size') {
      const size = /^([0-9a-fA-F]{1,12})[\t ]*(?:;.*)?$/.exec(line);
      if (!size?.[1]) throw new HttpProtocolError(`invalid chunk size ${JSON.stringify(line.slice(0, 40))}`);
      framing.remaining = Number.parseInt(size[1], 16);
      framing.state = framing.remaining === 0 ? 'trailer' : 'data';
    } else if (line === '') framing.state = 'done';
  }
  return write - from;
}
