// Downloads one image into a folder: stat, space check, a streamed and hashed transfer into a
// partial file that resumes after faults, verification, then an atomic rename into place.
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, rm, statfs } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { addAbortSignal, type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SourceCredentials } from '../../pipeline/types.ts';
import { PipelineError } from '../../pipeline/types.ts';
import { type BackoffPolicy, backoffDelay } from '../../util/backoff.ts';
import { fsyncFolder } from '../../util/fs.ts';
import { BoundedWriter } from './bounded-writer.ts';
import { type ExpectedChecksum, parseChecksum, StreamingDigests } from './checksum.ts';
import { HttpSource } from './httpSource.ts';
import { ddPageCache, type PageCache } from './pageCache.ts';
import { type FetchRange, parallelRanges, StarvationProbe } from './parallel-ranges.ts';
import { DownloadReason } from './reasons.ts';
import { S3Source } from './s3Source.ts';
import {
  errorCode,
  type ObjectBody,
  type ObjectInfo,
  type ObjectSource,
  RangesNotSupported,
} from './source.ts';
import { parseS3Endpoint, parseSourceUrl, type S3Endpoint } from './url.ts';

/** Backoff between transfer retries, and how many faults in a row without progress end it. */
export interface RetryPolicy extends BackoffPolicy {
  maxRetries: number;
}

/** Temporary files start with this; anything so named in the cache after a crash is garbage. */
export const PARTIAL_FILE_PREFIX = '.partial-';
/** How much a download writes between flushes and page cache evictions. */
export const DEFAULT_SYNC_INTERVAL_BYTES = 64 * 1024 * 1024;
/**
 * Received batches (up to 1 MiB from httpGet, less on a slow link) are buffered up to this
 * much and written with one positioned writev while the next ones arrive: with undici's
 * 64 KiB chunks, one write per chunk, awaited in turn, made our download about 1.6 times
 * slower (bench/).
 */
const WRITE_BATCH_BYTES = 4 * 1024 * 1024;
/**
 * Range requests in flight at once for one download, and the bytes each asks for. One
 * connection to S3 gets about 50-100 MB/s; four get up to four times that. The chunks that
 * arrive ahead of the one being hashed wait in memory: at most connections × chunk bytes,
 * 16 MiB. Behind the bench's paced link, 4 × 4 MiB was as fast as 4 × 8 MiB and 3 × 8 MiB,
 * with the smallest peak RSS (bench/).
 */
const DEFAULT_CONNECTIONS = 4;
const DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024;
/** What a download reads over one request before it decides whether more would help. */
const DEFAULT_PROBE_BYTES = 16 * 1024 * 1024;
/** The old service's margin: the image plus 5 % must fit before a download starts. */
export const FREE_SPACE_FACTOR = 1.05;

export interface DownloaderConfig {
  /** The endpoint `s3://bucket/key` URLs refer to, e.g. `https://minio.storage:9000`. */
  s3Endpoint?: { url: string; region?: string };
  retry?: Partial<RetryPolicy>;
  /** A transfer that receives no byte for this long is cut and resumed. Default 60 s. */
  stallTimeoutMs?: number;
  /** The progress callback runs at most this often (plus at start and end). Default 1 s. */
  progressIntervalMs?: number;
  /** fsync (and page cache eviction) after every this many bytes. Default 64 MiB. */
  syncIntervalBytes?: number;
  /** Default: GNU dd; see pageCache.ts. */
  pageCache?: PageCache;
  /** Range requests in flight at once; 1 reads each object in one request. Default 4. */
  connections?: number;
  /** The bytes one range request asks for. Default 4 MiB. */
  chunkBytes?: number;
  /** What a download reads over one request before it decides on more. Default 16 MiB. */
  probeBytes?: number;
}

export interface DownloadSource {
  /** `s3://bucket/key` or `http(s)://...`; see parseSourceUrl. */
  url: string;
  credentials?: SourceCredentials;
  /** `sha256:<hex>` or `sha512:<hex>`; wins over a `<key>.sha256` object. */
  checksum?: string;
}

