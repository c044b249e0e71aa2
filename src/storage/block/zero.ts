// Zeroing part of a block device, behind one small interface. A new LV may sit on extents
// that held another volume's data, and qemu-img writes only the image's virtual size, so the
// rest of the LV must be zeroed before a guest can read it. blkdiscard --zeroout issues
// BLKZEROOUT, which devices with WRITE ZEROES or discard support complete without writing
// every byte, and the kernel falls back to writing zeros elsewhere.
import { execa } from 'execa';
import { PipelineError } from '../../pipeline/types.ts';

const SECTOR = 512;

export interface BlockZeroer {
  /** Zeroes [offset, end of device); `offset` is rounded up to a whole sector. */
  zeroFrom(device: string, offset: number, deviceSize: number, signal?: AbortSignal): Promise<void>;
}

export function blkdiscardZeroer(options: { binary?: string; timeoutMs?: number } = {}): BlockZeroer {
  return {
    async zeroFrom(device, offset, deviceSize, signal) {
      // Rounding up never touches the image: qemu-img writes whole sectors to block devices.
      const start = Math.ceil(offset / SECTOR) * SECTOR;
      if (start >= deviceSize) return;
      const result = await execa(
        options.binary ?? 'blkdiscard',
        ['--zeroout', '--offset', String(start), '--length', String(deviceSize - start), device],
        {
          env: { LC_ALL: 'C' },
          reject: false,
          timeout: options.timeoutMs ?? 30 * 60_000,
          ...(signal ? { cancelSignal: signal } : {}),
        },
      );
      if (signal?.aborted) throw signal.reason;
      if (result.exitCode !== 0) {
        throw new PipelineError(
          'VolumeZeroingFailed',
          `could not zero ${device} past the image (from byte ${start}): ${String(
            result.stderr || result.message,
          )
            .trim()
            .slice(0, 500)}`,
          { terminal: false },
        );
      }
    },
  };
}
