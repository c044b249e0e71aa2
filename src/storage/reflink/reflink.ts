// Copy-on-write clones (the FICLONE ioctl, through copyFile's COPYFILE_FICLONE_FORCE). On XFS
// with reflink and on btrfs, a new file can share another's blocks: nothing is read or
// written, however large the file, and a later write to either copies only the blocks it
// touches. A raw image in the node cache becomes a file target this way, and the cached copy
// stays as it was whatever the guest then writes. Other file systems, and two folders on
// different file systems, refuse; the caller then copies the bytes as before.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCode } from '../download/source.ts';

export interface FileCloner {
  /** Whether files of the source folder can be cloned into the target folder; probed once. */
  supported(): Promise<boolean>;
  /** Clones `source` into `target` (replacing it); false when the file systems refuse. */
  clone(source: string, target: string): Promise<boolean>;
}

/** What copyFile reports when the file systems cannot share blocks between these files. */
const REFUSALS = new Set(['EXDEV', 'ENOTSUP', 'EOPNOTSUPP', 'EINVAL', 'ENOSYS', 'ENOTTY']);

async function clone(source: string, target: string): Promise<boolean> {
  try {
    await copyFile(source, target, constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch (error) {
    if (REFUSALS.has(errorCode(error) ?? '')) return false;
    throw error;
  }
}

/**
 * Clones from `fromDir` (the node cache) into `toDir` (the file targets' pool). The probe
 * clones a small file of `probePrefix` (a name the source folder's owner removes after a
 * crash) once, on first use.
 */
export function reflinkCloner(fromDir: string, toDir: string, probePrefix: string): FileCloner {
  let supported: Promise<boolean> | undefined;
  const probe = async () => {
    const name = `${probePrefix}reflink-probe-${randomBytes(8).toString('hex')}`;
    const source = join(fromDir, name);
    const target = join(toDir, `.${name}`);
    try {
      await mkdir(toDir, { recursive: true });
      await writeFile(source, randomBytes(4096), { flag: 'wx' });
      return await clone(source, target);
    } finally {
      await Promise.all([rm(source, { force: true }), rm(target, { force: true })]);
    }
  };
  return {
    supported() {
      // A probe that failed for another reason (a full disk) says no, and runs again next time.
      supported ??= probe().catch(() => {
        supported = undefined;
        return false;
      });
      return supported;
    },
    clone,
  };
}
