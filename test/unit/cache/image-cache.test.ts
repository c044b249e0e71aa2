// The image cache with a real SQLite index and real files, over a fake Downloader: hits and
// stale entries, content addressing, LRU eviction under size and age limits, leases, shared
// downloads and aborts, start-up cleanup, and the download rates it records.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { PipelineError } from '../../../src/pipeline/types.ts';
import {
  type CacheLease,
  ImageCache,
  type ImageCacheOptions,
} from '../../../src/storage/cache/image-cache.ts';
import { StateDatabase } from '../../../src/storage/state/database.ts';
import { StageRateStore } from '../../../src/storage/state/stage-rates.ts';
import { FakeClock } from '../../support/fake-clock.ts';
import { FakeDownloader, sha256 } from './fake-downloader.ts';

const MiB = 1024 * 1024;
const never = new AbortController().signal;

let root: string;
let database: StateDatabase;
let downloader: FakeDownloader;
let clock: FakeClock;
let cache: ImageCache;

const cacheDir = () => join(root, 'cache');
const files = () => readdirSync(cacheDir()).sort();
const blobFile = (content: Buffer) => `${sha256(content)}.img`;

async function openCache(options: Partial<ImageCacheOptions> = {}): Promise<ImageCache> {
  cache = new ImageCache({ dir: cacheDir(), database, downloader, clock, ...options });
  await cache.open();
  return cache;
}

async function acquire(url: string, signal: AbortSignal = never, onProgress?: (done: number) => void) {
  const stat = await downloader.stat({ url });
  return cache.acquire({ url }, stat, { signal, ...(onProgress ? { onProgress } : {}) });
}

/** Acquires and releases at once; returns whether it was a hit. */
async function use(url: string): Promise<boolean> {
  const lease = await acquire(url);
  lease.release();
  clock.advance(1_000);
  return lease.hit;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => assert.fail('expected a rejection'),
    (error: unknown) => error,
  );
}

/** Lets the cache's background work run until `condition` holds. */
async function until(condition: () => boolean): Promise<void> {
  for (let turn = 0; !condition(); turn++) {
    if (turn > 1_000) assert.fail('condition never held');
    await nextTurn();
  }
}

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'lvp-cache-'));
  database = StateDatabase.open(join(root, 'state', 'provisioner.db'));
  downloader = new FakeDownloader();
  clock = new FakeClock();
});

afterEach(async () => {
  await cache?.close();
  database.close();
  rmSync(root, { recursive: true, force: true });
});

