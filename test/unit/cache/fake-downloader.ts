// A Downloader over in-memory objects that behaves as the real one does on disk: it writes a
// partial file next to the destination, renames it into place when done and removes it when
// aborted. A test can hold transfers open to run jobs side by side.
import { createHash } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseChecksum } from '../../../src/storage/download/checksum.ts';
import type {
  Downloader,
  DownloadOptions,
  DownloadResult,
  DownloadSource,
  SourceStat,
} from '../../../src/storage/download/index.ts';
import { PARTIAL_FILE_PREFIX } from '../../../src/storage/download/index.ts';

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

interface StoredObject {
  content: Buffer;
  /** The `.sha256` object beside it, if any. */
  sidecar?: string;
}

export class FakeDownloader implements Downloader {
  readonly #objects = new Map<string, StoredObject>();
  readonly #gates: (() => void)[] = [];
  /** URLs in the order downloads started. */
  readonly downloads: string[] = [];
  /** Signals of every download started, to see whether they were aborted. */
  readonly signals: AbortSignal[] = [];
  /** When true, downloads wait for `finishHeld()` after writing half of the content. */
  hold = false;
  /** Runs as a download starts (e.g. to see which files are in the cache folder then). */
  beforeStart: () => void = () => {};
  /** Runs just before a download completes (e.g. to move a fake clock). */
  beforeFinish: () => void = () => {};
  #partialNumber = 0;

  put(url: string, content: Buffer, options: { sidecar?: boolean } = {}): void {
    this.#objects.set(url, { content, ...(options.sidecar ? { sidecar: sha256(content) } : {}) });
  }

  async stat(source: DownloadSource): Promise<SourceStat> {
    const object = this.#object(source.url);
    const expected = source.checksum
      ? parseChecksum(source.checksum)
      : object.sidecar
        ? { algorithm: 'sha256' as const, hex: object.sidecar, origin: `${source.url}.sha256` }
        : undefined;
    return {
      description: source.url,
      sizeBytes: object.content.length,
      ...(expected ? { expectedChecksum: expected } : {}),
    };
  }

  async download(source: DownloadSource, options: DownloadOptions): Promise<DownloadResult> {
    const { content } = this.#object(source.url);
    const { signal, destinationPath, onProgress } = options;
    this.downloads.push(source.url);
    this.beforeStart();
    this.signals.push(signal);
    signal.throwIfAborted();
    const partial = join(dirname(destinationPath), `${PARTIAL_FILE_PREFIX}fake-${this.#partialNumber++}`);
    const half = Math.floor(content.length / 2);
    writeFileSync(partial, content.subarray(0, half));
    onProgress?.({ bytesDone: half, bytesTotal: content.length });
    try {
      if (this.hold) {
        await new Promise<void>((resolve, reject) => {
          this.#gates.push(resolve);
          signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        });
      }
      signal.throwIfAborted();
      writeFileSync(partial, content);
      onProgress?.({ bytesDone: content.length, bytesTotal: content.length });
      this.beforeFinish();
      await rename(partial, destinationPath);
    } catch (error) {
      // As the real one, which first waits for its writes to settle: cleanup takes a while.
      await new Promise((resolve) => setImmediate(resolve));
      rmSync(partial, { force: true });
      throw error;
    }
    return { path: destinationPath, sizeBytes: content.length, sha256: sha256(content), connections: 1 };
  }

  /** Lets every held download finish. */
  finishHeld(): void {
    for (const open of this.#gates.splice(0)) open();
  }

  /** How many downloads wait in `hold`. */
  get held(): number {
    return this.#gates.length;
  }

  #object(url: string): StoredObject {
    const object = this.#objects.get(url);
    if (!object) throw new Error(`no fake object at ${url}`);
    return object;
  }
}
