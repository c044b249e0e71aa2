// Positioned writes into one file or block device that keep its page cache bounded. Page
// cache is charged to the pod's memory cgroup, so every `syncIntervalBytes` the data is
// flushed (dirty pages cannot be dropped) and then evicted. That flush runs in the background
// while the next interval is written, so the network is not idle while the disk catches up;
// a new flush waits for the previous one, so at most two intervals are ever dirty.
import type { FileHandle } from 'node:fs/promises';
import type { PageCache } from './pageCache.ts';

export interface BoundedWriterOptions {
  syncIntervalBytes: number;
  pageCache: PageCache;
  /**
   * Leave blocks of zeros unwritten. Only for a new file, which reads as zeros wherever
   * nothing was written (and whose size the caller sets at the end): disk images are mostly
   * zeros, and a hole costs no I/O. Never for a block device, which may hold old data.
   */
  skipZeroBlocks: boolean;
}

export class BoundedWriter {
  readonly #file: FileHandle;
  readonly #path: string;
  readonly #options: BoundedWriterOptions;
  #unsyncedBytes = 0;
  /** Something was written since the last flush began. */
  #dirty = false;
  /** The background flush; it never rejects, its error waits in #flushFailure. */
  #flushing: Promise<void> = Promise.resolve();
  #flushFailure: unknown;

  constructor(file: FileHandle, path: string, options: BoundedWriterOptions) {
    this.#file = file;
    this.#path = path;
    this.#options = options;
  }

  /** Writes `chunks` back to back from `position`. */
  async write(chunks: readonly Buffer[], position: number): Promise<void> {
    if (!this.#options.skipZeroBlocks) return this.#write(chunks, position);
    // Runs of non-zero blocks, each written with one writev; blocks of zeros stay holes.
    let run: Buffer[] = [];
    let runStart = position;
    let offset = position;
    for (const chunk of chunks) {
      let dataFrom = 0;
      for (let start = 0; start < chunk.length; start += ZERO_BLOCK_BYTES) {
        const end = Math.min(chunk.length, start + ZERO_BLOCK_BYTES);
        if (!isZero(chunk.subarray(start, end))) continue;
        if (start > dataFrom) run.push(chunk.subarray(dataFrom, start));
        if (run.length > 0) await this.#write(run, runStart);
        run = [];
        dataFrom = end;
        runStart = offset + end;
      }
      if (dataFrom < chunk.length) run.push(dataFrom === 0 ? chunk : chunk.subarray(dataFrom));
      offset += chunk.length;
    }
    if (run.length > 0) await this.#write(run, runStart);
  }

  /** Sets the file's size, e.g. past trailing zeros that were never written; flush() makes it durable. */
  async setSize(bytes: number): Promise<void> {
    await this.#file.truncate(bytes);
    this.#dirty = true;
  }

  /**
   * Makes everything written so far durable and drops it from the page cache. After a
   * startFlush() with nothing written since, it only waits for that flush.
   */
  async flush(): Promise<void> {
    await this.#settled();
    if (!this.#dirty) return;
    this.#unsyncedBytes = 0;
    await this.#syncAndEvict();
  }

  /**
   * Starts flushing what has been written so far, in the background, after any flush still
   * running; flush() and idle() wait for it. For a writer that expects few writes more, so
   * that its last flush overlaps other work.
   */
  startFlush(): void {
    this.#unsyncedBytes = 0;
    this.#flushing = this.#flushing
      .then(() => this.#syncAndEvict())
      .catch((error: unknown) => {
        this.#flushFailure = error;
      });
  }

  /**
   * Resolves once no background flush runs, whatever its result. Call it before removing or
   * closing the file: the eviction (GNU dd) would otherwise create a removed file anew.
   */
  idle(): Promise<void> {
    return this.#flushing;
  }

  async #syncAndEvict(): Promise<void> {
    // Writes that complete from here on may miss this sync: they mark the file dirty again.
    this.#dirty = false;
    await this.#file.datasync();
    await this.#options.pageCache.evict(this.#path);
  }

  /** Waits for the background flush; throws what it failed with. */
  async #settled(): Promise<void> {
    await this.#flushing;
    if (this.#flushFailure !== undefined) throw this.#flushFailure;
  }

  /** One writev, unless the kernel takes fewer bytes. */
  async #write(chunks: readonly Buffer[], position: number): Promise<void> {
    const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    let written = (await this.#file.writev(chunks, position)).bytesWritten;
    if (written < length) {
      const rest = Buffer.concat(chunks);
      while (written < length) {
        written += (await this.#file.write(rest, written, length - written, position + written)).bytesWritten;
      }
    }
    this.#dirty = true;
    this.#unsyncedBytes += length;
    if (this.#unsyncedBytes >= this.#options.syncIntervalBytes) {
      await this.#settled();
      this.startFlush();
    }
  }
}

/** The granularity of holes: a block of this many zeros (from a chunk's start) is not written. */
const ZERO_BLOCK_BYTES = 64 * 1024;
const ZEROS = Buffer.alloc(ZERO_BLOCK_BYTES);

/** For a block of at most ZERO_BLOCK_BYTES. */
function isZero(block: Buffer): boolean {
  return block.equals(ZEROS.subarray(0, block.length));
}
