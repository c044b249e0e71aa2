// qcow2 images decoded into a file target as they arrive (Qcow2TargetMirror), against what real
// qemu-img makes of the same images: images written by qemu-img and qemu-io in every layout the
// decoder accepts, fed in batches of several sizes, must come out byte for byte as
// `qemu-img convert -O raw` writes them; anything it does not decode must detach it.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { setTimeout } from 'node:timers/promises';
import { Qcow2TargetMirror } from '../../src/pipeline/qcow2-mirror.ts';
import { ddPageCache, type PageCache } from '../../src/storage/download/index.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { sha256 } from '../support/images.ts';
import { residentBytes } from '../support/page-cache.ts';

const MiB = 1024 * 1024;
/** Not a whole number of clusters: the last one is partly past the guest disk's end. */
const VIRTUAL_BYTES = 8 * MiB + 1536;

/** Random stripes, zeros and an odd tail, as a guest disk holds. */
function guestDisk(): Buffer {
  const disk = Buffer.alloc(VIRTUAL_BYTES);
  for (let offset = 0; offset < VIRTUAL_BYTES; offset += 640 * 1024)
    if ((offset / (640 * 1024)) % 3 !== 1) randomBytes(320 * 1024).copy(disk, offset + 100);
  randomBytes(1000).copy(disk, VIRTUAL_BYTES - 1000);
  return disk;
}

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args);
const qemuIo = (image: string, ...commands: string[]) =>
  execFileSync('qemu-io', ['-f', 'qcow2', ...commands.flatMap((command) => ['-c', command]), image]);

/** A small deterministic generator (mulberry32), so that a failing round can be run again. */
function seededRandom(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let mixed = Math.imul(state ^ (state >>> 15), 1 | state);
    mixed = (mixed + Math.imul(mixed ^ (mixed >>> 7), 61 | mixed)) ^ mixed;
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 2 ** 32;
  };
}

interface MirrorExtras {
  targetBytes?: number;
  isBlockDevice?: boolean;
  syncIntervalBytes?: number;
  pageCache?: PageCache;
}

interface Mirrored {
  complete: boolean;
  detached: string[];
  target: string;
}

