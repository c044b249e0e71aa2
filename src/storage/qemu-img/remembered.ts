// What qemu-img info and check say of a file does not change while the file does not, and
// every cache hit inspects the same cached file again: two child processes, each forking the
// whole controller (about 25 ms together). This wrapper remembers their results per file,
// for as long as the file's identity (device, inode, size, modification and change times)
// stays the same, which a cached image's does: it is renamed into place and never written.
import { stat } from 'node:fs/promises';
import type { ImageFormat } from '../../api/v1alpha1.ts';
import { LruMap } from '../../util/lru.ts';
import type { QemuImg } from './qemu-img.ts';

/** Results for the `capacity` files inspected last; conversions pass straight through. */
export function rememberingInspections(qemuImg: QemuImg, capacity = 64): QemuImg {
  const results = new LruMap<string, { identity: string; result: unknown }>(capacity);

  async function remembered<T>(
    operation: string,
    path: string,
    format: ImageFormat,
    inspect: () => Promise<T>,
  ): Promise<T> {
    const key = `${operation} ${format} ${path}`;
    const identity = await identityOf(path);
    const known = results.get(key);
    if (identity !== undefined && known?.identity === identity) return known.result as T;
    const result = await inspect();
    // Not if the file changed while qemu-img read it: the result may describe either version.
    if (identity !== undefined && (await identityOf(path)) === identity)
      results.set(key, { identity, result });
    return result;
  }

  return {
    info: (path, format) => remembered('info', path, format, () => qemuImg.info(path, format)),
    check: (path, format) => remembered('check', path, format, () => qemuImg.check(path, format)),
    convert: (options) => qemuImg.convert(options),
  };
}

async function identityOf(path: string): Promise<string | undefined> {
  try {
    const { dev, ino, size, mtimeNs, ctimeNs } = await stat(path, { bigint: true });
    return `${dev}:${ino}:${size}:${mtimeNs}:${ctimeNs}`;
  } catch {
    return undefined; // qemu-img reports the missing file itself
  }
}
