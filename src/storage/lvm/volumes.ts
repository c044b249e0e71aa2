// The LVM operations the provisioner needs, behind a narrow interface that tests replace.
// Ownership is an LV tag naming the VolumeProvision's UID: the controller reuses and removes
// only LVs that carry it, and refuses every other LV, whoever made it.
import { PipelineError } from '../../pipeline/types.ts';
import { type LvmCommand, LvmCommandError } from './command.ts';
import { assertLogicalVolumeName, assertVolumeGroupName, OWNER_TAG_PREFIX, ownerTag } from './names.ts';

export interface VolumeGroup {
  name: string;
  sizeBytes: number;
  freeBytes: number;
  /** Every LV's size is a multiple of this. */
  extentSizeBytes: number;
}

export interface LogicalVolume {
  name: string;
  vg: string;
  sizeBytes: number;
  tags: string[];
  /** /dev/VG/LV; it exists while the LV is active. */
  devicePath: string;
  active: boolean;
}

export interface EnsureVolumeRequest {
  vg: string;
  name: string;
  /** Rounded up to whole extents, as LVM does. */
  sizeBytes: number;
  /** The VolumeProvision's metadata.uid, stored in the tag `lvp.dev/uid=<uid>`. */
  ownerUid: string;
}

export interface EnsuredVolume extends LogicalVolume {
  /** False when an LV made earlier for the same owner (before a crash or restart) was reused. */
  created: boolean;
}

export type RemoveVolumeRequest = Omit<EnsureVolumeRequest, 'sizeBytes'>;

export interface VolumeManager {
  /** Throws PipelineError VolumeGroupNotFound when the VG does not exist. */
  getVolumeGroup(vg: string): Promise<VolumeGroup>;
  /** Undefined when the VG has no such LV; VolumeGroupNotFound when there is no such VG. */
  findVolume(vg: string, name: string): Promise<LogicalVolume | undefined>;
  /**
   * Creates the LV tagged with its owner, or reuses (and activates) the one made before for
   * the same owner. Throws PipelineError VolumeConflict for an LV of any other owner or none,
   * and InsufficientVolumeGroupSpace before creating anything that would not fit.
   */
  ensureVolume(request: EnsureVolumeRequest): Promise<EnsuredVolume>;
  /**
   * Fails as ensureVolume would when the VG is missing (VolumeGroupNotFound) or the name is
   * taken (VolumeConflict), changing nothing and with one `lvs`. Free space and the size of
   * an LV of its own are left to ensureVolume: space may be freed meanwhile, and the spec's
   * size cannot change.
   */
  checkVolume(request: EnsureVolumeRequest): Promise<void>;
  /**
   * Removes the owner's LV; an absent LV is not an error. Refuses (VolumeConflict) any other LV.
   * A missing VG is VolumeGroupNotFound, not "absent": it may only be detached for a while.
   */
  removeVolume(request: RemoveVolumeRequest): Promise<'removed' | 'absent'>;
}

/** LVM allocates whole extents, so a request is rounded up to the next multiple of the extent size. */
export function roundUpToExtent(sizeBytes: number, extentSizeBytes: number): number {
  if (!Number.isSafeInteger(extentSizeBytes) || extentSizeBytes <= 0) {
    throw new RangeError(`extent size must be a positive integer, got ${extentSizeBytes}`);
  }
  // Integer remainder arithmetic: a float division could round wrongly near 2^53.
  const remainder = sizeBytes % extentSizeBytes;
  const rounded = remainder === 0 ? sizeBytes : sizeBytes + (extentSizeBytes - remainder);
  if (!Number.isSafeInteger(rounded)) throw new RangeError(`${sizeBytes} bytes is too large`);
  return rounded;
}

const VG_FIELDS = ['vg_name', 'vg_size', 'vg_free', 'vg_extent_size'] as const;
const LV_FIELDS = ['lv_name', 'vg_name', 'lv_size', 'lv_tags', 'lv_active'] as const;
type LvRow = Record<(typeof LV_FIELDS)[number], string>;