describe('ImageCache lookups', () => {
  it('downloads on a miss, then hits without downloading, reading the same verified file', async () => {
    const content = randomBytes(1000);
    downloader.put('s3://b/a.raw', content, { sidecar: true });
    await openCache();
    const first = await acquire('s3://b/a.raw');
    assert.equal(first.hit, false);
    assert.deepEqual(readFileSync(first.path), content);
    first.release();
    const second = await acquire('s3://b/a.raw');
    assert.equal(second.hit, true);
    assert.equal(second.path, first.path);
    assert.equal(second.sha256, sha256(content));
    assert.deepEqual(downloader.downloads, ['s3://b/a.raw']);
    assert.deepEqual(files(), [blobFile(content)]);
  });

  it('treats an entry whose source changed (same size, new .sha256) as stale: downloads again, removes the old file', async () => {
    const v1 = randomBytes(1000);
    const v2 = randomBytes(1000);
    downloader.put('s3://b/a.raw', v1, { sidecar: true });
    await openCache();
    assert.equal(await use('s3://b/a.raw'), false);
    downloader.put('s3://b/a.raw', v2, { sidecar: true });
    const lease = await acquire('s3://b/a.raw');
    assert.equal(lease.hit, false);
    assert.deepEqual(readFileSync(lease.path), v2);
    assert.equal(downloader.downloads.length, 2);
    await until(() => files().length === 1);
    assert.deepEqual(files(), [blobFile(v2)]);
  });

  it('treats a size change as stale even without any checksum', async () => {
    downloader.put('http://h/a.raw', randomBytes(1000));
    await openCache();
    assert.equal(await use('http://h/a.raw'), false);
    assert.equal(await use('http://h/a.raw'), true);
    downloader.put('http://h/a.raw', randomBytes(1001));
    assert.equal(await use('http://h/a.raw'), false);
  });

  it('records the spec checksum an entry was verified against and hits only for that one', async () => {
    const content = randomBytes(500);
    downloader.put('s3://b/a.raw', content);
    await openCache();
    const sha512 = `sha512:${createHash('sha512').update(content).digest('hex')}`;
    const stat = await downloader.stat({ url: 's3://b/a.raw', checksum: sha512 });
    const first = await cache.acquire({ url: 's3://b/a.raw', checksum: sha512 }, stat, { signal: never });
    first.release();
    assert.equal(cache.list()[0]?.verifiedChecksum, sha512);
    const again = await cache.acquire({ url: 's3://b/a.raw', checksum: sha512 }, stat, { signal: never });
    again.release();
    assert.equal(again.hit, true);
    const other = `sha512:${'0'.repeat(128)}`;
    const otherStat = await downloader.stat({ url: 's3://b/a.raw', checksum: other });
    assert.equal(otherStat.expectedChecksum?.hex, '0'.repeat(128));
    // A different expectation is a miss (and here the fake downloader does not verify).
    const miss = await cache.acquire({ url: 's3://b/a.raw', checksum: other }, otherStat, { signal: never });
    miss.release();
    assert.equal(miss.hit, false);
  });

  it('serves a second URL whose .sha256 names content already cached without downloading, from one file', async () => {
    const content = randomBytes(800);
    downloader.put('s3://b/one.raw', content, { sidecar: true });
    downloader.put('s3://other/copy.raw', content, { sidecar: true });
    await openCache();
    assert.equal(await use('s3://b/one.raw'), false);
    assert.equal(await use('s3://other/copy.raw'), true);
    assert.deepEqual(downloader.downloads, ['s3://b/one.raw']);
    assert.deepEqual(files(), [blobFile(content)]);
    assert.deepEqual(
      cache
        .list()
        .map((entry) => entry.url)
        .sort(),
      ['s3://b/one.raw', 's3://other/copy.raw'],
    );
  });

  it('keeps one file when two URLs without checksums turn out to hold the same content', async () => {
    const content = randomBytes(800);
    downloader.put('http://h/one.raw', content);
    downloader.put('http://h/two.raw', content);
    await openCache();
    await use('http://h/one.raw');
    await use('http://h/two.raw');
    assert.equal(downloader.downloads.length, 2);
    await until(() => files().length === 1);
    assert.deepEqual(files(), [blobFile(content)]);
    await cache.evict('http://h/one.raw');
    assert.deepEqual(files(), [blobFile(content)], 'the other URL still needs the file');
    await cache.evict('http://h/two.raw');
    assert.deepEqual(files(), []);
  });

  it('keeps the old file for a job still reading it while the changed source is downloaded beside it', async () => {
    const v1 = randomBytes(600);
    const v2 = randomBytes(600);
    downloader.put('s3://b/a.raw', v1, { sidecar: true });
    await openCache();
    const reading = await acquire('s3://b/a.raw');
    downloader.put('s3://b/a.raw', v2, { sidecar: true });
    const next = await acquire('s3://b/a.raw');
    assert.equal(next.hit, false);
    assert.deepEqual(readFileSync(reading.path), v1);
    assert.deepEqual(readFileSync(next.path), v2);
    reading.release();
    await until(() => files().length === 1);
    assert.deepEqual(files(), [blobFile(v2)]);
    next.release();
  });
});

