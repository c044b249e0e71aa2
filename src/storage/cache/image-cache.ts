// The node-local image cache: verified images reused across jobs, bounded in size and age.
//
// Content-addressed: a file is named by its content's sha256 (`<sha256>.img`), and the index
// in the node's database maps each source URL to the content it was last verified to hold.
// A lookup knows only the URL (and maybe an expected checksum) before downloading, so the URL
// is the key to ask with; the content is the key to store by, because
// - two URLs with the same bytes (a copy in another bucket, an alias) share one file, and a
//   source whose expected sha256 names content already here is a hit without any download;
// - a new version of a URL lands in a new file, so a job still converting the old version keeps
//   reading intact bytes while the next job downloads the new one.
//
// - A lookup is a hit only if the source still matches: the same size, and the checksum the job
//   expects (spec checksum, or the bucket's `.sha256` object) is the one the entry was verified
//   against (or, for sha256, the content's own digest). A stale or expired entry is dropped and
//   downloaded again.
// - Jobs that want the same image share one download, with progress for each; it is aborted
//   only when every job waiting for it has aborted.
// - Size (maxBytes) and age (maxAgeMs since the entry was verified) are bounded. Before a
//   download, least-recently-used files are evicted until the new image fits (the download
//   waits for their unlink only if the disk lacks the room it frees). A file in use is
//   never evicted: acquire returns a lease, and the lease is released after conversion. Leases
//   live in memory only, since a crash ends every use.
// - open() reconciles the folder with the index after a crash: partial files, files the index
//   does not know and rows whose file is missing or damaged are removed.
//
// The index is read and written synchronously (node:sqlite), so each decision (lookup, choose
// victims, commit and lease) is atomic with respect to other jobs without any lock.
import { randomBytes } from 'node:crypto';
import { renameSync, statSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PipelineError } from '../../pipeline/types.ts';
import { redactUrlText } from '../../telemetry/logger.ts';
import { type Clock, systemClock } from '../../util/clock.ts';
import { fsyncFolder } from '../../util/fs.ts';
import type {
  Downloader,
  DownloadMirror,
  DownloadOptions,
  DownloadResult,
  DownloadSource,
  ExpectedChecksum,
  PartialFile,
  SourceStat,
} from '../download/index.ts';
import { DownloadReason, freeSpace, isPartialFile, PARTIAL_FILE_PREFIX } from '../download/index.ts';
import { errorCode } from '../download/source.ts';
import type { StateDatabase } from '../state/database.ts';
import type { RateRecorder } from '../state/stage-rates.ts';
import { type BlobRow, CacheIndex, type EntryRow } from './cache-index.ts';

export const CacheReason = {
  /** evict() of an entry a running job is reading. Retried: the job ends. */
  CachedImageInUse: 'CachedImageInUse',
} as const;

export interface ImageCacheOptions {
  /** The cache folder; it holds only `<sha256>.img` files and the downloader's partial files. */
  dir: string;
  /** The node's database (StateDatabase.open), shared with the stage-rate store. */
  database: StateDatabase;
  downloader: Downloader;
  /** The sum of the cached files' sizes never exceeds this. Default: unbounded. */
  maxBytes?: number;
  /** An entry this long after it was downloaded and verified is expired. Default: never. */
  maxAgeMs?: number;
  /** The rate of each download is recorded here (stage `download`). */
  rates?: RateRecorder;
  /** How much room the cache folder's disk has; by default statfs (download's freeSpace). */
  freeSpace?: typeof freeSpace;
  /** Warnings about files that could not be removed or synced in the background. */
  logger?: { warn(fields: object, message: string): void };
  clock?: Clock;
}

/** A cached image held for one job: it is not evicted until `release()`. */
export interface CacheLease {
  readonly path: string;
  readonly sizeBytes: number;
  /** Of the content. */
  readonly sha256: string;
  /** Whether the image was already cached (no download). */
  readonly hit: boolean;
  /** Ends the use; idempotent. */
  release(): void;
}