function byteCount(value: string, field: string, object: string): number {
  const bytes = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(bytes)) {
    throw new PipelineError(
      'LvmReportInvalid',
      `LVM reported ${field}=${JSON.stringify(value)} for ${object}, which is not a byte count`,
      { terminal: false },
    );
  }
  return bytes;
}

function toLogicalVolume(row: LvRow): LogicalVolume {
  const object = `${row.vg_name}/${row.lv_name}`;
  return {
    name: row.lv_name,
    vg: row.vg_name,
    sizeBytes: byteCount(row.lv_size, 'lv_size', object),
    tags: row.lv_tags === '' ? [] : row.lv_tags.split(','),
    devicePath: `/dev/${row.vg_name}/${row.lv_name}`,
    // LVM reports '' for an inactive LV and 'active' (or 'active locally' and the like) otherwise.
    active: row.lv_active !== '',
  };
}

function assertOwnedBy(volume: LogicalVolume, tag: string): void {
  if (volume.tags.includes(tag)) return;
  const otherOwner = volume.tags.find((candidate) => candidate.startsWith(OWNER_TAG_PREFIX));
  const whose =
    otherOwner === undefined
      ? `carries no ${OWNER_TAG_PREFIX}<uid> tag`
      : `belongs to another VolumeProvision (tag ${otherOwner})`;
  throw new PipelineError(
    'VolumeConflict',
    `logical volume ${volume.vg}/${volume.name} already exists and ${whose}, so it is left untouched: ` +
      `the controller never touches LVs it did not create for this object (tag ${tag}). ` +
      'Choose another volumeName, or remove the existing LV by hand if nobody needs it.',
    { terminal: true },
  );
}

function assertRequestedSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new PipelineError(
      'InvalidVolumeSize',
      `volume size must be a positive whole number of bytes, got ${sizeBytes}`,
      { terminal: true },
    );
  }
}

export class LvmVolumeManager implements VolumeManager {
  readonly #lvm: LvmCommand;

  constructor(lvm: LvmCommand) {
    this.#lvm = lvm;
  }

  async getVolumeGroup(vg: string): Promise<VolumeGroup> {
    assertVolumeGroupName(vg);
    const rows = await this.#reportOn(vg, () => this.#lvm.report('vgs', VG_FIELDS, [vg]));
    const row = rows.find((candidate) => candidate.vg_name === vg);
    if (row === undefined) throw volumeGroupNotFound(vg);
    return {
      name: vg,
      sizeBytes: byteCount(row.vg_size, 'vg_size', vg),
      freeBytes: byteCount(row.vg_free, 'vg_free', vg),
      extentSizeBytes: byteCount(row.vg_extent_size, 'vg_extent_size', vg),
    };
  }

  async findVolume(vg: string, name: string): Promise<LogicalVolume | undefined> {
    assertVolumeGroupName(vg);
    assertLogicalVolumeName(name);
    // Listing the VG and filtering here, rather than asking for VG/LV, keeps "no such LV" apart
    // from every other failure without matching LVM's messages.
    const rows = await this.#reportOn(vg, () => this.#lvm.report('lvs', LV_FIELDS, [vg]));
    const row = rows.find((candidate) => candidate.lv_name === name && candidate.vg_name === vg);
    return row === undefined ? undefined : toLogicalVolume(row);
  }

  async checkVolume(request: EnsureVolumeRequest): Promise<void> {
    assertRequestedSize(request.sizeBytes);
    const tag = ownerTag(request.ownerUid);
    const existing = await this.findVolume(request.vg, request.name);
    if (existing !== undefined) assertOwnedBy(existing, tag);
  }

