// Converts a qcow2 image into its target while it downloads, reading it over NBD from the
// partial file (storage/nbd), when the network is what limits the download: qemu-img then
// works while the job would otherwise wait, and the job ends about when the download does.
// Where this node's CPU or disk is the limit (loopback), converting at the same time slows
// both, so it starts only when the download runs at less than a quarter of the node's
// measured conversion rate (convertWhileDownloading).
// It is as safe as converting afterwards:
// - qemu-img opens the image only after its first bytes passed evaluateHeader, and converts
//   only after `qemu-img info` of it passed evaluateInfo (format, no backing or data file,
//   virtual size);
// - the provisioner commits the target only after the download verified the checksum and the
//   full inspection of the cached file (with `qemu-img check`) passed; otherwise it discards
//   the target, as after a failed conversion.
// Anything unexpected makes it give up and discard what it wrote: the job then converts from
// the cache as it would have without it.
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PartialFile } from '../storage/download/index.ts';
import { GrowingExport } from '../storage/nbd/growing-export.ts';
import type { ImageInfo } from '../storage/qemu-img/image-info.ts';
import { evaluateHeader, evaluateInfo, headerBytes } from '../storage/qemu-img/policy.ts';
import type { QemuImg } from '../storage/qemu-img/qemu-img.ts';
import type { Clock } from '../util/clock.ts';
import type { PreparedTarget, TargetPreparation } from './targets.ts';

/** Each conversion's NBD socket lives in `<tmpdir>/lvp-nbd-<pid>-XXXXXX`, removed after it. */
const SOCKET_FOLDER_PREFIX = 'lvp-nbd-';
const SOCKET_FOLDER = /^lvp-nbd-(\d+)-/;

/**
 * Removes the socket folders that conversions of a process that died left in `parent`. Call
 * at start-up: /tmp is an emptyDir that outlives a crashed container. Folders of other live
 * processes (tests, `npm run local`) stay; this process's PID may be a dead predecessor's,
 * since a new container numbers its processes anew, and it has no conversion yet.
 */
export async function removeStaleSocketFolders(parent = tmpdir()): Promise<string[]> {
  const stale = (await readdir(parent).catch(() => [])).filter((name) => {
    const pid = Number(SOCKET_FOLDER.exec(name)?.[1]);
    return Number.isInteger(pid) && (pid === process.pid || !processExists(pid));
  });
  await Promise.all(stale.map((name) => rm(join(parent, name), { recursive: true, force: true })));
  return stale;
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, as another user's.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The download's rate is judged over this many bytes, from its first batch on. */
export const RATE_SAMPLE_BYTES = 32 * 1024 * 1024;

/**
 * Whether to convert while downloading, once `bytes` arrived in `seconds`: only if the download
 * runs at less than a quarter of `convertRate` (the node's measured conversion rate). That rate
 * counts the image's virtual bytes, two or more times a sparse image's file, so a quarter is
 * about half in the download's bytes. Here loopback MinIO delivered 530-990 MB/s over the
 * first 32 MiB against conversions of about 1.7 GB/s, and converting alongside it was slower.
 * Undefined while too few bytes arrived to tell.
 */
export function convertWhileDownloading(
  bytes: number,
  seconds: number,
  convertRate: number,
): boolean | undefined {
  if (bytes < RATE_SAMPLE_BYTES || !(seconds > 0)) return undefined;
  return bytes / seconds < convertRate / 4;
}

export interface StreamingConversionOptions {
  qemuImg: QemuImg;
  /** The object's size: the export's. */
  imageBytes: number;
  targetSizeBytes: number;
  /** Bytes per second the node converts at (the measured stage rate). */
  convertRate: number;
  clock: Clock;
  /** The job's signal: aborting it stops qemu-img. */
  signal: AbortSignal;
  /** Creates the target, once the image's info passed. */
  prepare(): Promise<TargetPreparation>;
  /** Runs qemu-img into the target from `source` (the export's URL); see Provisioner. */
  convert(target: PreparedTarget, source: string, info: ImageInfo): Promise<void>;
  /** The conversion begins, from a download measured at `downloadRate` bytes per second. */
  onStart(downloadRate: number): void;
  /** Why it gave up, for the job's log. */
  onGiveUp(reason: string): void;
}

/** A conversion that ran to the end, into a target not yet committed. */
export interface StreamedConversion {
  target: PreparedTarget;
  info: ImageInfo;
}

export class StreamingConversion {
  readonly #options: StreamingConversionOptions;
  #first: { bytes: number; at: number } | undefined;
  #decided = false;
  #downloadRate = 0;
  #export: GrowingExport | undefined;
  #run: Promise<StreamedConversion | undefined> | undefined;

  constructor(options: StreamingConversionOptions) {
    this.#options = options;
  }

  /** The download's onWritten: decides once, then feeds the export. */
  written(partial: PartialFile): void {
    if (this.#export) {
      this.#export.written(partial);
      return;
    }
    if (this.#decided) return;
    const now = this.#options.clock.now();
    this.#first ??= { bytes: partial.bytes, at: now };
    const bytes = partial.bytes - this.#first.bytes;
    const seconds = (now - this.#first.at) / 1000;
    const go = convertWhileDownloading(bytes, seconds, this.#options.convertRate);
    if (go === undefined) return;
    this.#decided = true;
    this.#downloadRate = bytes / seconds;
    if (!go) return;
    const exported = new GrowingExport(this.#options.imageBytes);
    this.#export = exported;
    exported.written(partial);
    this.#run = this.#convert(exported);
  }

  /**
   * Once the download settled: the conversion when the download succeeded and the conversion
   * ran to the end, else undefined, with whatever it wrote discarded.
   */
  async finish(downloaded: boolean): Promise<StreamedConversion | undefined> {
    if (downloaded) return this.#run;
    this.#export?.fail(new Error('the download failed'));
    // It may have converted every byte before the download failed its verification.
    await (await this.#run)?.target.discard();
    return undefined;
  }

  async #convert(exported: GrowingExport): Promise<StreamedConversion | undefined> {
    const { qemuImg, targetSizeBytes, signal } = this.#options;
    let target: PreparedTarget | undefined;
    let socketDir: string | undefined;
    try {
      socketDir = await mkdtemp(join(tmpdir(), `${SOCKET_FOLDER_PREFIX}${process.pid}-`));
      await exported.listen(join(socketDir, `${randomBytes(4).toString('hex')}.sock`));
      const header = await exported.read(0, Math.min(headerBytes, this.#options.imageBytes));
      if (!header) return this.#giveUp('the first bytes could not be read');
      const headerVerdict = evaluateHeader('qcow2', header);
      if (!headerVerdict.ok) return this.#giveUp(headerVerdict.message);
      const info = await qemuImg.info(exported.url, 'qcow2');
      const verdict = evaluateInfo({ declaredFormat: 'qcow2', info, targetSizeBytes });
      if (!verdict.ok) return this.#giveUp(verdict.message);
      signal.throwIfAborted();
      const preparation = await this.#options.prepare();
      // A volume committed before a restart needs no conversion.
      if (preparation.complete) return this.#giveUp('the volume is already complete');
      target = preparation.target;
      this.#options.onStart(this.#downloadRate);
      await this.#options.convert(target, exported.url, info);
      return { target, info };
    } catch (error) {
      await target?.discard();
      return this.#giveUp((error as Error).message);
    } finally {
      await exported.close();
      if (socketDir) await rm(socketDir, { recursive: true, force: true });
    }
  }

  #giveUp(reason: string): undefined {
    if (!this.#options.signal.aborted) this.#options.onGiveUp(reason);
    return undefined;
  }
}
