// Writes an image into its target while it downloads, so that a cache miss costs one pass over
// the data instead of a download followed by a conversion. RawTargetMirror and
// Qcow2TargetMirror say where each received byte belongs; this keeps what they share: the
// target's file, its bounded page cache, and giving up. It is as safe as the conversion it
// replaces:
// - the provisioner mirrors only into a target the image fits, and commits only after the
//   download verified the checksum and inspection passed; otherwise it discards the target as
//   after a failed conversion;
// - anything unexpected (a write error, a gap, bytes it cannot decode, the job stopping)
//   detaches the mirror: the download goes on, and the job converts from the cache as it
//   would have without a mirror.
import { type FileHandle, open } from 'node:fs/promises';
import { BoundedWriter, type DownloadMirror, type PageCache } from '../storage/download/index.ts';

export interface TargetMirrorOptions {
  /** The target's write path: a new file, or an existing block device. */
  path: string;
  isBlockDevice: boolean;
  /** The size of the image file being downloaded. */
  imageBytes: number;
  /** The job's signal: the mirror lets go of the target as soon as the job stops. */
  signal: AbortSignal;
  syncIntervalBytes: number;
  pageCache: PageCache;
  /** Why the mirror gave up, for the job's log. */
  onDetach?: (reason: string) => void;
}

export abstract class TargetMirror implements DownloadMirror {
  protected readonly options: TargetMirrorOptions;
  #file: FileHandle | undefined;
  #writer: BoundedWriter | undefined;
  #detached = false;
  #closed: Promise<void> | undefined;

  constructor(options: TargetMirrorOptions) {
    this.options = options;
    options.signal.addEventListener('abort', () => this.detach('the job stopped'), { once: true });
  }

  async write(chunks: readonly Buffer[], position: number): Promise<void> {
    if (this.#detached) return;
    try {
      await this.received(chunks, position);
      // The image's last bytes are in: the target's flush overlaps the download's own.
      const end = chunks.reduce((sum, chunk) => sum + chunk.length, position);
      if (end === this.options.imageBytes) this.#writer?.startFlush();
    } catch (error) {
      this.detach(`writing into ${this.options.path} failed: ${(error as Error).message}`);
    }
  }

  /**
   * Ends the mirror once the download has settled: true when the whole image is in the
   * target, flushed to disk. `downloadedPath` is the verified image in the cache, for what
   * could not be written as it arrived; undefined when the download failed. The target is
   * closed either way, so that an LV can be removed.
   */
  async finish(downloadedPath?: string): Promise<boolean> {
    try {
      if (this.#detached || downloadedPath === undefined) return false;
      const complete = await this.completed(downloadedPath);
      if (complete && !this.#detached) {
        // An image with nothing to write (all zeros) still needs its target opened once.
        this.#writer ??= await this.#open();
        await this.#writer.flush();
        return true;
      }
      return false;
    } catch (error) {
      this.detach(`completing ${this.options.path} failed: ${(error as Error).message}`);
      return false;
    } finally {
      this.#detached = true;
      await this.#close();
    }
  }

  /** Places one batch of the image's bytes, received in order from `position`. */
  protected abstract received(chunks: readonly Buffer[], position: number): Promise<void>;

  /** Writes what is left once the whole image is in `downloadedPath`; true if the target is whole. */
  protected abstract completed(downloadedPath: string): Promise<boolean>;

  protected get detached(): boolean {
    return this.#detached;
  }

  /** Writes `chunks` back to back at `offset` of the target, unless the mirror let go of it. */
  protected async writeTarget(chunks: readonly Buffer[], offset: number): Promise<void> {
    if (this.#detached) return;
    this.#writer ??= await this.#open();
    await this.#writer.write(chunks, offset);
  }

  protected detach(reason: string): void {
    if (this.#detached) return;
    this.#detached = true;
    this.options.onDetach?.(reason);
    void this.#close();
  }

  async #open(): Promise<BoundedWriter> {
    const { path, isBlockDevice, syncIntervalBytes, pageCache } = this.options;
    const file = await open(path, isBlockDevice ? 'r+' : 'w', 0o644);
    if (this.#detached) {
      // The job stopped while the target was being opened.
      await file.close();
      throw new Error('the job stopped');
    }
    this.#file = file;
    // A new file stays as sparse as qemu-img makes it (FileTargets sets its size on commit).
    // A block device may still hold another volume's data: every byte is written there.
    return new BoundedWriter(file, path, { syncIntervalBytes, pageCache, skipZeroBlocks: !isBlockDevice });
  }

  /**
   * Waits for the writer's background flush, then closes (FileHandle.close waits for writes in
   * flight), so the target is free, and not created anew, once this resolves.
   */
  #close(): Promise<void> {
    const file = this.#file;
    const writer = this.#writer;
    this.#closed ??= (async () => {
      await writer?.idle();
      await file?.close().catch(() => {});
    })();
    return this.#closed;
  }
}