export interface DownloadProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface DownloadOptions {
  /** The final file; its folder holds the partial file too, so the rename is atomic. */
  destinationPath: string;
  /** Aborting rejects with `signal.reason` promptly and removes the partial file. */
  signal: AbortSignal;
  /** Called synchronously from the transfer; it must not throw. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Gets every batch of received bytes too, at the same offset (see DownloadMirror). */
  mirror?: DownloadMirror;
  /**
   * Told after each batch is written into the partial file (not yet flushed), and with 0 when
   * the download starts over, before the file is emptied; it must not throw. Bytes [0, bytes) of `path` may be read from
   * then on, until the download settles; the file may end early where zeros were skipped.
   */
  onWritten?: (partial: PartialFile) => void;
  /**
   * What `stat` returned for this source. The download then asks the server nothing more
   * before the transfer, and an object that changed since fails with SourceChanged, so the
   * caller never files new content under the old stat.
   */
  stat?: SourceStat;
}

/**
 * A second destination for the bytes as they arrive: a raw image is written into its target
 * during the download instead of after it. Batches come in offset order from 0, and from 0
 * again if the server ignores a Range request. It must not reject: a mirror that cannot keep
 * up gives up on its own and the job falls back to converting from the cache.
 */
export interface DownloadMirror {
  write(chunks: readonly Buffer[], position: number): Promise<void>;
}

/** The file a download writes before it is verified and renamed into place. */
export interface PartialFile {
  path: string;
  /** Written from offset 0. */
  bytes: number;
}

export interface DownloadResult {
  path: string;
  sizeBytes: number;
  /** Of the content, whatever checksum was verified. */
  sha256: string;
  /** The most requests it kept in flight at once: 1, or up to `connections` over ranges. */
  connections: number;
}

export interface SourceStat {
  /** The source as messages name it, without secrets. */
  description: string;
  sizeBytes: number;
  /** The object's ETag or Last-Modified, when the server gives one. */
  version?: string;
  /** What the download will verify: the spec's checksum, else the `.sha256` object, else none. */
  expectedChecksum?: ExpectedChecksum;
}

export interface Downloader {
  stat(source: DownloadSource, signal: AbortSignal): Promise<SourceStat>;
  download(source: DownloadSource, options: DownloadOptions): Promise<DownloadResult>;
}

interface Settings {
  s3Endpoint: S3Endpoint | undefined;
  retry: RetryPolicy;
  stallTimeoutMs: number;
  progressIntervalMs: number;
  syncIntervalBytes: number;
  pageCache: PageCache;
  connections: number;
  chunkBytes: number;
  probeBytes: number;
}

const DEFAULT_RETRY: RetryPolicy = { maxRetries: 5, baseMs: 1_000, maxMs: 30_000 };

export function isPartialFile(name: string): boolean {
  return basename(name).startsWith(PARTIAL_FILE_PREFIX);
}

/** Validates the configuration (a bad S3 endpoint throws here, at start-up). */
export function createDownloader(config: DownloaderConfig = {}): Downloader {
  const settings: Settings = {
    s3Endpoint: config.s3Endpoint && parseS3Endpoint(config.s3Endpoint.url, config.s3Endpoint.region),
    retry: { ...DEFAULT_RETRY, ...config.retry },
    stallTimeoutMs: config.stallTimeoutMs ?? 60_000,
    progressIntervalMs: config.progressIntervalMs ?? 1_000,
    syncIntervalBytes: config.syncIntervalBytes ?? DEFAULT_SYNC_INTERVAL_BYTES,
    pageCache: config.pageCache ?? ddPageCache(),
    connections: config.connections ?? DEFAULT_CONNECTIONS,
    chunkBytes: config.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    probeBytes: config.probeBytes ?? DEFAULT_PROBE_BYTES,
  };
  return {
    async stat(source, signal) {
      const { objectSource, info, expected } = await statSource(source, signal, settings);
      return {
        description: objectSource.description,
        sizeBytes: info.sizeBytes,
        ...(info.version !== undefined ? { version: info.version } : {}),
        ...(expected ? { expectedChecksum: expected } : {}),
      };
    },
    download: (source, options) => download(source, options, settings),
  };
}