describe('ImageCache limits', () => {
  it('evicts the least recently used entry to make room, and removes its file', async () => {
    const [a, b, c, d] = [randomBytes(100), randomBytes(100), randomBytes(100), randomBytes(100)];
    downloader.put('s3://b/a', a);
    downloader.put('s3://b/b', b);
    downloader.put('s3://b/c', c);
    downloader.put('s3://b/d', d);
    await openCache({ maxBytes: 300 });
    await use('s3://b/a');
    await use('s3://b/b');
    await use('s3://b/c');
    assert.equal(await use('s3://b/a'), true, 'a is now more recently used than b');
    await use('s3://b/d');
    assert.deepEqual(
      cache.list().map((entry) => entry.url),
      ['s3://b/d', 's3://b/a', 's3://b/c'],
    );
    // With room on the disk, the download did not wait for the unlink.
    await until(() => files().length === 3);
    assert.deepEqual(files(), [a, c, d].map(blobFile).sort());
    assert.equal(await use('s3://b/b'), false, 'b was evicted');
  });

  it('waits for the evicted files to go before downloading when the disk lacks the room they free', async () => {
    const [a, b] = [randomBytes(200), randomBytes(200)];
    downloader.put('s3://b/a', a);
    downloader.put('s3://b/b', b);
    const spaceAsked: number[] = [];
    await openCache({
      maxBytes: 300,
      freeSpace: async (_dir, sizeBytes) => {
        spaceAsked.push(sizeBytes);
        return { free: 0, needed: sizeBytes };
      },
    });
    await use('s3://b/a');
    let filesAtStart: string[] = [];
    downloader.beforeStart = () => {
      filesAtStart = files();
    };
    await use('s3://b/b');
    assert.deepEqual(spaceAsked, [200, 200]);
    assert.deepEqual(filesAtStart, [], "a's file was gone before b's download began");
    assert.deepEqual(files(), [blobFile(b)]);
  });

  it('refuses an image larger than the whole cache with a clear error, without downloading', async () => {
    downloader.put('s3://b/huge', randomBytes(301));
    await openCache({ maxBytes: 300 });
    const error = await rejection(acquire('s3://b/huge'));
    assert.ok(error instanceof PipelineError);
    assert.equal(error.reason, 'InsufficientCacheSpace');
    assert.match(error.message, /301 bytes, more than the whole image cache may hold \(300 bytes\)/);
    assert.deepEqual(downloader.downloads, []);
  });

  it('never evicts an entry in use; fails clearly when only entries in use could make room', async () => {
    const [a, b, c] = [randomBytes(100), randomBytes(100), randomBytes(100)];
    downloader.put('s3://b/a', a);
    downloader.put('s3://b/b', b);
    downloader.put('s3://b/c', c);
    await openCache({ maxBytes: 200 });
    const leaseA = await acquire('s3://b/a');
    clock.advance(1_000);
    await use('s3://b/b');
    // a is older than b but in use, so b goes.
    const leaseC = await acquire('s3://b/c');
    assert.deepEqual(files(), [a, c].map(blobFile).sort());
    const error = await rejection(acquire('s3://b/b'));
    assert.ok(error instanceof PipelineError);
    assert.equal(error.reason, 'InsufficientCacheSpace');
    assert.match(error.message, /in use by running jobs and downloads in progress hold 200 of its 200 bytes/);
    assert.equal(downloader.downloads.filter((url) => url === 's3://b/b').length, 1);
    leaseA.release();
    assert.equal(await use('s3://b/b'), false);
    assert.deepEqual(files(), [b, c].map(blobFile).sort());
    leaseC.release();
  });

  it('counts a download in progress against the limit', async () => {
    downloader.put('s3://b/a', randomBytes(100));
    downloader.put('s3://b/b', randomBytes(150));
    await openCache({ maxBytes: 200 });
    downloader.hold = true;
    const pending = acquire('s3://b/a');
    const error = await rejection(acquire('s3://b/b'));
    assert.ok(error instanceof PipelineError && error.reason === 'InsufficientCacheSpace');
    await until(() => downloader.held === 1);
    downloader.finishHeld();
    (await pending).release();
  });

  it('expires entries maxAgeMs after they were downloaded: a lookup downloads again, others are swept', async () => {
    const [a, b] = [randomBytes(100), randomBytes(100)];
    downloader.put('s3://b/a', a);
    downloader.put('s3://b/b', b);
    await openCache({ maxAgeMs: 10_000 });
    await use('s3://b/a');
    assert.equal(await use('s3://b/a'), true);
    clock.advance(10_000);
    assert.equal(await use('s3://b/a'), false, 'expired, although used recently');
    await use('s3://b/b');
    clock.advance(9_500);
    await use('s3://b/b');
    await until(() => files().length === 1);
    assert.deepEqual(files(), [blobFile(b)], 'a expired and was swept when b was looked up');
  });
});

