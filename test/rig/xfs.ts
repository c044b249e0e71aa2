// A real XFS file system with reflink (mkfs.xfs's default), on a loop device over a sparse
// file: where the node cache can clone raw images into file targets. The machine's own file
// system (ext4) cannot clone, so that side of the code runs only here.
import { execFileSync } from 'node:child_process';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface MountedFileSystem {
  /** The mount point. */
  readonly path: string;
  /** Unmounts (lazily, should a file still be open) and detaches the loop device. */
  unmount(): void;
}

/**
 * Mounts a new XFS of `sizeBytes` (sparse) at `<workDir>/xfs`. Needs loop devices, and root:
 * as another user it mounts through `sudo -n`, as scripts/rig/install-tools.sh installs.
 */
export function mountXfs(workDir: string, sizeBytes: number): MountedFileSystem {
  const image = join(workDir, 'xfs.img');
  const path = join(workDir, 'xfs');
  mkdirSync(path, { recursive: true });
  writeFileSync(image, '');
  truncateSync(image, sizeBytes);
  const asRoot = process.getuid?.() === 0 ? [] : ['sudo', '-n'];
  const run = (command: string, args: string[], privileged = false) => {
    const [program, ...rest] = privileged ? [...asRoot, command, ...args] : [command, ...args];
    try {
      execFileSync(program ?? command, rest, { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (error) {
      const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
      throw new Error(`${command} ${args.join(' ')} failed: ${stderr || (error as Error).message}`);
    }
  };
  run('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
  run('mount', ['-o', 'loop', image, path], true);
  // Writable by this user, as the cache and pool folders are by the controller.
  run('chown', [`${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`, path], true);
  return {
    path,
    // mount -o loop set the loop device to detach itself once the file system is unmounted.
    unmount: () => run('umount', ['-l', path], true),
  };
}
