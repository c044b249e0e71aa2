// BoundedWriter into a real file: blocks of zeros inside a chunk stay holes, whatever the
// chunk size its source hands out; a flush started early is not repeated for nothing.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { BoundedWriter } from '../../../src/storage/download/bounded-writer.ts';

const KiB = 1024;
const dir = mkdtempSync(join(tmpdir(), 'lvp-bounded-writer-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('BoundedWriter', () => {
  it('leaves 64 KiB blocks of zeros inside a chunk unwritten, and writes everything else', async () => {
    const path = join(dir, 'image.raw');
    const file = await open(path, 'wx');
    const evicted: string[] = [];
    const writer = new BoundedWriter(file, path, {
      syncIntervalBytes: 1024 * KiB,
      pageCache: { evict: async (evictedPath) => void evicted.push(evictedPath) },
      skipZeroBlocks: true,
    });
    // One 4 MiB chunk: data, 2 MiB of zeros, data that is zero but for its last byte, zeros.
    const nearlyZero = Buffer.alloc(64 * KiB);
    nearlyZero[nearlyZero.length - 1] = 1;
    const chunk = Buffer.concat([
      randomBytes(100 * KiB),
      Buffer.alloc(2048 * KiB),
      nearlyZero,
      randomBytes(1000),
      Buffer.alloc(4096 * KiB - 100 * KiB - 2048 * KiB - 64 * KiB - 1000),
    ]);
    await writer.write([randomBytes(3), chunk.subarray(3)], 0);
    await writer.flush();
    await file.truncate(chunk.length);
    await file.close();
    const written = readFileSync(path);
    assert.deepEqual(written.subarray(3), chunk.subarray(3));
    // About 230 KiB of data (in 64 KiB blocks from each chunk's start, and the file system's
    // own blocks); writing the zeros too would allocate all 4 MiB.
    const allocated = statSync(path).blocks * 512;
    assert.ok(allocated <= 512 * KiB, `${allocated} bytes allocated`);
    assert.ok(evicted.length >= 1 && evicted.every((each) => each === path), 'the flush evicted the file');
  });

  /** A writer whose flushes are counted by their evictions (one after each datasync). */
  async function counted(name: string, evict: (path: string) => Promise<void> = async () => {}) {
    const path = join(dir, name);
    const file = await open(path, 'wx');
    const flushes: string[] = [];
    const writer = new BoundedWriter(file, path, {
      syncIntervalBytes: 1024 * KiB,
      pageCache: {
        evict: async (evictedPath) => {
          flushes.push(evictedPath);
          await evict(evictedPath);
        },
      },
      skipZeroBlocks: true,
    });
    return { file, writer, flushes };
  }

  it('after startFlush, flush only waits for it unless something was written or sized since', async () => {
    const { file, writer, flushes } = await counted('early.raw');
    await writer.write([randomBytes(64 * KiB)], 0);
    writer.startFlush();
    await writer.flush();
    assert.equal(flushes.length, 1, 'the early flush covered everything');
    await writer.write([randomBytes(64 * KiB)], 64 * KiB);
    await writer.flush();
    assert.equal(flushes.length, 2, 'a write after the early flush is flushed');
    await writer.setSize(1024 * KiB);
    await writer.flush();
    assert.equal(flushes.length, 3, 'a new size is flushed');
    await writer.flush();
    assert.equal(flushes.length, 3, 'nothing new, nothing flushed');
    await file.close();
    assert.equal(statSync(join(dir, 'early.raw')).size, 1024 * KiB);
  });

  it('reports an early flush that failed from the next flush', async () => {
    const { file, writer } = await counted('failing.raw', async () => {
      throw new Error('eviction failed');
    });
    await writer.write([randomBytes(64 * KiB)], 0);
    writer.startFlush();
    await writer.idle();
    await assert.rejects(writer.flush(), /eviction failed/);
    await file.close();
  });
});