describe('ImageCache leases and the CachedImage API', () => {
  it('lists entries with size, digest, last use and whether a job uses them', async () => {
    const content = randomBytes(300);
    downloader.put('s3://b/a', content, { sidecar: true });
    await openCache();
    const lease = await acquire('s3://b/a');
    assert.deepEqual(cache.list(), [
      {
        url: 's3://b/a',
        sizeBytes: 300,
        sha256: sha256(content),
        verifiedChecksum: `sha256:${sha256(content)}`,
        cachedAt: new Date(clock.now()),
        lastUsed: new Date(clock.now()),
        inUse: true,
      },
    ]);
    clock.advance(5_000);
    lease.release();
    lease.release();
    assert.equal(cache.list()[0]?.inUse, false);
    assert.deepEqual(cache.list()[0]?.lastUsed, new Date(clock.now()), 'release counts as a use');
  });

  it('evict refuses while the entry is in use, then removes entry and file', async () => {
    const content = randomBytes(300);
    downloader.put('s3://b/a', content);
    await openCache();
    const lease = await acquire('s3://b/a');
    const error = await rejection(cache.evict('s3://b/a'));
    assert.ok(error instanceof PipelineError);
    assert.equal(error.reason, 'CachedImageInUse');
    assert.match(
      error.message,
      /s3:\/\/b\/a is in use by 1 running job\(s\); it can be evicted when they finish/,
    );
    assert.deepEqual(files(), [blobFile(content)]);
    lease.release();
    assert.equal(await cache.evict('s3://b/a'), true);
    assert.deepEqual(cache.list(), []);
    assert.deepEqual(files(), []);
    assert.equal(await cache.evict('s3://b/a'), false);
  });

  it('pre-warms: downloads and releases, so the entry is cached and not in use', async () => {
    const content = randomBytes(300);
    downloader.put('s3://b/a', content);
    await openCache();
    const stat = await downloader.stat({ url: 's3://b/a' });
    const result = await cache.prewarm({ url: 's3://b/a' }, stat, never);
    assert.deepEqual(result, {
      sizeBytes: 300,
      sha256: sha256(content),
      hit: false,
      lastUsed: new Date(clock.now()),
    });
    assert.equal(cache.list()[0]?.inUse, false);
    assert.equal((await cache.prewarm({ url: 's3://b/a' }, stat, never)).hit, true);
  });
});

describe('ImageCache shared downloads', () => {
  it('downloads once for two concurrent jobs and reports progress to both', async () => {
    const content = randomBytes(1000);
    downloader.put('s3://b/a', content);
    await openCache();
    const progress: [number[], number[]] = [[], []];
    const leases = await Promise.all([
      acquire('s3://b/a', never, (done) => progress[0].push(done)),
      acquire('s3://b/a', never, (done) => progress[1].push(done)),
    ]);
    assert.deepEqual(downloader.downloads, ['s3://b/a']);
    assert.equal(leases[0].path, leases[1].path);
    assert.deepEqual(readFileSync(leases[0].path), content);
    assert.deepEqual(progress, [
      [500, 1000],
      [500, 1000],
    ]);
    assert.equal(cache.list()[0]?.inUse, true);
    leases[0].release();
    assert.equal(cache.list()[0]?.inUse, true, 'the other job still holds it');
    leases[1].release();
    assert.equal(cache.list()[0]?.inUse, false);
  });

  it('tells each job on a miss whether the download is its own or joined, and a hit nothing', async () => {
    downloader.put('s3://b/a', randomBytes(1000));
    await openCache();
    const stat = await downloader.stat({ url: 's3://b/a' });
    const told: string[] = [];
    const acquireAs = (job: string) =>
      cache.acquire({ url: 's3://b/a' }, stat, {
        signal: never,
        onDownload: (own) => told.push(`${job}: ${own ? 'own' : 'joined'}`),
      });
    const leases = await Promise.all([acquireAs('starter'), acquireAs('joiner')]);
    (await acquireAs('hit')).release();
    for (const lease of leases) lease.release();
    assert.deepEqual(told, ['starter: own', 'joiner: joined']);
    assert.deepEqual(downloader.downloads, ['s3://b/a']);
  });

  it('keeps downloading for the other job when one of two aborts', async () => {
    const content = randomBytes(1000);
    downloader.put('s3://b/a', content);
    await openCache();
    downloader.hold = true;
    const quitter = new AbortController();
    const abandoned = acquire('s3://b/a', quitter.signal);
    const kept = acquire('s3://b/a');
    await until(() => downloader.held === 1);
    quitter.abort(new Error('job deleted'));
    assert.match(String(await rejection(abandoned)), /job deleted/);
    assert.equal(downloader.signals[0]?.aborted, false);
    downloader.finishHeld();
    const lease = await kept;
    assert.deepEqual(readFileSync(lease.path), content);
    assert.equal(downloader.downloads.length, 1);
    lease.release();
  });

  it('aborts the download when every job aborts, leaving no partial file and no entry', async () => {
    downloader.put('s3://b/a', randomBytes(1000));
    await openCache();
    downloader.hold = true;
    const first = new AbortController();
    const second = new AbortController();
    const waits = [acquire('s3://b/a', first.signal), acquire('s3://b/a', second.signal)];
    await until(() => downloader.held === 1);
    assert.equal(files().length, 1, 'a partial file while downloading');
    first.abort(new Error('first gone'));
    second.abort(new Error('second gone'));
    await Promise.all(waits.map(rejection));
    assert.equal(downloader.signals[0]?.aborted, true);
    // Checked at once: the last job to leave returns only once the partial file is gone.
    assert.deepEqual(files(), []);
    assert.deepEqual(cache.list(), []);
    await cache.close();
    downloader.hold = false;
    assert.equal(await use('s3://b/a'), false, 'a later job downloads afresh');
    assert.equal(downloader.downloads.length, 2);
  });

  it('rejects every waiter with the download error and keeps nothing', async () => {
    downloader.put('s3://b/a', randomBytes(1000));
    const stat = await downloader.stat({ url: 's3://b/a' });
    await openCache({ downloader: new FakeDownloader() });
    const errors = await Promise.all([
      rejection(cache.acquire({ url: 's3://b/a' }, stat, { signal: never })),
      rejection(cache.acquire({ url: 's3://b/a' }, stat, { signal: never })),
    ]);
    for (const error of errors) assert.match(String(error), /no fake object at s3:\/\/b\/a/);
    assert.deepEqual(files(), []);
    assert.deepEqual(cache.list(), []);
  });
});

