// The node-local image cache: one verified file per source URL, reused across jobs.
// - An entry is keyed by sha256(URL) and stored with a small JSON record of what was
//   verified (size, sha256, the checksum it matched). A record is written only after the
//   image is complete and verified, and renamed into place, so a crash leaves no entry that
//   looks valid.
// - A lookup is a hit only if the source still matches: same size, and the checksum the job
//   expects (spec checksum, or the bucket's `.sha256` object) equals the recorded one; a stale
//   entry is evicted and downloaded again.
// - Two jobs that want the same image share one download; it is aborted only when every job
//   waiting for it has aborted.
// Size/age limits with LRU eviction and a SQLite index are tracked in issue 4.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Downloader, DownloadSource, SourceStat } from '../download/index.ts';
import { isPartialFile } from '../download/index.ts';

export interface CacheEntry {
  path: string;
  sizeBytes: number;
  sha256: string;
  hit: boolean;
}

interface EntryRecord {
  url: string;
  sizeBytes: number;
  sha256: string;
  /** `algorithm:hex` the download was verified against, if any. */
  verifiedChecksum?: string;
  cachedAt: string;
}

type ProgressListener = (bytesDone: number, bytesTotal: number) => void;

interface SharedDownload {
  promise: Promise<CacheEntry>;
  controller: AbortController;
  waiters: number;
  /** Every job waiting for the download sees its progress. */
  listeners: Set<ProgressListener>;
}

const cacheKey = (url: string): string => createHash('sha256').update(url).digest('hex');

export class ImageCache {
  readonly #dir: string;
  readonly #downloader: Downloader;
  readonly #inflight = new Map<string, SharedDownload>();

  constructor(dir: string, downloader: Downloader) {
    this.#dir = dir;
    this.#downloader = downloader;
  }

  /** Creates the folder and removes what a crash left: partial downloads and unrecorded files. */
  async open(): Promise<{ removed: string[] }> {
    await mkdir(this.#dir, { recursive: true });
    const names = await readdir(this.#dir);
    const removed: string[] = [];
    for (const name of names) {
      const recordless = name.endsWith('.img') && !names.includes(name.replace(/\.img$/, '.json'));
      if (isPartialFile(name) || name.endsWith('.json.tmp') || recordless) {
        await rm(join(this.#dir, name), { force: true });
        removed.push(name);
      }
    }
    return { removed };
  }

  /**
   * Returns a verified local copy of the source, downloading it on a miss.
   * `stat` is the source's current size and expected checksum (Downloader.stat).
   */
  async acquire(
    source: DownloadSource,
    stat: SourceStat,
    options: { signal: AbortSignal; onProgress: ProgressListener },
  ): Promise<CacheEntry> {
    const key = cacheKey(source.url);
    const hit = await this.#lookup(key, stat);
    if (hit) return hit;
    let shared = this.#inflight.get(key);
    if (!shared) {
      const controller = new AbortController();
      const listeners = new Set<ProgressListener>();
      const created: SharedDownload = {
        controller,
        waiters: 0,
        listeners,
        promise: this.#download(key, source, stat, controller.signal, (done, total) => {
          for (const listener of listeners) listener(done, total);
        }).finally(() => this.#inflight.delete(key)),
      };
      this.#inflight.set(key, created);
      shared = created;
    }
    return this.#wait(shared, options.signal, options.onProgress);
  }

  async #wait(
    shared: SharedDownload,
    signal: AbortSignal,
    onProgress: ProgressListener,
  ): Promise<CacheEntry> {
    signal.throwIfAborted();
    shared.waiters += 1;
    shared.listeners.add(onProgress);
    let onAbort = () => {};
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => {
        shared.waiters -= 1;
        if (shared.waiters === 0) shared.controller.abort(signal.reason);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([shared.promise, aborted]);
    } finally {
      signal.removeEventListener('abort', onAbort);
      shared.listeners.delete(onProgress);
      if (!signal.aborted) shared.waiters -= 1;
    }
  }

  async #lookup(key: string, stat: SourceStat): Promise<CacheEntry | undefined> {
    let record: EntryRecord;
    try {
      record = JSON.parse(await readFile(this.#recordPath(key), 'utf8')) as EntryRecord;
    } catch {
      return undefined;
    }
    const expected = stat.expectedChecksum;
    const matches =
      record.sizeBytes === stat.sizeBytes &&
      (!expected ||
        record.verifiedChecksum === `${expected.algorithm}:${expected.hex}` ||
        (expected.algorithm === 'sha256' && record.sha256 === expected.hex));
    if (!matches) {
      await this.#evict(key);
      return undefined;
    }
    return { path: this.#imagePath(key), sizeBytes: record.sizeBytes, sha256: record.sha256, hit: true };
  }

  async #download(
    key: string,
    source: DownloadSource,
    stat: SourceStat,
    signal: AbortSignal,
    onProgress: ProgressListener,
  ): Promise<CacheEntry> {
    const result = await this.#downloader.download(source, {
      destinationPath: this.#imagePath(key),
      signal,
      onProgress: ({ bytesDone, bytesTotal }) => onProgress(bytesDone, bytesTotal),
    });
    const expected = stat.expectedChecksum;
    const record: EntryRecord = {
      url: source.url,
      sizeBytes: result.sizeBytes,
      sha256: result.sha256,
      ...(expected ? { verifiedChecksum: `${expected.algorithm}:${expected.hex}` } : {}),
      cachedAt: new Date().toISOString(),
    };
    const temporary = `${this.#recordPath(key)}.${randomBytes(4).toString('hex')}.json.tmp`;
    await writeFile(temporary, JSON.stringify(record));
    await rename(temporary, this.#recordPath(key));
    return { path: result.path, sizeBytes: result.sizeBytes, sha256: result.sha256, hit: false };
  }

  async #evict(key: string): Promise<void> {
    await rm(this.#recordPath(key), { force: true });
    await rm(this.#imagePath(key), { force: true });
  }

  #imagePath(key: string): string {
    return join(this.#dir, `${key}.img`);
  }

  #recordPath(key: string): string {
    return join(this.#dir, `${key}.json`);
  }
}
