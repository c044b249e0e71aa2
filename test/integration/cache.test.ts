// The image cache with the real Downloader against the rig's real MinIO, a real SQLite file
// and real files: miss then hit, a changed object downloaded again, LRU eviction under a small
// limit, one download for concurrent jobs, and content shared between two object keys.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type CacheLease, ImageCache } from '../../src/storage/cache/image-cache.ts';
import {
  createDownloader,
  type Downloader,
  type DownloadOptions,
  type DownloadSource,
} from '../../src/storage/download/index.ts';
import { StateDatabase } from '../../src/storage/state/database.ts';
import { StageRateStore } from '../../src/storage/state/stage-rates.ts';
import type { Clock } from '../../src/util/clock.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { FakeClock } from '../support/fake-clock.ts';

const MiB = 1024 * 1024;
const BUCKET = 'images';
const never = new AbortController().signal;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const blobFile = (data: Buffer) => `${sha256(data)}.img`;

/** The real Downloader, counting the downloads that reach it. */
function countingDownloader(inner: Downloader): Downloader & { downloads: string[] } {
  const downloads: string[] = [];
  return {
    downloads,
    stat: (source, signal) => inner.stat(source, signal),
    download(source: DownloadSource, options: DownloadOptions) {
      downloads.push(source.url);
      return inner.download(source, options);
    },
  };
}