describe('ImageCache start-up', () => {
  it('removes partial files, unindexed files and rows whose file is missing or damaged', async () => {
    const [kept, gone, damaged] = [randomBytes(100), randomBytes(100), randomBytes(100)];
    downloader.put('s3://b/kept', kept);
    downloader.put('s3://b/gone', gone);
    downloader.put('s3://b/damaged', damaged);
    await openCache();
    await use('s3://b/kept');
    await use('s3://b/gone');
    await use('s3://b/damaged');
    await cache.close();
    // What a crash and an operator leave behind:
    unlinkSync(join(cacheDir(), blobFile(gone)));
    truncateSync(join(cacheDir(), blobFile(damaged)), 10);
    writeFileSync(join(cacheDir(), '.partial-0123456789abcdef'), 'half a download');
    const orphan = `${'ab'.repeat(32)}.img`;
    writeFileSync(join(cacheDir(), orphan), 'a file the index does not know');
    writeFileSync(join(cacheDir(), 'NOTES.txt'), 'not the cache');

    cache = new ImageCache({ dir: cacheDir(), database, downloader, clock });
    const report = await cache.open();
    assert.deepEqual(
      report.removedFiles.sort(),
      ['.partial-0123456789abcdef', blobFile(damaged), orphan].sort(),
    );
    assert.deepEqual(
      report.removedEntries.sort((x, y) => x.url.localeCompare(y.url)),
      [
        { url: 's3://b/damaged', reason: 'wrongFileSize' },
        { url: 's3://b/gone', reason: 'missingFile' },
      ],
    );
    assert.deepEqual(files(), ['NOTES.txt', blobFile(kept)].sort());
    assert.deepEqual(
      cache.list().map((entry) => entry.url),
      ['s3://b/kept'],
    );
    assert.equal(await use('s3://b/kept'), true);
    assert.equal(await use('s3://b/gone'), false);
  });

  it('drops expired entries and, when the limit was lowered, the least recently used ones', async () => {
    const [a, b, c] = [randomBytes(100), randomBytes(100), randomBytes(100)];
    downloader.put('s3://b/a', a);
    downloader.put('s3://b/b', b);
    downloader.put('s3://b/c', c);
    await openCache();
    await use('s3://b/a');
    clock.advance(60_000);
    await use('s3://b/b');
    await use('s3://b/c');
    await cache.close();
    cache = new ImageCache({ dir: cacheDir(), database, downloader, clock, maxBytes: 100, maxAgeMs: 30_000 });
    const report = await cache.open();
    assert.deepEqual(report.removedEntries, [
      { url: 's3://b/a', reason: 'expired' },
      { url: 's3://b/b', reason: 'overSizeLimit' },
    ]);
    assert.deepEqual(files(), [blobFile(c)]);
  });
});

describe('ImageCache download rates', () => {
  it('records each download rate once, not for hits or tiny images', async () => {
    const rates = new StageRateStore(database);
    downloader.put('s3://b/big', Buffer.alloc(8 * MiB, 1));
    downloader.put('s3://b/tiny', randomBytes(100));
    downloader.beforeFinish = () => clock.advance(2_000);
    await openCache({ rates });
    const leases: CacheLease[] = await Promise.all([acquire('s3://b/big'), acquire('s3://b/big')]);
    for (const lease of leases) lease.release();
    await use('s3://b/big');
    await use('s3://b/tiny');
    assert.deepEqual(rates.rates(), { download: (8 * MiB) / 2, convert: 200e6 });
  });
});