describe('qcow2 images decoded into a file target as they download', { timeout: 120_000 }, () => {
  let workDir: string;
  let rawPath: string;
  let count = 0;
  /** A new file name in the work folder. */
  const fresh = (prefix: string, extension: string) => {
    count += 1;
    return join(workDir, `${prefix}-${count}.${extension}`);
  };

  before(() => {
    workDir = makeWorkDir('qcow2-mirror');
    rawPath = join(workDir, 'disk.raw');
    writeFileSync(rawPath, guestDisk());
  });

  /** Feeds the image to a mirror in batches of `batchBytes`, as a download does, then finishes it. */
  async function mirror(image: string, batchBytes: number, extra: MirrorExtras = {}): Promise<Mirrored> {
    const { mirrored, detached, target } = await feed(image, batchBytes, extra);
    return { complete: await mirrored.finish(image), detached, target };
  }

  /** Feeds the image to a new mirror in batches of `batchBytes`, as a download does. */
  async function feed(image: string, batchBytes: number, extra: MirrorExtras = {}) {
    const bytes = readFileSync(image);
    const target = fresh('target', 'img');
    const detached: string[] = [];
    const mirrored = new Qcow2TargetMirror({
      path: target,
      isBlockDevice: extra.isBlockDevice ?? false,
      imageBytes: bytes.length,
      targetBytes: extra.targetBytes ?? 16 * MiB,
      signal: new AbortController().signal,
      syncIntervalBytes: extra.syncIntervalBytes ?? MiB,
      pageCache: extra.pageCache ?? ddPageCache(),
      onDetach: (reason) => detached.push(reason),
    });
    for (let position = 0; position < bytes.length; position += batchBytes) {
      // Batches come as several chunks, as the download's reads do.
      const batch = bytes.subarray(position, position + batchBytes);
      const half = Math.floor(batch.length / 2);
      await mirrored.write([batch.subarray(0, half), batch.subarray(half)], position);
    }
    return { mirrored, detached, target };
  }

  /** What qemu-img writes for the image: the reference. */
  function converted(image: string): Buffer {
    const out = fresh('converted', 'raw');
    qemuImg('convert', '-f', 'qcow2', '-O', 'raw', image, out);
    return readFileSync(out);
  }

  /** Asserts the mirror wrote what qemu-img writes, once the target has its size (as a commit gives it). */
  function assertSameAsQemuImg(result: Mirrored, image: string): void {
    assert.deepEqual(result.detached, []);
    assert.equal(result.complete, true);
    truncateSync(result.target, VIRTUAL_BYTES);
    assert.equal(sha256(readFileSync(result.target)), sha256(converted(image)));
  }

  const layouts: { name: string; options: string[]; batches: number[] }[] = [
    { name: 'default (64 KiB clusters, version 3)', options: [], batches: [MiB, 4097] },
    { name: '512-byte clusters', options: ['-o', 'cluster_size=512'], batches: [65_549] },
    { name: '2 MiB clusters', options: ['-o', 'cluster_size=2M'], batches: [MiB] },
    { name: 'version 2 (compat=0.10)', options: ['-o', 'compat=0.10'], batches: [MiB] },
    { name: 'compressed clusters', options: ['-c'], batches: [MiB, 3001] },
  ];
  for (const { name, options, batches } of layouts) {
    it(`writes what qemu-img convert writes: ${name}`, async () => {
      const image = fresh('layout', 'qcow2');
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', ...options, rawPath, image);
      for (const batchBytes of batches) assertSameAsQemuImg(await mirror(image, batchBytes), image);
    });
  }

  it('starts flushing the target as the last byte arrives, and flushes nothing twice', async () => {
    const image = fresh('flushed', 'qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, image);
    // One flush is one eviction; an interval larger than the image leaves only the last one.
    let evictions = 0;
    let flushed: () => void = () => {};
    const firstFlush = new Promise<void>((resolve) => {
      flushed = resolve;
    });
    const pageCache: PageCache = {
      evict: async () => {
        evictions += 1;
        flushed();
      },
    };
    const { mirrored, target } = await feed(image, MiB, { pageCache, syncIntervalBytes: 64 * MiB });
    const waiting = new AbortController();
    const noFlush = setTimeout(30_000, undefined, { signal: waiting.signal }).then(
      () => assert.fail('no flush began before finish()'),
      () => {}, // Cancelled below: the flush began.
    );
    await Promise.race([firstFlush, noFlush]);
    waiting.abort();
    assert.equal(await mirrored.finish(image), true);
    assert.equal(evictions, 1, 'finish() waited for the flush begun at the last byte and added none');
    assertSameAsQemuImg({ complete: true, detached: [], target }, image);
  });

  it('leaves the guest disk’s zeros as holes in the file', async () => {
    const image = join(workDir, 'sparse.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, image);
    const result = await mirror(image, MiB);
    assert.equal(result.complete, true);
    const allocated = statSync(result.target).blocks * 512;
    assert.ok(allocated < VIRTUAL_BYTES * 0.6, `${allocated} bytes allocated`);
  });

  it('reads zero clusters as zeros, over data written before them', async () => {
    const image = join(workDir, 'zeroed.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, image);
    // Zero flag with the cluster still allocated, and without.
    qemuIo(image, 'write -z 0 128k', 'write -z -u 1M 256k');
    assertSameAsQemuImg(await mirror(image, MiB), image);
  });

  it('reads back from the downloaded file what came before the table that maps it', async () => {
    // A snapshot shares the data; writing after it copies the L2 table to the file's end, so
    // the active table comes after the clusters it maps.
    const image = join(workDir, 'snapshot.qcow2');
    qemuImg('create', '-f', 'qcow2', image, String(VIRTUAL_BYTES));
    qemuIo(image, 'write -P 0x11 0 1M', 'write -P 0x33 3M 100k');
    qemuImg('snapshot', '-c', 'before', image);
    qemuIo(image, 'write -P 0x22 2M 64k');
    const result = await mirror(image, 256 * 1024);
    assert.equal(residentBytes(image), 0, 'what was read back left the page cache');
    assertSameAsQemuImg(result, image);
    const written = readFileSync(result.target);
    assert.equal(written[0], 0x11, 'a cluster read back');
    assert.equal(written[2 * MiB], 0x22, 'a cluster written as it arrived');
  });

  it('inflates many compressed clusters per batch, a few at a time: 2 MiB clusters of compressible data', async () => {
    const compressible = guestDisk();
    for (let index = 0; index < compressible.length; index += 1)
      compressible.writeUInt8(compressible.readUInt8(index) & 0x0f, index);
    const raw = fresh('compressible', 'raw');
    writeFileSync(raw, compressible);
    const [image, plain] = [fresh('compressible', 'qcow2'), fresh('uncompressed', 'qcow2')];
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-c', '-o', 'cluster_size=2M', raw, image);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=2M', raw, plain);
    assert.ok(statSync(image).size < statSync(plain).size - 2 * MiB, 'the clusters are stored compressed');
    for (const batchBytes of [4 * MiB, 65_536]) assertSameAsQemuImg(await mirror(image, batchBytes), image);
  });

  it('reads back and inflates compressed clusters that came before the table that maps them', async () => {
    const image = join(workDir, 'compressed-snapshot.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-c', rawPath, image);
    qemuImg('snapshot', '-c', 'before', image);
    qemuIo(image, 'write -P 0x22 2M 64k');
    assertSameAsQemuImg(await mirror(image, MiB), image);
  });

  it('never completes a target that differs from what qemu-img makes of a damaged image it accepts', async () => {
    // Changes to the first L2 table that qemu-img accepts (clusters swapped, unmapped or
    // zeroed) and random damage to the header, the L1 and the L2 table. Whenever the mirror
    // says the target is whole and qemu-img accepts the image as the job's inspection does
    // (info, then check without corruption), qemu-img must convert it to the same bytes.
    const images = ['', '-c'].map((option) => {
      const image = fresh('intact', 'qcow2');
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', ...(option ? [option] : []), rawPath, image);
      return readFileSync(image);
    });
    const random = seededRandom(7);
    const pick = (below: number) => Math.floor(random() * below);
    let completed = 0;
    let compared = 0;
    for (let round = 0; round < 80; round += 1) {
      const bytes = Buffer.from(images[round % 2] as Buffer);
      const l1Offset = Number(bytes.readBigUInt64BE(40));
      const l2Offset = Number(bytes.readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
      const entry = (index: number) => l2Offset + index * 8;
      const [first, second] = [pick(129), pick(129)];
      const damage = pick(4);
      let where = entry(first);
      if (damage === 0) {
        // Two guest clusters trade places: still consistent, and read differently.
        const swapped = bytes.readBigUInt64BE(entry(second));
        bytes.writeBigUInt64BE(bytes.readBigUInt64BE(entry(first)), entry(second));
        bytes.writeBigUInt64BE(swapped, entry(first));
      } else if (damage === 1)
        bytes.writeBigUInt64BE(0n, where); // unmapped: a leak
      else if (damage === 2)
        bytes.writeUInt8(bytes.readUInt8(where + 7) | 1, where + 7); // zero flag
      else {
        // A random byte or bit anywhere in the header, the L1 table or the L2 table.
        where = [pick(104), l1Offset + pick(8), entry(0) + pick(130 * 8)][pick(3)] as number;
        if (pick(2) === 0) bytes.writeUInt8(bytes.readUInt8(where) ^ (1 << pick(8)), where);
        else bytes.writeUInt8(pick(256), where);
      }
      const image = fresh('damaged', 'qcow2');
      writeFileSync(image, bytes);
      // One flush at the end: the rounds are many, and flushing is tested above.
      const result = await mirror(image, [MiB, 65_536][pick(2)] as number, { syncIntervalBytes: 64 * MiB });
      if (!result.complete) continue;
      completed += 1;
      const info = spawnSync('qemu-img', ['info', '--output=json', '-f', 'qcow2', image]);
      const check = spawnSync('qemu-img', ['check', '-f', 'qcow2', image]);
      if (info.status !== 0 || (check.status !== 0 && check.status !== 3)) continue;
      const reference = fresh('reference', 'raw');
      const converted = spawnSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, reference]);
      assert.equal(
        converted.status,
        0,
        `round ${round}: qemu-img accepts but cannot convert what the mirror completed`,
      );
      const virtualSize = (JSON.parse(info.stdout.toString()) as { 'virtual-size': number })['virtual-size'];
      truncateSync(result.target, virtualSize);
      assert.equal(
        sha256(readFileSync(result.target)),
        sha256(readFileSync(reference)),
        `round ${round}, byte ${where}`,
      );
      compared += 1;
    }
    // The damage must leave enough images whole for the comparison to mean something.
    assert.ok(compared >= 40, `${compared} of ${completed} completed targets compared`);
  });

  it('detaches from an image with a backing file, and writes nothing', async () => {
    const base = join(workDir, 'base.qcow2');
    const overlay = join(workDir, 'overlay.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, base);
    qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', base, overlay);
    const result = await mirror(overlay, MiB);
    assert.equal(result.complete, false);
    assert.deepEqual(result.detached, ['the image names a backing file']);
  });

  it('detaches from an L2 entry with reserved bits set', async () => {
    const image = join(workDir, 'reserved.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, image);
    const bytes = readFileSync(image);
    // The first L2 table's first entry: the L1 table's first entry gives its offset.
    const l1Offset = Number(bytes.readBigUInt64BE(40));
    const l2Offset = Number(bytes.readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
    bytes.writeUInt8(bytes.readUInt8(l2Offset + 7) | 0x02, l2Offset + 7);
    writeFileSync(image, bytes);
    const result = await mirror(image, MiB);
    assert.equal(result.complete, false);
    assert.equal(result.detached.length, 1);
    assert.match(result.detached[0] ?? '', /^an L2 entry \(0x[0-9a-f]+\) sets reserved bits$/);
  });

  it('detaches when the virtual size exceeds the target, or the target is a block device', async () => {
    const image = join(workDir, 'plain.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, image);
    const small = await mirror(image, MiB, { targetBytes: 8 * MiB });
    assert.equal(small.complete, false);
    assert.deepEqual(small.detached, [
      `the virtual size ${VIRTUAL_BYTES} exceeds the target's ${8 * MiB} bytes`,
    ]);
    const device = await mirror(image, MiB, { isBlockDevice: true });
    assert.equal(device.complete, false);
    assert.deepEqual(device.detached, ['a block device target is written by qemu-img']);
  });
});