/** One entry as the CachedImage kind shows it. */
export interface CachedImageInfo {
  url: string;
  sizeBytes: number;
  sha256: string;
  /** `algorithm:hex` the content was verified against, if the source had a checksum. */
  verifiedChecksum?: string;
  cachedAt: Date;
  lastUsed: Date;
  inUse: boolean;
}

export type RemovalReason = 'missingFile' | 'wrongFileSize' | 'expired' | 'overSizeLimit';

export interface OpenReport {
  /** File names removed from the cache folder. */
  removedFiles: string[];
  /** Index entries dropped, and why. */
  removedEntries: { url: string; reason: RemovalReason }[];
}

type ProgressListener = (bytesDone: number, bytesTotal: number) => void;

interface Waiter {
  onProgress: ProgressListener | undefined;
  resolve(lease: CacheLease): void;
  reject(error: unknown): void;
}

interface SharedDownload {
  key: string;
  controller: AbortController;
  waiters: Set<Waiter>;
  /** Space held for the download until it is committed or fails. */
  reservedBytes: number;
  /** Resolves once the download is committed, or failed and its files are gone. */
  settled: Promise<void>;
}

const BLOB_FILE = /^[0-9a-f]{64}\.img$/;

export class ImageCache {
  readonly #dir: string;
  readonly #index: CacheIndex;
  readonly #downloader: Downloader;
  readonly #maxBytes: number;
  readonly #maxAgeMs: number;
  readonly #rates: RateRecorder | undefined;
  readonly #logger: ImageCacheOptions['logger'];
  readonly #freeSpace: typeof freeSpace;
  readonly #clock: Clock;
  /** Downloads that jobs can still join, by URL and expected content. */
  readonly #inflight = new Map<string, SharedDownload>();
  /** Downloads still writing, joinable or not: their reservations count against maxBytes. */
  readonly #downloading = new Set<SharedDownload>();
  /** Leases per blob sha256. */
  readonly #leases = new Map<string, number>();
  /** Downloads and file removals still running, for close(). */
  readonly #background = new Set<Promise<void>>();

