// LVM's naming rules (lvm(8), "VALID NAMES"), checked before LVM is called. The CRD validates
// the same names; this is defence in depth, and gives a clear message instead of LVM's.
import { PipelineError } from '../../pipeline/types.ts';

const NAME_CHARACTERS = /^[A-Za-z0-9+_.-]+$/;
/** LVM's NAME_LEN is 128 bytes including the terminating NUL. */
const MAX_NAME_LENGTH = 127;
/** Prefixes and substrings LVM keeps for its internal volumes (checked against lvcreate 2.03). */
const RESERVED_LV_PREFIXES = ['snapshot', 'pvmove'];
const RESERVED_LV_SUBSTRINGS = [
  '_cdata',
  '_cmeta',
  '_corig',
  '_iorig',
  '_mimage',
  '_mlog',
  '_pmspare',
  '_rimage',
  '_rmeta',
  '_tdata',
  '_tmeta',
  '_vdata',
  '_vorigin',
  '_wcorig',
];

/** The tag that marks an LV as made by this controller for one VolumeProvision. */
export const OWNER_TAG_PREFIX = 'lvp.dev/uid=';
const TAG_CHARACTERS = /^[A-Za-z0-9_+.\-/=!:&#]+$/;
const MAX_TAG_LENGTH = 1024;

/** Why `name` cannot be an LVM volume group name (or LV name, before LV-only rules), if it cannot. */
function commonNameProblem(name: string): string | undefined {
  if (name === '') return 'it is empty';
  if (name.length > MAX_NAME_LENGTH) return `it is longer than ${MAX_NAME_LENGTH} characters`;
  if (!NAME_CHARACTERS.test(name)) return 'only the characters a-z A-Z 0-9 + _ . - are allowed';
  if (name.startsWith('-')) return 'it must not begin with a hyphen';
  if (name === '.' || name === '..') return `"${name}" is reserved`;
  return undefined;
}

/** Why `name` cannot be an LVM logical volume name, or undefined when it can. */
function logicalVolumeNameProblem(name: string): string | undefined {
  const common = commonNameProblem(name);
  if (common !== undefined) return common;
  const prefix = RESERVED_LV_PREFIXES.find((reserved) => name.startsWith(reserved));
  if (prefix !== undefined) return `names starting with "${prefix}" are reserved by LVM`;
  const substring = RESERVED_LV_SUBSTRINGS.find((reserved) => name.includes(reserved));
  if (substring !== undefined) return `names containing "${substring}" are reserved by LVM`;
  return undefined;
}

export function assertLogicalVolumeName(name: string): void {
  const problem = logicalVolumeNameProblem(name);
  if (problem !== undefined) {
    throw new PipelineError(
      'InvalidVolumeName',
      `${JSON.stringify(name)} is not a valid LVM logical volume name: ${problem}`,
      { terminal: true },
    );
  }
}

export function assertVolumeGroupName(name: string): void {
  const problem = commonNameProblem(name);
  if (problem !== undefined) {
    throw new PipelineError(
      'InvalidVolumeGroupName',
      `${JSON.stringify(name)} is not a valid LVM volume group name: ${problem}`,
      { terminal: true },
    );
  }
}

/** The owner tag for a VolumeProvision's UID; a Kubernetes UID (a UUID) always fits LVM's tag rules. */
export function ownerTag(ownerUid: string): string {
  const tag = `${OWNER_TAG_PREFIX}${ownerUid}`;
  if (ownerUid === '' || !TAG_CHARACTERS.test(tag) || tag.length > MAX_TAG_LENGTH) {
    throw new PipelineError(
      'InvalidOwnerUid',
      `owner UID ${JSON.stringify(ownerUid)} cannot be stored in an LVM tag ` +
        `(allowed: A-Z a-z 0-9 _ + . - / = ! : & #, at most ${MAX_TAG_LENGTH} characters in all)`,
      { terminal: true },
    );
  }
  return tag;
}
