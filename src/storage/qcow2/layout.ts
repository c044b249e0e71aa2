// The parts of the qcow2 format (qemu's docs/interop/qcow2.txt) that map a guest offset to the
// bytes of the file, so that an image can be written into its target while it downloads.
// Pure decoding of bytes: anything this does not understand exactly as qemu does is refused
// with a reason, and the image is then converted by qemu-img as before.

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  /** The guest disk's size in bytes. */
  virtualSize: number;
  l1Entries: number;
  l1Offset: number;
}

/** What the first bytes of the file must hold for parseHeader: the version 3 fields. */
export const HEADER_BYTES = 104;

const MAGIC = 0x514649fb; // "QFI\xfb"
/** An L1 table larger than this (256 TiB of guest disk with 64 KiB clusters) is refused. */
const MAX_L1_BYTES = 32 * 1024 * 1024;

/** The header's mapping facts, or why this image cannot be decoded here. */
export function parseHeader(bytes: Buffer): Qcow2Header | string {
  if (bytes.length < HEADER_BYTES) return `the header needs ${HEADER_BYTES} bytes, ${bytes.length} arrived`;
  if (bytes.readUInt32BE(0) !== MAGIC) return 'the image does not start with the qcow2 magic';
  const version = bytes.readUInt32BE(4);
  if (version !== 2 && version !== 3) return `qcow2 version ${version} is not decoded here`;
  if (bytes.readBigUInt64BE(8) !== 0n) return 'the image names a backing file';
  const clusterBits = bytes.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) return `a cluster size of 2^${clusterBits} bytes is invalid`;
  if (bytes.readUInt32BE(32) !== 0) return 'the image is encrypted';
  if (version === 3 && bytes.readBigUInt64BE(72) !== 0n)
    return `incompatible features 0x${bytes.readBigUInt64BE(72).toString(16)} are set`;
  const clusterSize = 2 ** clusterBits;
  const virtualSize = safeNumber(bytes.readBigUInt64BE(24));
  const l1Entries = bytes.readUInt32BE(36);
  const l1Offset = safeNumber(bytes.readBigUInt64BE(40));
  if (virtualSize === undefined || l1Offset === undefined) return 'the header holds offsets beyond 2^53';
  if (l1Offset % clusterSize !== 0) return 'the L1 table is not cluster-aligned';
  if (l1Entries * 8 > MAX_L1_BYTES) return `an L1 table of ${l1Entries} entries is too large`;
  const guestPerL1Entry = clusterSize * (clusterSize / 8);
  if (l1Entries * guestPerL1Entry < virtualSize) return 'the L1 table is too small for the virtual size';
  return { version, clusterBits, clusterSize, virtualSize, l1Entries, l1Offset };
}

const OFFSET_MASK = 0x00fffffffffffe00n;
const L1_RESERVED_MASK = 0x7f000000000001ffn;
const L2_RESERVED_MASK = 0x3f000000000001fen;
const COMPRESSED_FLAG = 1n << 62n;
const ZERO_FLAG = 1n;

/** The file offset of an L2 table (0: none, the range reads as zeros), or why it is invalid. */
export function decodeL1Entry(header: Qcow2Header, entry: bigint): number | string {
  if (entry & L1_RESERVED_MASK) return `an L1 entry (0x${entry.toString(16)}) sets reserved bits`;
  const offset = Number(entry & OFFSET_MASK);
  if (offset % header.clusterSize !== 0) return `an L2 table offset (${offset}) is not cluster-aligned`;
  return offset;
}

/** Where a guest cluster's bytes are. */
export type ClusterMapping =
  | { kind: 'zeros' }
  | { kind: 'data'; offset: number }
  /** Deflate-compressed: `length` bytes from `offset`, maybe running past the file's end. */
  | { kind: 'compressed'; offset: number; length: number };

/** Decodes a standard (not extended) L2 entry, or says why it is invalid. */
export function decodeL2Entry(header: Qcow2Header, entry: bigint): ClusterMapping | string {
  if (entry & COMPRESSED_FLAG) {
    // The entry's low bits hold the offset, the bits above them the extra 512-byte sectors.
    const offsetBits = BigInt(62 - (header.clusterBits - 8));
    const offset = Number(entry & ((1n << offsetBits) - 1n));
    const sectors = Number((entry >> offsetBits) & ((1n << BigInt(header.clusterBits - 8)) - 1n)) + 1;
    return { kind: 'compressed', offset, length: sectors * 512 - (offset % 512) };
  }
  if (entry & L2_RESERVED_MASK) return `an L2 entry (0x${entry.toString(16)}) sets reserved bits`;
  if (entry & ZERO_FLAG) {
    if (header.version === 2) return 'a version 2 image sets the zero flag, which it does not have';
    return { kind: 'zeros' };
  }
  const offset = Number(entry & OFFSET_MASK);
  if (offset === 0) return { kind: 'zeros' };
  if (offset % header.clusterSize !== 0) return `a data cluster offset (${offset}) is not cluster-aligned`;
  return { kind: 'data', offset };
}

/** How many bytes of guest disk one L2 table maps. */
export function guestBytesPerL2Table(header: Qcow2Header): number {
  return header.clusterSize * (header.clusterSize / 8);
}

function safeNumber(value: bigint): number | undefined {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined;
}
