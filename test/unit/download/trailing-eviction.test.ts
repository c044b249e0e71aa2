import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type PageCache, TrailingEviction } from '../../../src/storage/download/index.ts';

const MiB = 1024 * 1024;

/** Records evictions and holds each one until the test lets it end. */
function heldPageCache() {
  const evicted: string[] = [];
  const pending: (() => void)[] = [];
  const pageCache: PageCache = {
    evict(path) {
      evicted.push(path);
      return new Promise((resolve) => pending.push(resolve));
    },
  };
  const releaseAll = () => {
    for (const release of pending.splice(0)) release();
  };
  return { pageCache, evicted, pending, releaseAll };
}

describe('TrailingEviction', () => {
  it('evicts each time the writer got another interval further, never two at a time', async () => {
    const cache = heldPageCache();
    const eviction = new TrailingEviction(cache.pageCache, '/pool/.vm.img.partial', 64 * MiB);
    eviction.progressed(10 * MiB);
    assert.deepEqual(cache.evicted, [], 'less than an interval written');
    eviction.progressed(64 * MiB);
    assert.equal(cache.evicted.length, 1);
    eviction.progressed(200 * MiB);
    assert.equal(cache.evicted.length, 1, 'the first eviction still runs');
    cache.releaseAll();
    await eviction.idle();
    eviction.progressed(120 * MiB);
    assert.equal(cache.evicted.length, 1, 'an interval is counted from the last eviction (64 MiB)');
    eviction.progressed(128 * MiB);
    assert.deepEqual(cache.evicted, ['/pool/.vm.img.partial', '/pool/.vm.img.partial']);
  });

  it('lets idle() wait for the eviction in flight, and finish() evict once more after it', async () => {
    const cache = heldPageCache();
    const eviction = new TrailingEviction(cache.pageCache, '/pool/file', MiB);
    eviction.progressed(MiB);
    let idle = false;
    const waiting = eviction.idle().then(() => {
      idle = true;
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(idle, false, 'idle() resolved while dd could still create the file anew');
    const finished = eviction.finish();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(cache.evicted.length, 1, 'finish() waits for the eviction in flight');
    cache.releaseAll();
    await waiting;
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(cache.evicted.length, 2, 'finish() evicted what the writer left');
    cache.releaseAll();
    await finished;
  });
});