describe('image cache with MinIO', { timeout: 180_000 }, () => {
  let scratch: string;
  let minio: MinioServer;
  let database: StateDatabase;
  const caches: ImageCache[] = [];

  const credentials = () => ({ accessKeyId: minio.accessKey, secretKey: minio.secretKey });
  const source = (key: string): DownloadSource => ({
    url: `s3://${BUCKET}/${key}`,
    credentials: credentials(),
  });

  async function upload(key: string, content: Buffer, options: { sidecar?: boolean } = {}): Promise<void> {
    const client = minio.client();
    await client.putObject(BUCKET, key, content, content.length);
    if (options.sidecar) await client.putObject(BUCKET, `${key}.sha256`, `${sha256(content)}  ${key}\n`);
  }

  async function newCache(name: string, options: { maxBytes?: number; clock?: Clock } = {}) {
    const downloader = countingDownloader(
      createDownloader({
        s3Endpoint: { url: minio.endpoint },
        progressIntervalMs: 0,
        syncIntervalBytes: MiB,
      }),
    );
    const dir = join(scratch, name);
    const cache = new ImageCache({
      dir,
      database,
      downloader,
      rates: new StageRateStore(database),
      ...options,
    });
    caches.push(cache);
    await cache.open();
    const acquire = async (key: string, signal = never): Promise<CacheLease> => {
      const stat = await downloader.stat(source(key), signal);
      return cache.acquire(source(key), stat, { signal });
    };
    return { cache, downloader, acquire, files: () => readdirSync(dir).sort() };
  }

  before(async () => {
    scratch = makeWorkDir('cache');
    minio = await startMinio(join(scratch, 'minio'));
    await minio.client().makeBucket(BUCKET);
    // One database file per node, as in production; each test uses its own cache folder.
    database = StateDatabase.open(join(scratch, 'state', 'provisioner.db'));
  });
  after(async () => {
    for (const cache of caches) await cache.close();
    database?.close();
    await minio?.stop();
  });

  it('misses, then hits the verified file; a changed object with a new .sha256 is downloaded again', async () => {
    const v1 = randomBytes(3 * MiB + 11);
    await upload('disks/changing.raw', v1, { sidecar: true });
    const { acquire, downloader, files, cache } = await newCache('changing');

    const first = await acquire('disks/changing.raw');
    assert.equal(first.hit, false);
    assert.equal(sha256(readFileSync(first.path)), sha256(v1));
    first.release();
    const second = await acquire('disks/changing.raw');
    assert.equal(second.hit, true);
    second.release();
    assert.equal(downloader.downloads.length, 1);
    assert.equal(cache.list()[0]?.verifiedChecksum, `sha256:${sha256(v1)}`);

    // Same key, same size, new content and sidecar.
    const v2 = randomBytes(v1.length);
    await upload('disks/changing.raw', v2, { sidecar: true });
    const third = await acquire('disks/changing.raw');
    assert.equal(third.hit, false);
    assert.equal(sha256(readFileSync(third.path)), sha256(v2));
    third.release();
    assert.equal(downloader.downloads.length, 2);
    await cache.close();
    assert.deepEqual(files(), [blobFile(v2)], 'the old version is gone, no partial file is left');
    assert.ok(new StageRateStore(database).rates().download !== 100e6, 'the real download rate was recorded');
  });

  it('evicts the least recently used image to stay under a small maxBytes', async () => {
    const [a, b, c] = [randomBytes(2 * MiB), randomBytes(2 * MiB), randomBytes(2 * MiB)];
    await upload('lru/a.raw', a);
    await upload('lru/b.raw', b);
    await upload('lru/c.raw', c);
    const clock = new FakeClock();
    const { acquire, cache, files, downloader } = await newCache('lru', { maxBytes: 5 * MiB, clock });
    for (const key of ['lru/a.raw', 'lru/b.raw', 'lru/a.raw', 'lru/c.raw']) {
      (await acquire(key)).release();
      clock.advance(1_000);
    }
    await cache.close();
    assert.deepEqual(downloader.downloads, [
      `s3://${BUCKET}/lru/a.raw`,
      `s3://${BUCKET}/lru/b.raw`,
      `s3://${BUCKET}/lru/c.raw`,
    ]);
    assert.deepEqual(files(), [a, c].map(blobFile).sort());
    assert.deepEqual(
      cache.list().map((entry) => entry.url),
      [`s3://${BUCKET}/lru/c.raw`, `s3://${BUCKET}/lru/a.raw`],
    );
  });

  it('downloads an object once for concurrent jobs, and not at all for a copy with the same .sha256', async () => {
    const content = randomBytes(16 * MiB + 5);
    await upload('shared/disk.raw', content, { sidecar: true });
    await upload('copies/disk.raw', content, { sidecar: true });
    const { acquire, cache, files, downloader } = await newCache('shared');
    const leases = await Promise.all([
      acquire('shared/disk.raw'),
      acquire('shared/disk.raw'),
      acquire('shared/disk.raw'),
    ]);
    assert.deepEqual(downloader.downloads, [`s3://${BUCKET}/shared/disk.raw`]);
    for (const lease of leases) {
      assert.equal(lease.hit, false);
      assert.equal(lease.path, leases[0]?.path);
    }
    assert.equal(sha256(readFileSync(leases[0]?.path ?? '')), sha256(content));
    const copy = await acquire('copies/disk.raw');
    assert.equal(copy.hit, true);
    assert.equal(downloader.downloads.length, 1);
    for (const lease of [...leases, copy]) lease.release();
    await cache.close();
    assert.deepEqual(files(), [blobFile(content)]);
  });

  it('aborting every job stops the real download and leaves no partial file', async () => {
    const content = randomBytes(32 * MiB);
    await upload('aborted/disk.raw', content);
    const { acquire, cache, files } = await newCache('aborted');
    const jobs = [new AbortController(), new AbortController()];
    const waits = jobs.map((job) =>
      acquire('aborted/disk.raw', job.signal).then(
        () => assert.fail('expected the abort'),
        (error: unknown) => error,
      ),
    );
    // Abort once the transfer has started writing its partial file.
    for (let turn = 0; files().length === 0; turn++) {
      assert.ok(turn < 10_000, 'the download never started');
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    for (const job of jobs) job.abort(new Error('job deleted'));
    for (const error of await Promise.all(waits)) assert.match(String(error), /job deleted/);
    await cache.close();
    assert.deepEqual(files(), []);
    assert.deepEqual(cache.list(), []);
  });
});
