import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeL1Entry,
  decodeL2Entry,
  guestBytesPerL2Table,
  HEADER_BYTES,
  parseHeader,
  type Qcow2Header,
} from '../../../src/storage/qcow2/layout.ts';

/** A version 3 header with 64 KiB clusters for a 1 GiB disk, with `change` applied. */
function header(change: (bytes: Buffer) => void = () => {}): Buffer {
  const bytes = Buffer.alloc(HEADER_BYTES);
  bytes.writeUInt32BE(0x514649fb, 0);
  bytes.writeUInt32BE(3, 4);
  bytes.writeUInt32BE(16, 20);
  bytes.writeBigUInt64BE(1n << 30n, 24);
  bytes.writeUInt32BE(2, 36);
  bytes.writeBigUInt64BE(0x30000n, 40);
  bytes.writeUInt32BE(104, 100);
  change(bytes);
  return bytes;
}

const parsed = parseHeader(header()) as Qcow2Header;

describe('parseHeader', () => {
  it('reads the mapping facts of a version 3 header', () => {
    assert.deepEqual(parsed, {
      version: 3,
      clusterBits: 16,
      clusterSize: 65536,
      virtualSize: 1 << 30,
      l1Entries: 2,
      l1Offset: 0x30000,
    });
    assert.equal(guestBytesPerL2Table(parsed), 512 * 1024 * 1024);
  });

  it('refuses what it does not decode as qemu does, saying what', () => {
    const cases: [string, (bytes: Buffer) => void][] = [
      ['qcow2 version 1 is not decoded here', (b) => b.writeUInt32BE(1, 4)],
      ['the image names a backing file', (b) => b.writeBigUInt64BE(0x200n, 8)],
      ['a cluster size of 2^22 bytes is invalid', (b) => b.writeUInt32BE(22, 20)],
      ['the image is encrypted', (b) => b.writeUInt32BE(2, 32)],
      ['incompatible features 0x1 are set', (b) => b.writeBigUInt64BE(1n, 72)],
      ['the L1 table is not cluster-aligned', (b) => b.writeBigUInt64BE(0x30200n, 40)],
      ['the L1 table is too small for the virtual size', (b) => b.writeUInt32BE(1, 36)],
      ['the image does not start with the qcow2 magic', (b) => b.writeUInt32BE(0, 0)],
    ];
    for (const [reason, change] of cases) assert.equal(parseHeader(header(change)), reason);
    assert.equal(parseHeader(header().subarray(0, 72)), 'the header needs 104 bytes, 72 arrived');
  });

  it('ignores the version 3 feature fields in a version 2 header', () => {
    const v2 = parseHeader(
      header((b) => {
        b.writeUInt32BE(2, 4);
        b.writeBigUInt64BE(1n, 72);
      }),
    );
    assert.equal((v2 as Qcow2Header).version, 2);
  });
});

describe('decodeL1Entry and decodeL2Entry', () => {
  it('maps data, zeros and unallocated clusters', () => {
    assert.equal(decodeL1Entry(parsed, (1n << 63n) | 0x50000n), 0x50000);
    assert.equal(decodeL1Entry(parsed, 0n), 0);
    assert.deepEqual(decodeL2Entry(parsed, (1n << 63n) | 0x70000n), { kind: 'data', offset: 0x70000 });
    assert.deepEqual(decodeL2Entry(parsed, 0n), { kind: 'zeros' });
    assert.deepEqual(decodeL2Entry(parsed, 0x70000n | 1n), { kind: 'zeros' });
  });

  it('decodes a compressed cluster’s offset and length as qemu does', () => {
    // 64 KiB clusters: the offset takes bits 0–53, the extra sectors bits 54–61.
    const entry = (1n << 62n) | (3n << 54n) | 0x12345n;
    assert.deepEqual(decodeL2Entry(parsed, entry), {
      kind: 'compressed',
      offset: 0x12345,
      length: 4 * 512 - (0x12345 % 512),
    });
  });

  it('refuses reserved bits, unaligned offsets and the zero flag of version 2', () => {
    assert.equal(decodeL1Entry(parsed, 0x50000n | 2n), 'an L1 entry (0x50002) sets reserved bits');
    assert.equal(decodeL1Entry(parsed, 0x50200n), 'an L2 table offset (328192) is not cluster-aligned');
    assert.equal(decodeL2Entry(parsed, 0x70000n | 4n), 'an L2 entry (0x70004) sets reserved bits');
    assert.equal(decodeL2Entry(parsed, 0x70200n), 'a data cluster offset (459264) is not cluster-aligned');
    const v2 = { ...parsed, version: 2 as const };
    assert.equal(decodeL2Entry(v2, 1n), 'a version 2 image sets the zero flag, which it does not have');
  });
});