  async ensureVolume(request: EnsureVolumeRequest): Promise<EnsuredVolume> {
    const { vg, name } = request;
    assertVolumeGroupName(vg);
    assertLogicalVolumeName(name);
    assertRequestedSize(request.sizeBytes);
    const tag = ownerTag(request.ownerUid);
    const group = await this.getVolumeGroup(vg);
    const sizeBytes = roundUpToExtent(request.sizeBytes, group.extentSizeBytes);

    // Look first: after a crash the LV may already exist, and its own extents are not free.
    const existing = await this.findVolume(vg, name);
    if (existing !== undefined) return { ...(await this.#reuse(existing, tag, sizeBytes)), created: false };

    if (sizeBytes > group.freeBytes) {
      throw new PipelineError(
        'InsufficientVolumeGroupSpace',
        `volume group ${vg} has ${group.freeBytes} bytes free, but ${vg}/${name} needs ${sizeBytes} bytes ` +
          `(${request.sizeBytes} requested, rounded up to whole ${group.extentSizeBytes}-byte extents)`,
        { terminal: false },
      );
    }
    // Two creators racing for one name cannot both succeed: the loser's lvcreate fails
    // ("already exists") and its retry then finds the winner's LV and reports the conflict.
    await this.#lvm.run('lvcreate', [
      '-n',
      name,
      // The rounded size: LVM rejects byte sizes that are not a multiple of 512, and the
      // free-space check above must agree with what LVM allocates.
      '-L',
      `${sizeBytes}b`,
      // In the same command, so the LV and its tag are one metadata commit: a crash can never
      // leave an untagged LV that the controller would then refuse as someone else's.
      '--addtag',
      tag,
      // Explicit, so the host's lvm.conf cannot change them: the LV must be active for
      // qemu-img to write /dev/VG/LV; zeroing its first 4 KiB and wiping old signatures
      // (filesystems, partition tables, PVs of a removed LV) keeps blkid, udev and libvirt from
      // mistaking leftovers of a removed LV for the new volume's content.
      '--activate',
      'y',
      '--zero',
      'y',
      '--wipesignatures',
      'y',
      // Never prompt (stdin is closed); the wipe above is what a prompt would ask about.
      '--yes',
      vg,
    ]);
    return {
      name,
      vg,
      sizeBytes,
      tags: [tag],
      devicePath: `/dev/${vg}/${name}`,
      active: true,
      created: true,
    };
  }

  async removeVolume(request: RemoveVolumeRequest): Promise<'removed' | 'absent'> {
    const tag = ownerTag(request.ownerUid);
    const existing = await this.findVolume(request.vg, request.name);
    if (existing === undefined) return 'absent';
    assertOwnedBy(existing, tag);
    // --yes answers "remove active LV?"; without --force LVM still refuses an LV that is open,
    // e.g. by a running VM, and that failure is retried.
    await this.#lvm.run('lvremove', ['--yes', `${existing.vg}/${existing.name}`]);
    return 'removed';
  }

  async #reuse(existing: LogicalVolume, tag: string, sizeBytes: number): Promise<LogicalVolume> {
    assertOwnedBy(existing, tag);
    if (existing.sizeBytes < sizeBytes) {
      throw new PipelineError(
        'VolumeSizeMismatch',
        `logical volume ${existing.vg}/${existing.name} was created for this object with ` +
          `${existing.sizeBytes} bytes, but ${sizeBytes} bytes are now needed; the controller never resizes volumes`,
        { terminal: true },
      );
    }
    // After a reboot, or when the host does not auto-activate, the LV exists but has no device.
    if (!existing.active)
      await this.#lvm.run('lvchange', ['--activate', 'y', `${existing.vg}/${existing.name}`]);
    return { ...existing, active: true };
  }

  /** Runs a report on one VG, turning LVM's "not found" into VolumeGroupNotFound. */
  async #reportOn<T>(vg: string, report: () => Promise<T>): Promise<T> {
    try {
      return await report();
    } catch (error) {
      // LC_ALL=C makes the message stable; exit code 5 is LVM's ECMD_FAILED.
      if (
        error instanceof LvmCommandError &&
        error.exitCode === 5 &&
        error.stderr.includes(`Volume group "${vg}" not found`)
      ) {
        throw volumeGroupNotFound(vg, error);
      }
      throw error;
    }
  }
}

/** Retried with backoff: an administrator can create or attach the VG without touching the object. */
function volumeGroupNotFound(vg: string, cause?: unknown): PipelineError {
  return new PipelineError(
    'VolumeGroupNotFound',
    `volume group ${vg} does not exist on this node; create it, or set spec.target.volumeGroup ` +
      "(or the controller's default volume group) to one that exists",
    { terminal: false, cause },
  );
}