function objectSourceFor(source: DownloadSource, s3Endpoint: S3Endpoint | undefined): ObjectSource {
  const { accessKeyId, secretKey, caBundle } = source.credentials ?? {};
  const location = parseSourceUrl(source.url, {
    ...(s3Endpoint ? { s3Endpoint } : {}),
    hasS3Credentials: accessKeyId !== undefined || secretKey !== undefined,
  });
  return location.kind === 's3'
    ? new S3Source(location, source.credentials)
    : new HttpSource(location.url, { caBundle });
}

async function statSource(source: DownloadSource, signal: AbortSignal, settings: Settings) {
  signal.throwIfAborted();
  const objectSource = objectSourceFor(source, settings.s3Endpoint);
  const specChecksum = source.checksum === undefined ? undefined : parseChecksum(source.checksum);
  const info = await withRetries(
    () => objectSource.stat({ signal, withSidecar: specChecksum === undefined }),
    () => 0,
    { ...settings, signal, description: objectSource.description },
  );
  return { objectSource, info, expected: specChecksum ?? info.sidecar };
}

/** The download's view of an earlier stat, as statSource would have returned it. */
function statted(source: DownloadSource, stat: SourceStat, settings: Settings) {
  const { sizeBytes, version, expectedChecksum } = stat;
  return {
    objectSource: objectSourceFor(source, settings.s3Endpoint),
    info: version === undefined ? { sizeBytes } : { sizeBytes, version },
    expected: expectedChecksum,
  };
}

async function download(
  source: DownloadSource,
  { destinationPath, signal, onProgress, mirror, onWritten, stat }: DownloadOptions,
  settings: Settings,
): Promise<DownloadResult> {
  const { objectSource, info, expected } = stat
    ? statted(source, stat, settings)
    : await statSource(source, signal, settings);
  const folder = dirname(destinationPath);
  await ensureFreeSpace(folder, info.sizeBytes, objectSource.description);

  const tempPath = join(folder, `${PARTIAL_FILE_PREFIX}${randomBytes(8).toString('hex')}`);
  const file = await onDisk(folder, () => open(tempPath, 'wx', 0o644));
  let closed = false;
  const transfer = new Transfer(objectSource, info, expected, file, tempPath, settings, {
    ...(onProgress ? { onProgress } : {}),
    ...(mirror ? { mirror } : {}),
    ...(onWritten ? { onWritten } : {}),
  });
  try {
    await withRetries(
      () => transfer.attempt(signal),
      () => transfer.bytesDone,
      { ...settings, signal, description: objectSource.description },
    );
    // An abort that arrives with the last bytes, or during the flush, still rejects: the job
    // has stopped, and nothing may be filed for it.
    signal.throwIfAborted();
    const { sha256 } = transfer.verify();
    await onDisk(folder, async () => {
      await transfer.complete();
      await file.close();
      closed = true;
    });
    signal.throwIfAborted();
    await onDisk(folder, async () => {
      await rename(tempPath, destinationPath);
      await fsyncFolder(folder);
    });
    return { path: destinationPath, sizeBytes: info.sizeBytes, sha256, connections: transfer.connections };
  } catch (error) {
    await transfer.idle();
    if (!closed) await file.close().catch(() => {});
    await rm(tempPath, { force: true });
    throw error;
  }
}

/** Ends the probing request: the transfer goes on over parallel ranges. */
class SwitchingToRanges extends Error {
  constructor() {
    super('switching to parallel range requests');
    this.name = 'SwitchingToRanges';
  }
}

class StallError extends Error {
  constructor(timeoutMs: number) {
    super(`no bytes received for ${timeoutMs} ms`);
    this.name = 'StallError';
  }
}

/**
 * Runs `operation` until it succeeds, retrying transient faults (not PipelineErrors) with
 * backoff. Only faults in a row that made no progress count against the limit, so a long
 * download over a flaky link still finishes.
 */
