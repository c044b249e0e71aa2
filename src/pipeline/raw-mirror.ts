// Writes a raw image into its target while it downloads (see target-mirror.ts): each byte goes
// to the same offset. The image's first bytes are checked (evaluateHeader) before any byte
// reaches the target, so a "raw" image that starts with a container header is never written.
import { evaluateHeader, headerBytes } from '../storage/qemu-img/policy.ts';
import { TargetMirror } from './target-mirror.ts';

export class RawTargetMirror extends TargetMirror {
  /** The image's bytes from offset 0 that are in the target. */
  #covered = 0;

  protected async received(chunks: readonly Buffer[], position: number): Promise<void> {
    if (position !== 0 && position !== this.#covered) {
      return this.detach(`the download skipped from byte ${this.#covered} to ${position}`);
    }
    const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    if (position === 0) {
      // Copies the header's bytes only, not the whole batch (up to 4 MiB).
      const header = Buffer.concat(chunks, Math.min(headerBytes, length));
      if (header.length < Math.min(headerBytes, this.options.imageBytes)) {
        return this.detach('the first bytes arrived in too small a batch to check the header');
      }
      const verdict = evaluateHeader('raw', header);
      if (!verdict.ok) return this.detach(verdict.message);
    }
    await this.writeTarget(chunks, position);
    this.#covered = position + length;
  }

  protected async completed(): Promise<boolean> {
    return this.#covered === this.options.imageBytes;
  }
}