  constructor(options: ImageCacheOptions) {
    const maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    const maxAgeMs = options.maxAgeMs ?? Number.POSITIVE_INFINITY;
    if (!(maxBytes > 0)) throw new Error(`the cache's maxBytes must be positive, not ${maxBytes}`);
    if (!(maxAgeMs > 0)) throw new Error(`the cache's maxAgeMs must be positive, not ${maxAgeMs}`);
    this.#dir = options.dir;
    this.#index = new CacheIndex(options.database);
    this.#downloader = options.downloader;
    this.#maxBytes = maxBytes;
    this.#maxAgeMs = maxAgeMs;
    this.#rates = options.rates;
    this.#logger = options.logger;
    this.#freeSpace = options.freeSpace ?? freeSpace;
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * Creates the folder and reconciles it with the index: call once at start-up, before any
   * acquire. Removes partial files and unindexed `<sha256>.img` files, drops entries whose file
   * is missing or has the wrong size, expired entries, and the least recently used entries
   * while the cache is over maxBytes (the limit may have been lowered).
   */
  async open(): Promise<OpenReport> {
    await mkdir(this.#dir, { recursive: true });
    const removedEntries: OpenReport['removedEntries'] = [];
    const drop = (sha256: string, reason: RemovalReason) => {
      for (const url of this.#index.deleteBlob(sha256)) removedEntries.push({ url, reason });
    };
    for (const blob of this.#index.blobsByLastUse()) {
      const size = this.#fileSize(blob.sha256);
      if (size !== blob.sizeBytes) drop(blob.sha256, size === undefined ? 'missingFile' : 'wrongFileSize');
    }
    for (const entry of this.#expiredEntries()) {
      this.#index.deleteEntry(entry.url);
      removedEntries.push({ url: entry.url, reason: 'expired' });
    }
    for (const sha256 of this.#index.unreferencedBlobs()) this.#index.deleteBlob(sha256);
    for (const blob of this.#victims(0) ?? []) drop(blob.sha256, 'overSizeLimit');

    // Every file the index no longer names is garbage; anything else in the folder is left alone.
    const indexed = new Set(this.#index.blobsByLastUse().map((blob) => blobFileName(blob.sha256)));
    const removedFiles: string[] = [];
    for (const file of await readdir(this.#dir, { withFileTypes: true })) {
      const garbage = isPartialFile(file.name) || (BLOB_FILE.test(file.name) && !indexed.has(file.name));
      if (!file.isFile() || !garbage) continue;
      await rm(join(this.#dir, file.name), { force: true });
      removedFiles.push(file.name);
    }
    return { removedFiles, removedEntries };
  }

  /**
   * A verified local copy of the source, downloaded on a miss, held until the lease is
   * released. `stat` is the source's current size and expected checksum (Downloader.stat).
   * Rejects with `signal.reason` when aborted; the shared download stops when no job waits.
   * `mirror` and `onWritten` get the bytes and the partial file only if this call starts the
   * download (not on a hit, nor when it joins another job's download). On a miss,
   * `onDownload` says at once, before any progress, whether the download is this call's own
   * or one it joined.
   */
  async acquire(
    source: DownloadSource,
    stat: SourceStat,
    options: {
      signal: AbortSignal;
      onProgress?: ProgressListener;
      mirror?: DownloadMirror;
      onWritten?: (partial: PartialFile) => void;
      onDownload?: (own: boolean) => void;
    },
  ): Promise<CacheLease> {
    options.signal.throwIfAborted();
    this.#sweepExpired();
    const cached = this.#lookup(source.url, stat);
    if (cached) return cached;
    const key = downloadKey(source.url, stat);
    const inflight = this.#inflight.get(key);
    const shared = inflight ?? this.#startDownload(key, source, stat, options);
    options.onDownload?.(inflight === undefined);
    return this.#join(shared, options.signal, options.onProgress);
  }

  /**
   * Caches the source (the CachedImage kind's pre-warm): acquire and release at once.
   * `onDownload` as for acquire.
   */
  async prewarm(
    source: DownloadSource,
    stat: SourceStat,
    signal: AbortSignal,
    onDownload?: (own: boolean) => void,
  ): Promise<{ sizeBytes: number; sha256: string; hit: boolean; lastUsed: Date }> {
    const lease = await this.acquire(source, stat, { signal, ...(onDownload ? { onDownload } : {}) });
    lease.release();
    const { sizeBytes, sha256, hit } = lease;
    return { sizeBytes, sha256, hit, lastUsed: new Date(this.#clock.now()) };
  }

  /** Every entry, most recently used first. */
  list(): CachedImageInfo[] {
    return this.#index.entries().map((entry) => ({
      url: entry.url,
      sizeBytes: entry.sizeBytes,
      sha256: entry.sha256,
      ...(entry.verifiedChecksum ? { verifiedChecksum: entry.verifiedChecksum } : {}),
      cachedAt: new Date(entry.createdAt),
      lastUsed: new Date(entry.lastUsedAt),
      inUse: this.#leases.has(entry.sha256),
    }));
  }

  /**
   * Removes the entry for `url` (and its file, unless another URL has the same content).
   * Returns false if there is none; throws CachedImageInUse while a job uses it.
   */
  async evict(url: string): Promise<boolean> {
    const entry = this.#index.entry(url);
    if (!entry) return false;
    const uses = this.#leases.get(entry.sha256);
    if (uses !== undefined)
      throw new PipelineError(
        CacheReason.CachedImageInUse,
        `the cached image of ${redactUrlText(url)} is in use by ${uses} running job(s); it can be evicted when they finish`,
        { terminal: false },
      );
    this.#index.deleteEntry(url);
    await this.#dropIfUnused(entry.sha256);
    return true;
  }

  /** Aborts the downloads in progress and waits until they and file removals have finished. */
  async close(): Promise<void> {
    for (const shared of this.#downloading) shared.controller.abort(new Error('the image cache is closing'));
    while (this.#background.size > 0) await Promise.all(this.#background);
  }

  #lookup(url: string, stat: SourceStat): CacheLease | undefined {
    const entry = this.#index.entry(url);
    if (entry) {
      const current = matches(entry, stat) && !this.#isExpired(entry);
      if (current && this.#fileSize(entry.sha256) === entry.sizeBytes)
        return this.#lease(url, entry.sha256, entry.sizeBytes, true);
      this.#index.deleteEntry(url);
      this.#track(this.#dropIfUnused(entry.sha256));
    }
    // The source says which content it holds, and that content is already here.
    const expected = stat.expectedChecksum;
    const blob = expected?.algorithm === 'sha256' ? this.#index.blob(expected.hex) : undefined;
    if (expected && blob?.sizeBytes === stat.sizeBytes && this.#fileSize(blob.sha256) === blob.sizeBytes) {
      this.#index.record(
        { url, sha256: blob.sha256, sizeBytes: blob.sizeBytes, verifiedChecksum: checksumText(expected) },
        this.#clock.now(),
      );
      return this.#lease(url, blob.sha256, blob.sizeBytes, true);
    }
    return undefined;
  }

  #startDownload(
    key: string,
    source: DownloadSource,
    stat: SourceStat,
    followers: Pick<DownloadOptions, 'mirror' | 'onWritten'>,
  ): SharedDownload {
    const room = this.#makeRoom(stat.sizeBytes, stat.description);
    const shared: SharedDownload = {
      key,
      controller: new AbortController(),
      waiters: new Set(),
      reservedBytes: stat.sizeBytes,
      settled: Promise.resolve(),
    };
    this.#inflight.set(key, shared);
    this.#downloading.add(shared);
    shared.settled = this.#download(shared, source, stat, room, followers);
    this.#track(shared.settled);
    return shared;
  }

  /** Settles every waiter; never rejects. */
  async #download(
    shared: SharedDownload,
    source: DownloadSource,
    stat: SourceStat,
    room: Promise<void>,
    { mirror, onWritten }: Pick<DownloadOptions, 'mirror' | 'onWritten'>,
  ) {
    // A partial-file name: if the process dies before the commit, open() removes it.
    const incoming = join(this.#dir, `${PARTIAL_FILE_PREFIX}incoming-${randomBytes(8).toString('hex')}`);
    try {
      // Unlinking the evicted files takes long (on ext4 about 0.4 s per GiB they held): the
      // download waits for it only when the disk lacks the room they free.
      const { free, needed } = await this.#freeSpace(this.#dir, stat.sizeBytes);
      if (free < needed) await room;
      const startedAt = this.#clock.now();
      const result = await this.#downloader.download(source, {
        destinationPath: incoming,
        signal: shared.controller.signal,
        onProgress: ({ bytesDone, bytesTotal }) => {
          for (const waiter of shared.waiters) waiter.onProgress?.(bytesDone, bytesTotal);
        },
        ...(mirror ? { mirror } : {}),
        ...(onWritten ? { onWritten } : {}),
        stat,
      });
      this.#rates?.record('download', result.sizeBytes, (this.#clock.now() - startedAt) / 1000);
      // From here to the last resolve nothing awaits: no eviction can come between the commit
      // and the leases.
      this.#commit(source.url, stat, result, incoming);
      this.#endDownload(shared);
      for (const waiter of shared.waiters)
        waiter.resolve(this.#lease(source.url, result.sha256, result.sizeBytes, false));
    } catch (error) {
      this.#endDownload(shared);
      await rm(incoming, { force: true });
      for (const waiter of shared.waiters) waiter.reject(error);
    }
    shared.waiters.clear();
  }

  #endDownload(shared: SharedDownload): void {
    this.#downloading.delete(shared);
    if (this.#inflight.get(shared.key) === shared) this.#inflight.delete(shared.key);
  }

  /** Moves the verified file into place (or drops it if that content is here) and indexes it. */
  #commit(url: string, stat: SourceStat, result: DownloadResult, incoming: string): void {
    const { sha256, sizeBytes } = result;
    if (this.#index.blob(sha256) && this.#fileSize(sha256) === sizeBytes) {
      this.#track(rm(incoming, { force: true }));
    } else {
      renameSync(incoming, this.#blobPath(sha256));
      // Until synced, a power loss may lose the rename; open() then drops the entry.
      this.#track(fsyncFolder(this.#dir));
    }
    const previous = this.#index.entry(url);
    const expected = stat.expectedChecksum;
    // The downloader verified against the checksum it read itself; a sha256 that differs from
    // the one `stat` saw means the source changed between the two, so it is not recorded.
    const verified = expected && (expected.algorithm !== 'sha256' || expected.hex === sha256);
    this.#index.record(
      { url, sha256, sizeBytes, ...(verified ? { verifiedChecksum: checksumText(expected) } : {}) },
      this.#clock.now(),
    );
    if (previous && previous.sha256 !== sha256) this.#track(this.#dropIfUnused(previous.sha256));
  }

  #join(shared: SharedDownload, signal: AbortSignal, onProgress?: ProgressListener): Promise<CacheLease> {
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        shared.waiters.delete(waiter);
        if (shared.waiters.size > 0) return reject(signal.reason);
        // Nobody wants the image any more: stop the transfer. The last job to leave returns
        // once the partial file is gone, so a cancelled job leaves nothing behind it.
        if (this.#inflight.get(shared.key) === shared) this.#inflight.delete(shared.key);
        shared.controller.abort(signal.reason);
        void shared.settled.then(() => reject(signal.reason));
      };
      const waiter: Waiter = {
        onProgress,
        resolve: (lease) => {
          signal.removeEventListener('abort', onAbort);
          resolve(lease);
        },
        reject: (error) => {
          signal.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      shared.waiters.add(waiter);
    });
  }

  #lease(url: string, sha256: string, sizeBytes: number, hit: boolean): CacheLease {
    this.#index.touch(url, sha256, this.#clock.now());
    this.#leases.set(sha256, (this.#leases.get(sha256) ?? 0) + 1);
    let released = false;
    return {
      path: this.#blobPath(sha256),
      sizeBytes,
      sha256,
      hit,
      release: () => {
        if (released) return;
        released = true;
        const uses = (this.#leases.get(sha256) ?? 1) - 1;
        if (uses > 0) this.#leases.set(sha256, uses);
        else this.#leases.delete(sha256);
        this.#index.touch(url, sha256, this.#clock.now());
        this.#track(this.#dropIfUnused(sha256));
      },
    };
  }

  /**
   * Evicts least-recently-used files not in use until `sizeBytes` more fits; throws if it
   * cannot. They leave the index at once; the promise resolves when they are gone from the
   * disk, and never rejects (a file that could not be removed is logged, and open() retries).
   */
  #makeRoom(sizeBytes: number, description: string): Promise<void> {
    if (sizeBytes > this.#maxBytes)
      throw new PipelineError(
        DownloadReason.InsufficientCacheSpace,
        `${description} is ${sizeBytes} bytes, more than the whole image cache may hold (${this.#maxBytes} bytes); raise the cache size limit`,
        { terminal: false },
      );
    const victims = this.#victims(sizeBytes);
    if (!victims)
      throw new PipelineError(
        DownloadReason.InsufficientCacheSpace,
        `${description} needs ${sizeBytes} bytes in the image cache, but images in use by running jobs and downloads in progress hold ${this.#heldBytes()} of its ${this.#maxBytes} bytes; it is retried`,
        { terminal: false },
      );
    return this.#track(Promise.all(victims.map((blob) => this.#removeBlob(blob.sha256))).then(() => {}));
  }

  /** The least recently used blobs not in use whose removal lets `sizeBytes` more fit; undefined if none do. */
  #victims(sizeBytes: number): BlobRow[] | undefined {
    const reserved = [...this.#downloading].reduce((sum, shared) => sum + shared.reservedBytes, 0);
    let used = this.#index.totalBytes() + reserved;
    const victims: BlobRow[] = [];
    for (const blob of this.#index.blobsByLastUse()) {
      if (used + sizeBytes <= this.#maxBytes) break;
      if (this.#leases.has(blob.sha256)) continue;
      victims.push(blob);
      used -= blob.sizeBytes;
    }
    return used + sizeBytes <= this.#maxBytes ? victims : undefined;
  }

  /** Bytes that cannot be evicted now: files in use and downloads in progress. */
  #heldBytes(): number {
    const leased = this.#index
      .blobsByLastUse()
      .filter((blob) => this.#leases.has(blob.sha256))
      .reduce((sum, blob) => sum + blob.sizeBytes, 0);
    return [...this.#downloading].reduce((sum, shared) => sum + shared.reservedBytes, leased);
  }

  #sweepExpired(): void {
    for (const entry of this.#expiredEntries()) {
      if (this.#leases.has(entry.sha256)) continue;
      this.#index.deleteEntry(entry.url);
      this.#track(this.#dropIfUnused(entry.sha256));
    }
  }

  #expiredEntries(): EntryRow[] {
    if (this.#maxAgeMs === Number.POSITIVE_INFINITY) return [];
    return this.#index.createdBefore(this.#clock.now() - this.#maxAgeMs);
  }

  #isExpired(entry: EntryRow): boolean {
    return entry.createdAt < this.#clock.now() - this.#maxAgeMs;
  }

  /** Removes the blob if no entry points at it and no job uses it. */
  async #dropIfUnused(sha256: string): Promise<void> {
    if (this.#leases.has(sha256) || this.#index.isReferenced(sha256)) return;
    await this.#removeBlob(sha256);
  }

  /** Async so that errors reject; everything up to the unlink happens synchronously, at the call. */
  async #removeBlob(sha256: string): Promise<void> {
    this.#index.deleteBlob(sha256);
    // Renamed away at once, so that the same content committed again before the unlink ends
    // is not deleted with it; a crash leaves a partial file, which open() removes.
    const doomed = join(this.#dir, `${PARTIAL_FILE_PREFIX}evicted-${randomBytes(8).toString('hex')}`);
    try {
      renameSync(this.#blobPath(sha256), doomed);
    } catch (error) {
      if (errorCode(error) === 'ENOENT') return;
      throw error;
    }
    await rm(doomed, { force: true });
  }

  /**
   * Keeps a promise for close(); a failure is only logged, since open() cleans up after it.
   * Returns it settled, never rejecting.
   */
  #track(work: Promise<void>): Promise<void> {
    const settled = work.then(
      () => {},
      (error: unknown) =>
        this.#logger?.warn({ err: error, dir: this.#dir }, 'image cache background work failed'),
    );
    this.#background.add(settled);
    void settled.finally(() => this.#background.delete(settled));
    return settled;
  }

  #fileSize(sha256: string): number | undefined {
    return statSync(this.#blobPath(sha256), { throwIfNoEntry: false })?.size;
  }

  #blobPath(sha256: string): string {
    return join(this.#dir, blobFileName(sha256));
  }
}

function blobFileName(sha256: string): string {
  return `${sha256}.img`;
}

function checksumText(checksum: ExpectedChecksum): string {
  return `${checksum.algorithm}:${checksum.hex}`;
}

/** Jobs share a download only if they expect the same content. */
function downloadKey(url: string, stat: SourceStat): string {
  const expected = stat.expectedChecksum;
  return [url, stat.sizeBytes, expected ? checksumText(expected) : ''].join('\n');
}

/** Whether the entry still holds what the source holds now. */
function matches(entry: EntryRow, stat: SourceStat): boolean {
  const expected = stat.expectedChecksum;
  if (entry.sizeBytes !== stat.sizeBytes) return false;
  if (!expected) return true;
  return (
    entry.verifiedChecksum === checksumText(expected) ||
    (expected.algorithm === 'sha256' && entry.sha256 === expected.hex)
  );
}