async function withRetries<T>(
  operation: () => Promise<T>,
  progress: () => number,
  context: { retry: RetryPolicy; signal: AbortSignal; description: string },
): Promise<T> {
  const { retry, signal, description } = context;
  let failures = 0;
  for (;;) {
    const before = progress();
    try {
      return await operation();
    } catch (error) {
      signal.throwIfAborted();
      if (error instanceof PipelineError) throw error;
      failures = progress() > before ? 1 : failures + 1;
      if (failures > retry.maxRetries) throw gaveUp(error, description, failures);
      await sleep(backoffDelay(failures, retry), undefined, { signal }).catch(() => signal.throwIfAborted());
    }
  }
}

function gaveUp(error: unknown, description: string, attempts: number): PipelineError {
  const detail = error instanceof Error ? error.message : String(error);
  const reason =
    error instanceof StallError ? DownloadReason.DownloadStalled : DownloadReason.SourceUnavailable;
  return new PipelineError(
    reason,
    `${description}: ${detail} (gave up after ${attempts} attempts in a row)`,
    {
      terminal: false,
      cause: error,
    },
  );
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** The bytes free in `folder`, and the bytes a download of `sizeBytes` needs there. */
export async function freeSpace(
  folder: string,
  sizeBytes: number,
): Promise<{ free: number; needed: number }> {
  const { bavail, bsize } = await onDisk(folder, () => statfs(folder));
  return { free: bavail * bsize, needed: Math.ceil(sizeBytes * FREE_SPACE_FACTOR) };
}

/**
 * Not terminal: the cache evicts old entries and operators free space, so a later retry can
 * succeed without any change to the object.
 */
async function ensureFreeSpace(folder: string, sizeBytes: number, description: string): Promise<void> {
  const { free, needed } = await freeSpace(folder, sizeBytes);
  if (free < needed)
    throw new PipelineError(
      DownloadReason.InsufficientCacheSpace,
      `${description} is ${formatBytes(sizeBytes)}; the download needs ${formatBytes(needed)} free in ${folder}, which has ${formatBytes(free)}`,
      { terminal: false },
    );
}

/**
 * Disk errors become PipelineErrors, so that the retry loop does not take them for network
 * faults: a full disk says so, anything else names the folder.
 */
async function onDisk<T>(folder: string, operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    const full = errorCode(error) === 'ENOSPC' || errorCode(error) === 'EDQUOT';
    throw new PipelineError(
      full ? DownloadReason.InsufficientCacheSpace : DownloadReason.CacheWriteFailed,
      `writing into ${folder} failed: ${detail}`,
      { terminal: false, cause: error },
    );
  }
}

/**
 * Frees received chunks now instead of at V8's next full GC. httpGet hands out each full batch
 * in an ArrayBuffer of its own, outside the JS heap, and the young-generation GCs, which see
 * little JS allocation during a download, rarely free them: with undici's 64 KiB chunks they
 * piled up until V8's limit on external memory forced a full GC, about six per 206 MiB, and
 * releasing them made a download about 10 % faster (bench/). Call it once the batch is
 * written and hashed: nothing reads a chunk after that. A view that shares its buffer with
 * others is left to the GC.
 */
function releaseChunks(chunks: readonly Buffer[]): void {
  for (const chunk of chunks) {
    const { buffer } = chunk;
    if (!(buffer instanceof ArrayBuffer) || chunk.byteOffset !== 0 || buffer.byteLength !== chunk.length)
      continue;
    try {
      buffer.transfer(0);
    } catch {
      // A buffer that cannot be detached is freed by the GC, as any other.
    }
  }
}

/** Calls back at most every `intervalMs`, and always for the first and the last byte. */
class ProgressThrottle {
  readonly #callback: ((progress: DownloadProgress) => void) | undefined;
  readonly #bytesTotal: number;
  readonly #intervalMs: number;
  #lastAt = Number.NEGATIVE_INFINITY;

  constructor(bytesTotal: number, intervalMs: number, callback?: (progress: DownloadProgress) => void) {
    this.#callback = callback;
    this.#bytesTotal = bytesTotal;
    this.#intervalMs = intervalMs;
  }

