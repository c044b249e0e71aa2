// Reads one byte range of an object over several connections at once and hands the bytes on
// in offset order. One connection to S3 gets about 50-100 MB/s, whatever the node's link;
// several range requests in flight together fill it. The download's hash and the raw mirror
// need the bytes in order, so the chunks that arrive early wait in memory: at most
// `connections` chunks are in flight or waiting, which bounds that memory to
// connections × chunkBytes.
import { Readable } from 'node:stream';

/** The share of its time a probed download must wait for bytes to be worth more connections. */
const STARVED_FRACTION = 0.5;

/** A body of exactly the bytes from `start` to `end` (exclusive); aborting `signal` ends it. */
export type FetchRange = (start: number, end: number, signal: AbortSignal) => Promise<Readable>;

export interface ParallelRangesOptions {
  /** The first byte to read. */
  start: number;
  /** Where to stop, exclusive: the object's size. */
  end: number;
  chunkBytes: number;
  /** Range requests in flight at once, including the one being handed on. */
  connections: number;
  /** Aborting ends every request. */
  signal: AbortSignal;
}

/**
 * The bytes from `start` to `end`, in order. A chunk that fails (a cut connection, an error
 * answer) fails the stream once the bytes before its failure have been handed on, so a resume
 * from the bytes received loses nothing that arrived in order. Destroying the stream ends
 * every request still in flight.
 */
export function parallelRanges(fetch: FetchRange, options: ParallelRangesOptions): Readable {
  const { start, end, chunkBytes, connections, signal } = options;
  if (!(chunkBytes > 0 && connections >= 1))
    throw new RangeError('chunkBytes and connections must be positive');
  const stop = new AbortController();
  const requests = AbortSignal.any([signal, stop.signal]);
  async function* inOrder(): AsyncGenerator<Buffer> {
    const chunks: Chunk[] = [];
    let next = start;
    const fill = () => {
      while (chunks.length < connections && next < end) {
        const chunkEnd = Math.min(end, next + chunkBytes);
        chunks.push(new Chunk(fetch, next, chunkEnd, requests));
        next = chunkEnd;
      }
    };
    fill();
    for (let head = chunks[0]; head; head = chunks[0]) {
      yield* head.drain();
      chunks.shift();
      fill();
    }
  }
  const iterator = inOrder();
  let pumping = false;
  const pump = async () => {
    if (pumping) return;
    pumping = true;
    try {
      for (;;) {
        const { value, done } = await iterator.next();
        if (done) body.push(null);
        if (done || !body.push(value)) return;
      }
    } catch (error) {
      body.destroy(error as Error);
    } finally {
      pumping = false;
    }
  };
  // Not Readable.from: its destroy waits for the generator, which may wait for a chunk.
  const body = new Readable({
    read: () => void pump(),
    destroy: (error, callback) => {
      stop.abort(error ?? new Error('the ranged read ended'));
      callback(error);
    },
  });
  return body;
}

/** One range request: what arrived so far, and how it ended. */
class Chunk {
  readonly #start: number;
  readonly #end: number;
  readonly #parts: Buffer[] = [];
  #received = 0;
  #ended = false;
  #failure: unknown;
  #wake: (() => void) | undefined;

  constructor(fetch: FetchRange, start: number, end: number, signal: AbortSignal) {
    this.#start = start;
    this.#end = end;
    void this.#receive(fetch, signal);
  }

  /** Hands on the parts as they arrive; throws the chunk's failure after its last good byte. */
  async *drain(): AsyncGenerator<Buffer> {
    for (;;) {
      const part = this.#parts.shift();
      if (part) {
        yield part;
        continue;
      }
      if (this.#ended) {
        if (this.#failure !== undefined) throw this.#failure;
        return;
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }

  /** Never rejects: a failure waits in #failure until the chunk's turn comes. */
  async #receive(fetch: FetchRange, signal: AbortSignal): Promise<void> {
    const expected = this.#end - this.#start;
    try {
      const body = await fetch(this.#start, this.#end, signal);
      for await (const part of body as AsyncIterable<Buffer>) {
        this.#received += part.length;
        if (this.#received > expected) {
          body.destroy();
          throw new Error(`sent more than the ${expected} bytes asked for from byte ${this.#start}`);
        }
        this.#parts.push(part);
        this.#notify();
      }
      if (this.#received < expected)
        throw new Error(
          `connection closed after ${this.#received} of ${expected} bytes from byte ${this.#start}`,
        );
    } catch (error) {
      this.#failure = error;
    }
    this.#ended = true;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/**
 * Tells from the first bytes of a single request whether more connections would help: only
 * when the bytes arrive slower than the download writes and hashes them, so that it waits
 * for them. When the download itself is the bottleneck (a server on this host, a fast LAN),
 * more connections only add requests and take CPU from it.
 */
export class StarvationProbe {
  readonly #probeBytes: number;
  readonly #now: () => number;
  readonly #startedAt: number;
  #bytes = 0;
  /** From the request on: the wait for the first bytes counts, as it does for every chunk. */
  #idleSince: number | undefined;
  #waitedMs = 0;

  /** Create it as the request goes out. */
  constructor(probeBytes: number, now: () => number = () => performance.now()) {
    this.#probeBytes = probeBytes;
    this.#now = now;
    this.#startedAt = now();
    this.#idleSince = this.#startedAt;
  }

  /** Bytes arrived for the download; it waited for them since its last write ended. */
  arrived(): void {
    const now = this.#now();
    if (this.#idleSince !== undefined) this.#waitedMs += now - this.#idleSince;
    this.#idleSince = undefined;
  }

  /** The download wrote and hashed `bytes`, and waits for more. */
  consumed(bytes: number): void {
    this.#bytes += bytes;
    this.#idleSince = this.#now();
  }

  /** Undefined until `probeBytes` went through; then whether the download mostly waited. */
  starved(): boolean | undefined {
    if (this.#bytes < this.#probeBytes) return undefined;
    const elapsed = this.#now() - this.#startedAt;
    return elapsed > 0 && this.#waitedMs / elapsed >= STARVED_FRACTION;
  }
}
