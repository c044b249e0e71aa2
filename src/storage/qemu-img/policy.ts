// What an image must be before qemu-img may convert it: pure decisions over facts gathered by
// inspect.ts, so that every rule is tested without files or processes.
import type { ImageFormat } from '../../api/v1alpha1.ts';
import type { CheckResult, ImageInfo } from './image-info.ts';

export type ImageRejectionReason =
  | 'FormatMismatch'
  | 'BackingFileNotAllowed'
  | 'ExternalDataFileNotAllowed'
  | 'VirtualSizeTooLarge'
  | 'CorruptImage';

export type ImageVerdict = { ok: true } | { ok: false; reason: ImageRejectionReason; message: string };

const accepted: ImageVerdict = { ok: true };

function reject(reason: ImageRejectionReason, message: string): ImageVerdict {
  return { ok: false, reason, message };
}

/** Image formats qemu would recognise by their first bytes, and where their magic sits. */
const containerMagics: readonly { format: string; offset: number; magic: Buffer }[] = [
  { format: 'qcow2', offset: 0, magic: Buffer.from([0x51, 0x46, 0x49, 0xfb]) }, // "QFI\xfb"
  { format: 'qed', offset: 0, magic: Buffer.from('QED\0', 'latin1') },
  { format: 'vmdk', offset: 0, magic: Buffer.from('KDMV', 'latin1') },
  { format: 'vhdx', offset: 0, magic: Buffer.from('vhdxfile', 'latin1') },
  { format: 'vdi', offset: 64, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
];

/** How many leading bytes of a file detectContainerFormat needs. */
export const headerBytes = 512;

/** The container format whose magic the header carries, or undefined for anything else. */
export function detectContainerFormat(header: Uint8Array): string | undefined {
  const bytes = Buffer.from(header.buffer, header.byteOffset, header.byteLength);
  return containerMagics.find(({ offset, magic }) =>
    bytes.subarray(offset, offset + magic.length).equals(magic),
  )?.format;
}

/**
 * Decides from the file's first bytes, before qemu-img opens it. A file declared raw that is
 * really qcow2 (or another container) would pass `qemu-img info -f raw`, be copied verbatim,
 * and turn into a container header inside the volume, where anything that probes formats
 * would follow its backing file (e.g. /etc/shadow) into the guest. So it is refused here.
 */
export function evaluateHeader(declaredFormat: ImageFormat, header: Uint8Array): ImageVerdict {
  const detected = detectContainerFormat(header);
  if (declaredFormat === 'raw' && detected !== undefined) {
    return reject(
      'FormatMismatch',
      `the image is declared raw but starts with a ${detected} header; ` +
        (detected === 'qcow2'
          ? 'set spec.source.format to qcow2'
          : `convert it first: qemu-img convert -f ${detected} -O qcow2 image.${detected} image.qcow2`),
    );
  }
  if (declaredFormat === 'qcow2' && detected !== 'qcow2') {
    return reject(
      'FormatMismatch',
      `the image is declared qcow2 but does not start with the qcow2 magic "QFI\\xfb" ` +
        `(${detected === undefined ? 'it looks like raw data' : `it is ${detected}`}); ` +
        'set spec.source.format to raw if it is a raw disk image',
    );
  }
  return accepted;
}

export interface ImageFacts {
  declaredFormat: ImageFormat;
  /** `qemu-img info` of the image, opened with the declared format. */
  info: ImageInfo;
  targetSizeBytes: number;
}

/**
 * Decides from `qemu-img info`. It must pass before `qemu-img check` runs, because check (unlike
 * info) opens the backing file and the external data file the image names.
 */
export function evaluateInfo({ declaredFormat, info, targetSizeBytes }: ImageFacts): ImageVerdict {
  if (info.format !== declaredFormat) {
    return reject(
      'FormatMismatch',
      `the image is declared ${declaredFormat} but qemu-img reports ${info.format}; ` +
        "set spec.source.format to the image's real format",
    );
  }
  if (info.backingFilename !== undefined) {
    return reject(
      'BackingFileNotAllowed',
      `the image depends on a backing file (${info.backingFilename}), which this node does not have ` +
        'and must never read; flatten it first: qemu-img convert -O qcow2 overlay.qcow2 flat.qcow2',
    );
  }
  if (info.dataFile !== undefined) {
    return reject(
      'ExternalDataFileNotAllowed',
      `the image keeps its data in an external file (${info.dataFile}), which this node must never ` +
        'read; make a self-contained copy first: qemu-img convert -O qcow2 image.qcow2 self-contained.qcow2',
    );
  }
  if (info.corrupt === true) {
    return reject(
      'CorruptImage',
      "the image's corrupt flag is set; repair it with qemu-img check -r all, or upload it again",
    );
  }
  if (info.virtualSize > targetSizeBytes) {
    return reject(
      'VirtualSizeTooLarge',
      `the image's virtual size is ${info.virtualSize} bytes but the target holds only ` +
        `${targetSizeBytes} bytes; set spec.target.size to at least ${info.virtualSize}`,
    );
  }
  return accepted;
}

/**
 * Decides from `qemu-img check` of a qcow2 image (raw images have nothing to check).
 * Leaked clusters (exit 3) are accepted: they are allocated but referenced by nothing, so they
 * waste space in the source file but never change what the guest reads, which is all that
 * convert copies. Images written by a process that crashed often have them; qemu-img itself
 * only offers to repair them.
 */
export function evaluateCheck(check: CheckResult): ImageVerdict {
  switch (check.status) {
    case 'clean':
    case 'leaks':
      return accepted;
    case 'corrupt':
      return reject(
        'CorruptImage',
        `qemu-img check found ${check.corruptions} corruption(s) in the image; repair it with ` +
          `qemu-img check -r all, or upload it again${check.detail ? `: ${check.detail}` : ''}`,
      );
    case 'incomplete':
    case 'unsupported':
      return reject(
        'CorruptImage',
        `qemu-img check could not verify the image${check.detail ? `: ${check.detail}` : ''}`,
      );
  }
}