  report(bytesDone: number): void {
    if (!this.#callback) return;
    const now = performance.now();
    if (bytesDone !== this.#bytesTotal && now - this.#lastAt < this.#intervalMs) return;
    this.#lastAt = now;
    this.#callback({ bytesDone, bytesTotal: this.#bytesTotal });
  }
}

/** The state of one download that outlives its attempts: bytes on disk and the hash so far. */
class Transfer {
  bytesDone = 0;
  /** The most requests in flight at once so far. */
  connections = 1;
  readonly #source: ObjectSource;
  readonly #info: ObjectInfo;
  readonly #expected: ExpectedChecksum | undefined;
  readonly #file: FileHandle;
  readonly #writer: BoundedWriter;
  readonly #mirror: DownloadMirror | undefined;
  readonly #onWritten: ((partial: PartialFile) => void) | undefined;
  readonly #path: string;
  readonly #settings: Settings;
  readonly #progress: ProgressThrottle;
  #digests: StreamingDigests;
  /**
   * How the transfer reads: one request whose first `probeBytes` tell whether more connections
   * would help, then either on in it or over parallel ranges; one request for good once the
   * server turns out not to serve ranges.
   */
  #mode: 'probe' | 'single' | 'ranges';

  constructor(
    source: ObjectSource,
    info: ObjectInfo,
    expected: ExpectedChecksum | undefined,
    file: FileHandle,
    path: string,
    settings: Settings,
    options: Pick<DownloadOptions, 'onProgress' | 'mirror' | 'onWritten'>,
  ) {
    this.#source = source;
    this.#info = info;
    this.#expected = expected;
    this.#file = file;
    // The partial file is new: zeros become holes, and download() sets the size at the end.
    this.#writer = new BoundedWriter(file, path, { ...settings, skipZeroBlocks: true });
    this.#mirror = options.mirror;
    this.#onWritten = options.onWritten;
    this.#path = path;
    this.#settings = settings;
    this.#digests = new StreamingDigests(expected);
    this.#mode = settings.connections > 1 && info.sizeBytes > 2 * settings.probeBytes ? 'probe' : 'single';
    this.#progress = new ProgressThrottle(info.sizeBytes, settings.progressIntervalMs, options.onProgress);
    this.#progress.report(0);
  }

  /** Fetches from `bytesDone` to the end; throws when cut, stalled or aborted. */
  async attempt(signal: AbortSignal): Promise<void> {
    // Each mode change happens once at most, so this ends.
    for (;;) {
      try {
        return await this.#attempt(signal);
      } catch (error) {
        // What arrived before counts; the rest comes as the new mode reads it.
        if (error instanceof RangesNotSupported && this.#mode === 'ranges') this.#mode = 'single';
        else if (!(error instanceof SwitchingToRanges)) throw error;
      }
    }
  }

  async #attempt(userSignal: AbortSignal): Promise<void> {
    const { stallTimeoutMs } = this.#settings;
    const stall = new AbortController();
    const signal = AbortSignal.any([userSignal, stall.signal]);
    // The watchdog runs while waiting for the network, from the request until the last byte.
    const watchdog = setTimeout(() => stall.abort(new StallError(stallTimeoutMs)), stallTimeoutMs);
    // pipeline() settles as soon as the body fails, while a batch may still be on its way to
    // disk; the next attempt must not start until bytesDone counts it.
    let writing: Promise<void> = Promise.resolve();
    try {
      const probe = this.#mode === 'probe' ? new StarvationProbe(this.#settings.probeBytes) : undefined;
      const { body, offset } = await this.#open(signal);
      if (offset !== this.bytesDone) await this.#restart();
      addAbortSignal(signal, body);
      const sink = new Writable({
        highWaterMark: WRITE_BATCH_BYTES,
        writev: (chunks, callback) => {
          watchdog.refresh();
          probe?.arrived();
          const batch = chunks.map(({ chunk }) => chunk as Buffer);
          // #write frees the chunks' memory.
          const length = batch.reduce((sum, chunk) => sum + chunk.length, 0);
          writing = this.#write(batch);
          writing.then(() => {
            watchdog.refresh();
            if (probe) this.#decide(probe, length, body);
            callback();
          }, callback);
        },
      });
      await pipeline(body, sink);
    } catch (error) {
      if (stall.signal.aborted && !userSignal.aborted) throw stall.signal.reason;
      throw error;
    } finally {
      clearTimeout(watchdog);
      await writing.catch(() => {});
    }
    if (this.bytesDone < this.#info.sizeBytes)
      throw new Error(`connection closed after ${this.bytesDone} of ${this.#info.sizeBytes} bytes`);
  }

  /** Ends the probe once it knows; a starved download goes on over parallel ranges. */
  #decide(probe: StarvationProbe, length: number, body: Readable): void {
    if (this.#mode !== 'probe') return;
    probe.consumed(length);
    const starved = probe.starved();
    if (starved === undefined) return;
    this.#mode = starved ? 'ranges' : 'single';
    if (starved) body.destroy(new SwitchingToRanges());
  }

  /** The rest of the object: over parallel ranges once the probe found that they help. */
  async #open(signal: AbortSignal): Promise<ObjectBody> {
    const { connections, chunkBytes } = this.#settings;
    const { sizeBytes } = this.#info;
    if (this.#mode !== 'ranges' || sizeBytes - this.bytesDone <= chunkBytes)
      return this.#source.open(this.bytesDone, this.#info, signal);
    const fetch: FetchRange = async (start, end, chunkSignal) =>
      (await this.#source.open(start, this.#info, chunkSignal, end)).body;
    const body = parallelRanges(fetch, {
      start: this.bytesDone,
      end: sizeBytes,
      chunkBytes,
      connections,
      signal,
    });
    const chunks = Math.ceil((sizeBytes - this.bytesDone) / chunkBytes);
    this.connections = Math.max(this.connections, Math.min(connections, chunks));
    return { body, offset: this.bytesDone };
  }

  /**
   * Gives the partial file the object's size (trailing zeros were not written), makes it
   * durable and drops it from the page cache.
   */
  async complete(): Promise<void> {
    await this.#writer.setSize(this.#info.sizeBytes);
    await this.#writer.flush();
  }

  /** Resolves once the partial file may be removed; see BoundedWriter.idle. */
  idle(): Promise<void> {
    return this.#writer.idle();
  }

  /** Checks the byte count, then the checksum; returns the content's sha256. */
  verify(): { sha256: string } {
    if (this.bytesDone !== this.#info.sizeBytes)
      throw new PipelineError(
        DownloadReason.SourceChanged,
        `${this.#source.description}: received ${this.bytesDone} bytes, the object has ${this.#info.sizeBytes}`,
        { terminal: false },
      );
    return this.#digests.verify(this.#expected);
  }

  /** Writes received chunks at bytesDone, into the partial file and the mirror at once. */
  async #write(chunks: Buffer[]): Promise<void> {
    const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    if (this.bytesDone + length > this.#info.sizeBytes) {
      throw new PipelineError(
        DownloadReason.SourceChanged,
        `${this.#source.description} sent more than the ${this.#info.sizeBytes} bytes it announced`,
        { terminal: false },
      );
    }
    const written = Promise.all([
      onDisk(dirname(this.#path), () => this.#writer.write(chunks, this.bytesDone)),
      this.#mirror?.write(chunks, this.bytesDone),
    ]);
    // Hashing takes the main thread while the thread pool writes the same (read-only) chunks.
    for (const chunk of chunks) this.#digests.update(chunk);
    await written;
    releaseChunks(chunks);
    this.bytesDone += length;
    this.#onWritten?.({ path: this.#path, bytes: this.bytesDone });
    this.#progress.report(this.bytesDone);
  }

  /** The server ignored the range and sends from byte 0: start over, file and hash. */
  async #restart(): Promise<void> {
    // Told first: a reader must not take the truncated file's zeros for the image's bytes.
    this.#onWritten?.({ path: this.#path, bytes: 0 });
    await onDisk(dirname(this.#path), () => this.#file.truncate(0));
    this.#digests = new StreamingDigests(this.#expected);
    this.bytesDone = 0;
  }
}
