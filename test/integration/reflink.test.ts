// Raw images cloned from the node cache into file targets (reflink): the real Provisioner,
// Downloader, ImageCache, qemu-img and file targets against the rig's real MinIO, with the
// cache and the targets on a real XFS (loop-mounted). qemu-img is wrapped only to count
// conversions. Where the file system cannot clone, raw-mirror.test.ts covers what happens.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Provisioner } from '../../src/pipeline/provisioner.ts';
import type { ProgressReport } from '../../src/pipeline/types.ts';
import { createDownloader, PARTIAL_FILE_PREFIX } from '../../src/storage/download/index.ts';
import { virshPools } from '../../src/storage/libvirt/virsh.ts';
import { reflinkCloner } from '../../src/storage/reflink/reflink.ts';
import { createLogger } from '../../src/telemetry/logger.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { type MountedFileSystem, mountXfs } from '../rig/xfs.ts';
import { fileRequests, fileTargets, observedQemuImg, openNodeCache } from '../support/file-pipeline.ts';
import { mixedImage, sha256 } from '../support/images.ts';

const MiB = 1024 * 1024;
const BUCKET = 'images';

interface Extent {
  /** The first block in the file, and the first on the device. */
  logical: number;
  physical: number;
  blocks: number;
  flags: string[];
}

/** The file's extents as filefrag reports them, without unwritten (preallocated) ones. */
function extents(path: string): Extent[] {
  const lines = execFileSync('filefrag', ['-v', path]).toString().split('\n');
  return lines
    .flatMap((line) => {
      const match = /^\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):(.*)$/.exec(line);
      if (!match) return [];
      const flags = (match[4] ?? '').trim().split(/\s+/).at(-1)?.split(',') ?? [];
      return [{ logical: Number(match[1]), physical: Number(match[2]), blocks: Number(match[3]), flags }];
    })
    .filter((extent) => !extent.flags.includes('unwritten'));
}

describe('raw images cloned from the node cache (XFS with reflink)', { timeout: 180_000 }, () => {
  let workDir: string;
  let xfs: MountedFileSystem;
  let minio: MinioServer;
  let provisioner: Provisioner;
  let cacheDir: string;
  let targetDir: string;
  const conversions: string[] = [];
  const image = mixedImage(24);

  before(async () => {
    workDir = makeWorkDir('reflink');
    xfs = mountXfs(workDir, 1024 * MiB);
    minio = await startMinio(join(workDir, 'minio'));
    const client = minio.client();
    await client.makeBucket(BUCKET);
    await client.putObject(BUCKET, 'disk.raw', image, image.length);
    const downloader = createDownloader({ s3Endpoint: { url: minio.endpoint } });
    const cache = await openNodeCache(xfs.path, downloader);
    cacheDir = join(xfs.path, 'cache');
    targetDir = join(xfs.path, 'images');
    provisioner = new Provisioner({
      downloader,
      cache,
      qemuImg: observedQemuImg((options) => conversions.push(options.target)),
      targets: fileTargets(xfs.path, targetDir),
      libvirt: virshPools({ uri: 'test:///default' }),
      cloner: reflinkCloner(cacheDir, targetDir, PARTIAL_FILE_PREFIX),
    });
  });
  after(async () => {
    await minio?.stop();
    xfs?.unmount();
  });

  const request = fileRequests();
  /** The jobs' log lines, as the controller writes them. */
  const logLines: string[] = [];
  const logger = createLogger({ level: 'info', destination: { write: (line) => logLines.push(line) } });
  const provision = async (volumeName: string) => {
    const progress: ProgressReport[] = [];
    const result = await provisioner.provision(
      request({
        bucket: BUCKET,
        key: 'disk.raw',
        volumeName,
        format: 'raw',
        sizeBytes: 32 * MiB,
        credentials: { accessKeyId: minio.accessKey, secretKey: minio.secretKey },
      }),
      { signal: new AbortController().signal, logger, onProgress: (report) => progress.push(report) },
    );
    return { result, stages: [...new Set(progress.map((report) => report.stage))] };
  };
  const cachedFile = () => {
    const blobs = readdirSync(cacheDir).filter((name) => name.endsWith('.img'));
    assert.equal(blobs.length, 1, `one cached image: ${blobs.join(', ')}`);
    return join(cacheDir, blobs[0] ?? '');
  };
  /** The target holds the image and then zeros, in the very blocks of the cached copy. */
  const assertClonedFromCache = (volumeName: string) => {
    const target = join(targetDir, volumeName);
    const written = readFileSync(target);
    assert.equal(written.length, 32 * MiB, 'the file has the target size');
    assert.equal(sha256(written.subarray(0, image.length)), sha256(image));
    assert.ok(
      written.subarray(image.length).every((byte) => byte === 0),
      'zeros past the image',
    );
    const cached = new Set(extents(cachedFile()).map((extent) => `${extent.logical}@${extent.physical}`));
    const shared = extents(target).filter(
      (extent) => extent.flags.includes('shared') && cached.has(`${extent.logical}@${extent.physical}`),
    );
    // The image's 16 MiB of data (4 KiB blocks), but for its partial last block: the commit's
    // truncate zeroes that block's tail, which gives the target a copy of its own.
    const sharedBlocks = shared.reduce((sum, extent) => sum + extent.blocks, 0);
    assert.equal(sharedBlocks, (16 * MiB) / 4096, "the target shares the cached copy's data blocks");
  };

  it('clones a raw cache miss into its file target: no conversion, no second copy written', async () => {
    const { result, stages } = await provision('miss.img');
    assert.equal(result.cacheHit, false);
    assert.deepEqual(stages, ['Initializing', 'Downloading', 'Finalizing']);
    assert.deepEqual(conversions, []);
    assertClonedFromCache('miss.img');
    const cloned = logLines.map((line) => JSON.parse(line)).filter((line) => /^cloned/.test(line.message));
    assert.deepEqual(
      cloned.map((line) => [line.message, line.target]),
      [['cloned the cached image into the target', join(targetDir, 'miss.img')]],
      'the job says so in its log',
    );
  });

  it('clones a raw cache hit the same way', async () => {
    const { result, stages } = await provision('hit.img');
    assert.equal(result.cacheHit, true);
    assert.deepEqual(stages, ['Initializing', 'Finalizing']);
    assert.deepEqual(conversions, []);
    assertClonedFromCache('hit.img');
  });

  it('leaves the cached image as it was when the guest writes into its clone', async () => {
    const target = await open(join(targetDir, 'hit.img'), 'r+');
    try {
      await target.write(randomBytes(MiB), 0, MiB, 0);
      await target.sync();
    } finally {
      await target.close();
    }
    assert.equal(sha256(readFileSync(cachedFile())), sha256(image));
    assert.equal(sha256(readFileSync(join(targetDir, 'miss.img')).subarray(0, image.length)), sha256(image));
  });

  it('finds no clones between two file systems, and leaves no probe file behind', async () => {
    const elsewhere = join(workDir, 'ext4-images');
    const cloner = reflinkCloner(cacheDir, elsewhere, PARTIAL_FILE_PREFIX);
    assert.equal(await cloner.supported(), false);
    const probes = (dir: string) => readdirSync(dir).filter((name) => name.includes('reflink-probe'));
    assert.deepEqual(probes(cacheDir), []);
    assert.deepEqual(probes(elsewhere), []);
    writeFileSync(join(workDir, 'source'), randomBytes(4096));
    assert.equal(await cloner.clone(join(workDir, 'source'), join(elsewhere, 'copy')), false);
    assert.equal(existsSync(join(elsewhere, 'copy')), false);
  });
});
