// Where a converted image goes: an LVM logical volume, or a raw file in a libvirt `dir` pool.
// Both recognise what they made for a given VolumeProvision UID, reuse it after a crash, and
// refuse (terminally) to overwrite or remove anything they did not make.
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { VolumeProvisionSpec } from '../api/v1alpha1.ts';
import type { BlockZeroer } from '../storage/block/zero.ts';
import type { EnsureVolumeRequest, VolumeManager } from '../storage/lvm/volumes.ts';
import { fsyncFolder } from '../util/fs.ts';
import { PipelineError } from './types.ts';

export interface PreparedTarget {
  /** Where qemu-img writes. */
  writePath: string;
  isBlockDevice: boolean;
  /** Where libvirt finds the finished volume. */
  devicePath: string;
  /** Makes the volume final once `imageBytes` have been written from its start. */
  commit(imageBytes: number): Promise<void>;
  /** Undoes a failed attempt's partial output. */
  discard(): Promise<void>;
}

export type TargetPreparation =
  | { complete: false; target: PreparedTarget }
  | { complete: true; devicePath: string };

export interface TargetBackend {
  /**
   * Fails as prepare would for a reason only a change of the spec or a person can clear (the
   * name taken, no such volume group), creating nothing: a job checks this before it spends a
   * download on a volume it could never write.
   */
  check(uid: string, spec: VolumeProvisionSpec, sizeBytes: number): Promise<void>;
  prepare(uid: string, spec: VolumeProvisionSpec, sizeBytes: number): Promise<TargetPreparation>;
  release(uid: string, spec: VolumeProvisionSpec): Promise<void>;
}

const conflict = (message: string) => new PipelineError('VolumeConflict', message, { terminal: true });

/**
 * Raw files in one folder. The image is written to a hidden partial file and renamed into
 * place when complete, so an existing final file is always whole. Ownership records live in
 * the controller's state folder, outside the pool, keyed by file name.
 */
export class FileTargets implements TargetBackend {
  readonly #dir: string;
  readonly #ownersDir: string;

  constructor(options: { dir: string; stateDir: string }) {
    this.#dir = options.dir;
    this.#ownersDir = join(options.stateDir, 'file-owners');
  }

  async check(uid: string, spec: VolumeProvisionSpec): Promise<void> {
    const name = spec.target.volumeName;
    await this.#assertClaimable(name, uid, join(this.#dir, name));
  }

  async prepare(uid: string, spec: VolumeProvisionSpec, sizeBytes: number): Promise<TargetPreparation> {
    const name = spec.target.volumeName;
    const finalPath = join(this.#dir, name);
    await mkdir(this.#dir, { recursive: true });
    await this.#claim(name, uid, finalPath);
    if (await exists(finalPath)) return { complete: true, devicePath: finalPath };
    const writePath = join(this.#dir, `.${name}.partial-${uid}`);
    return {
      complete: false,
      target: {
        writePath,
        isBlockDevice: false,
        devicePath: finalPath,
        commit: async () => {
          // The guest sees the full requested size; the tail stays a sparse hole.
          const file = await open(writePath, 'r+');
          try {
            await file.truncate(sizeBytes);
            await file.sync();
          } finally {
            await file.close();
          }
          await rename(writePath, finalPath);
          // The rename is durable only once the folder is synced.
          await fsyncFolder(this.#dir);
        },
        discard: () => rm(writePath, { force: true }),
      },
    };
  }

  async release(uid: string, spec: VolumeProvisionSpec): Promise<void> {
    const name = spec.target.volumeName;
    if ((await this.#owner(name)) !== uid) return;
    await rm(join(this.#dir, `.${name}.partial-${uid}`), { force: true });
    await rm(join(this.#dir, name), { force: true });
    await rm(join(this.#ownersDir, name), { force: true });
  }

  /** Records `uid` as the file's owner, unless the file or its record belongs to someone else. */
  async #claim(name: string, uid: string, finalPath: string): Promise<void> {
    await mkdir(this.#ownersDir, { recursive: true });
    if ((await this.#assertClaimable(name, uid, finalPath)) === 'owned') return;
    try {
      await writeFile(join(this.#ownersDir, name), uid, { flag: 'wx' });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      // Another job claimed the same name a moment ago.
      await this.#claim(name, uid, finalPath);
    }
  }

  /** Whether `uid` owns the file already; throws VolumeConflict if someone else does. */
  async #assertClaimable(name: string, uid: string, finalPath: string): Promise<'owned' | 'free'> {
    const owner = await this.#owner(name);
    if (owner === uid) return 'owned';
    if (owner !== undefined) {
      throw conflict(
        `file ${finalPath} belongs to another VolumeProvision (UID ${owner}); choose another target.volumeName`,
      );
    }
    if (await exists(finalPath)) {
      throw conflict(
        `file ${finalPath} already exists and was not created by this controller; it is never overwritten. Choose another target.volumeName or remove the file`,
      );
    }
    return 'free';
  }

  async #owner(name: string): Promise<string | undefined> {
    try {
      return (await readFile(join(this.#ownersDir, name), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }
}

/** LVM logical volumes, owned through the `lvp.dev/uid=<uid>` tag (see storage/lvm). */
export class LvmTargets implements TargetBackend {
  readonly #volumes: VolumeManager;
  readonly #zeroer: BlockZeroer;
  readonly #defaultVolumeGroup: string | undefined;

  constructor(options: {
    volumes: VolumeManager;
    zeroer: BlockZeroer;
    defaultVolumeGroup: string | undefined;
  }) {
    this.#volumes = options.volumes;
    this.#zeroer = options.zeroer;
    this.#defaultVolumeGroup = options.defaultVolumeGroup;
  }

  async check(uid: string, spec: VolumeProvisionSpec, sizeBytes: number): Promise<void> {
    await this.#volumes.checkVolume(this.#request(uid, spec, sizeBytes));
  }

  async prepare(uid: string, spec: VolumeProvisionSpec, sizeBytes: number): Promise<TargetPreparation> {
    const volume = await this.#volumes.ensureVolume(this.#request(uid, spec, sizeBytes));
    // A reused LV may hold a half-written image from before a crash; it is written again.
    return {
      complete: false,
      target: {
        writePath: volume.devicePath,
        isBlockDevice: true,
        devicePath: volume.devicePath,
        // The LV may lie on extents another volume used; no byte of that may reach the guest.
        commit: (imageBytes) => this.#zeroer.zeroFrom(volume.devicePath, imageBytes, volume.sizeBytes),
        discard: async () => {},
      },
    };
  }

  async release(uid: string, spec: VolumeProvisionSpec): Promise<void> {
    await this.#volumes.removeVolume({
      vg: this.#volumeGroup(spec),
      name: spec.target.volumeName,
      ownerUid: uid,
    });
  }

  #request(uid: string, spec: VolumeProvisionSpec, sizeBytes: number): EnsureVolumeRequest {
    return { vg: this.#volumeGroup(spec), name: spec.target.volumeName, sizeBytes, ownerUid: uid };
  }

  #volumeGroup(spec: VolumeProvisionSpec): string {
    const vg = spec.target.volumeGroup ?? this.#defaultVolumeGroup;
    if (!vg) {
      throw new PipelineError(
        'VolumeGroupNotSet',
        'spec.target.volumeGroup is empty and the controller has no defaultVolumeGroup configured',
        { terminal: true },
      );
    }
    return vg;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await (await open(path, 'r')).close();
    return true;
  } catch {
    return false;
  }
}
