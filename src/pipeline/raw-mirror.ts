// Writes a raw image into its target while it downloads, so that a raw cache miss costs one
// pass over the data instead of a download followed by a conversion. It is as safe as the
// conversion it replaces:
// - the image's first bytes are checked (evaluateHeader) before any byte reaches the target,
//   so a "raw" image that starts with a container header is never written;
// - the provisioner mirrors only an image that fits the target, and commits only after the
//   download verified the checksum and inspection passed; otherwise it discards the target
//   as after a failed conversion.
// Anything unexpected (a write error, a short first batch, a gap, the job stopping) detaches
// the mirror: the download goes on, and the job converts from the cache as it would have
// without a mirror.
import { type FileHandle, open } from 'node:fs/promises';
import { BoundedWriter, type DownloadMirror, type PageCache } from '../storage/download/index.ts';
import { evaluateHeader, headerBytes } from '../storage/qemu-img/policy.ts';

export interface RawMirrorOptions {
  /** The target's write path: a new file, or an existing block device. */
  path: string;
  isBlockDevice: boolean;
  /** The image's size; for raw, also its virtual size. */
  imageBytes: number;
  /** The job's signal: the mirror lets go of the target as soon as the job stops. */
  signal: AbortSignal;
  syncIntervalBytes: number;
  pageCache: PageCache;
  /** Why the mirror gave up, for the job's log. */
  onDetach?: (reason: string) => void;
}

export class RawTargetMirror implements DownloadMirror {
  readonly #options: RawMirrorOptions;
  #file: FileHandle | undefined;
  #writer: BoundedWriter | undefined;
  /** The image's bytes from offset 0 that are in the target. */
  #covered = 0;
  #detached = false;
  #closed: Promise<void> | undefined;

  constructor(options: RawMirrorOptions) {
    this.#options = options;
    options.signal.addEventListener('abort', () => this.#detach('the job stopped'), { once: true });
  }

  async write(chunks: readonly Buffer[], position: number): Promise<void> {
    if (this.#detached) return;
    const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    try {
      if (position !== 0 && position !== this.#covered) {
        return this.#detach(`the download skipped from byte ${this.#covered} to ${position}`);
      }
      if (position === 0) {
        // Copies the header's bytes only, not the whole batch (up to 4 MiB).
        const header = Buffer.concat(chunks, Math.min(headerBytes, length));
        if (header.length < Math.min(headerBytes, this.#options.imageBytes)) {
          return this.#detach('the first bytes arrived in too small a batch to check the header');
        }
        const verdict = evaluateHeader('raw', header);
        if (!verdict.ok) return this.#detach(verdict.message);
      }
      this.#writer ??= await this.#open();
      await this.#writer.write(chunks, position);
      this.#covered = position + length;
    } catch (error) {
      this.#detach(`writing into ${this.#options.path} failed: ${(error as Error).message}`);
    }
  }

  /**
   * Ends the mirror: true when the whole image is in the target, flushed to disk. The target
   * is closed either way, so that an LV can be removed.
   */
  async finish(): Promise<boolean> {
    const complete =
      !this.#detached && this.#covered === this.#options.imageBytes && this.#writer !== undefined;
    try {
      if (complete) await this.#writer?.flush();
      return complete;
    } finally {
      this.#detached = true;
      await this.#close();
    }
  }

  async #open(): Promise<BoundedWriter> {
    const { path, isBlockDevice, syncIntervalBytes, pageCache } = this.#options;
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

  #detach(reason: string): void {
    if (this.#detached) return;
    this.#detached = true;
    this.#options.onDetach?.(reason);
    void this.#close();
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
