// Positioned writes into one file or block device that keep its page cache bounded. Page
// cache is charged to the pod's memory cgroup, so every `syncIntervalBytes` the data is
// flushed (dirty pages cannot be dropped) and then evicted.
import type { FileHandle } from 'node:fs/promises';
import type { PageCache } from './pageCache.ts';

export class BoundedWriter {
  readonly #file: FileHandle;
  readonly #path: string;
  readonly #syncIntervalBytes: number;
  readonly #pageCache: PageCache;
  #unsyncedBytes = 0;

  constructor(file: FileHandle, path: string, options: { syncIntervalBytes: number; pageCache: PageCache }) {
    this.#file = file;
    this.#path = path;
    this.#syncIntervalBytes = options.syncIntervalBytes;
    this.#pageCache = options.pageCache;
  }

  /** Writes `chunks` back to back from `position`: one writev unless the kernel takes fewer bytes. */
  async write(chunks: readonly Buffer[], position: number): Promise<void> {
    const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    let written = (await this.#file.writev(chunks, position)).bytesWritten;
    if (written < length) {
      const rest = Buffer.concat(chunks);
      while (written < length) {
        written += (await this.#file.write(rest, written, length - written, position + written)).bytesWritten;
      }
    }
    this.#unsyncedBytes += length;
    if (this.#unsyncedBytes >= this.#syncIntervalBytes) await this.flush();
  }

  /** Makes everything written so far durable and drops it from the page cache. */
  async flush(): Promise<void> {
    await this.#file.datasync();
    await this.#pageCache.evict(this.#path);
    this.#unsyncedBytes = 0;
  }
}
