// qcow2 images converted while they download, over NBD from the partial file: the real
// Provisioner, Downloader, ImageCache, qemu-img and file targets against the rig's real MinIO.
// The measured conversion rate is set very high here, so that every own download of these
// images counts as network-bound and is converted while it arrives. qemu-img is wrapped only
// to record how it was asked to convert, and the downloader only to hold a download's last
// batch until the conversion has started, as a slow network would: loopback MinIO is faster
// than qemu-img starts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Provisioner } from '../../src/pipeline/provisioner.ts';
import { RATE_SAMPLE_BYTES } from '../../src/pipeline/streaming-conversion.ts';
import { PipelineError, type ProgressReport, type ProvisionRequest } from '../../src/pipeline/types.ts';
import {
  createDownloader,
  type Downloader,
  type DownloadMirror,
  ddPageCache,
} from '../../src/storage/download/index.ts';
import { virshPools } from '../../src/storage/libvirt/virsh.ts';
import type { ConvertOptions } from '../../src/storage/qemu-img/qemu-img.ts';
import { createLogger } from '../../src/telemetry/logger.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { fileRequests, fileTargets, observedQemuImg, openNodeCache } from '../support/file-pipeline.ts';
import { makeTestImage, sha256 } from '../support/images.ts';

const MiB = 1024 * 1024;
const BUCKET = 'images';
const TARGET_BYTES = 128 * MiB;
/** Whose last batch waits for the conversion: the images that are converted while they download. */
const HELD = new Set(['image.qcow2', 'mismatch.qcow2', 'aborted.qcow2']);

describe('qcow2 images converted while they download (MinIO, NBD, file targets)', {
  timeout: 180_000,
}, () => {
  let workDir: string;
  let minio: MinioServer;
  let provisioner: Provisioner;
  /** The same, with convertWhileDownloading: never. */
  let neverWhileDownloading: Provisioner;
  let targetDir: string;
  let socketParent: string;
  let raw: Buffer;
  let qcow2: Buffer;
  const conversions: ConvertOptions[] = [];
  /** Called when a conversion from the export starts (the abort test stops its job there). */
  let onStreamedConversion: (() => void) | undefined;
  const streamedConversions = new EventEmitter();
  let streamedCount = 0;

  before(async () => {
    workDir = makeWorkDir('streaming');
    // The NBD sockets' folders go under TMPDIR: this file's own, to see that none is left.
    socketParent = join(workDir, 'tmp');
    mkdirSync(socketParent);
    process.env.TMPDIR = socketParent;
    minio = await startMinio(join(workDir, 'minio'));
    const client = minio.client();
    await client.makeBucket(BUCKET);

    // 112 MiB with 42 MiB of random data: a qcow2 file well over the bytes that decide.
    const image = await makeTestImage(workDir, 'image', 112);
    raw = image.raw;
    qcow2 = readFileSync(image.qcow2Path);
    assert.ok(qcow2.length > RATE_SAMPLE_BYTES + 4 * MiB, `the qcow2 file has ${qcow2.length} bytes`);
    for (const key of ['image.qcow2', 'never.qcow2', 'mismatch.qcow2', 'aborted.qcow2'])
      await client.putObject(BUCKET, key, qcow2, qcow2.length);
    // The same image on top of a backing file, which no node may open.
    execFileSync('qemu-img', [
      'create',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      '-b',
      image.qcow2Path,
      join(workDir, 'overlay.qcow2'),
    ]);
    execFileSync('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      `write -P 9 0 ${40 * MiB}`,
      join(workDir, 'overlay.qcow2'),
    ]);
    const overlay = readFileSync(join(workDir, 'overlay.qcow2'));
    await client.putObject(BUCKET, 'overlay.qcow2', overlay, overlay.length);

    const real = createDownloader({ s3Endpoint: { url: minio.endpoint } });
    const downloader: Downloader = {
      stat: (source, signal) => real.stat(source, signal),
      download: (source, options) => {
        const streamedBefore = streamedCount;
        const lastBatchWaits: DownloadMirror = {
          write: async (chunks, position) => {
            const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
            const last = position + length === qcow2.length;
            if (last && HELD.has(basename(source.url)) && streamedCount === streamedBefore)
              await once(streamedConversions, 'started');
          },
        };
        return real.download(source, { ...options, mirror: lastBatchWaits });
      },
    };
    const cache = await openNodeCache(workDir, downloader);
    const qemuImg = observedQemuImg((options) => {
      conversions.push(options);
      if (options.sourceIsExport) {
        // The job may stop first, so that its download is still held when it does.
        onStreamedConversion?.();
        streamedCount += 1;
        streamedConversions.emit('started');
      }
    });
    targetDir = join(workDir, 'images');
    const deps = {
      downloader,
      cache,
      qemuImg,
      rates: { rates: () => ({ download: 100e6, convert: 1e15 }), record: () => {} },
      pageCache: { syncIntervalBytes: 4 * MiB, pageCache: ddPageCache() },
      targets: fileTargets(workDir, targetDir),
      libvirt: virshPools({ uri: 'test:///default' }),
    };
    // qemu: a qcow2 image into a file is decoded as it downloads in the default mode instead.
    provisioner = new Provisioner({ ...deps, convertWhileDownloading: 'qemu' });
    neverWhileDownloading = new Provisioner({ ...deps, convertWhileDownloading: 'never' });
  });
  after(async () => {
    await minio?.stop();
  });

  const fileRequest = fileRequests();
  const request = (key: string, volumeName: string, checksum?: string) =>
    fileRequest({
      bucket: BUCKET,
      key,
      volumeName,
      format: 'qcow2',
      sizeBytes: TARGET_BYTES,
      credentials: { accessKeyId: minio.accessKey, secretKey: minio.secretKey },
      ...(checksum ? { checksum } : {}),
    });
  /** What the jobs logged. */
  const logged: { message: string; [field: string]: unknown }[] = [];
  const logger = createLogger({
    level: 'info',
    destination: { write: (line) => logged.push(JSON.parse(line)) },
  });
  const provision = (
    req: ProvisionRequest,
    progress: ProgressReport[] = [],
    signal = new AbortController().signal,
  ) => provisioner.provision(req, { signal, logger, onProgress: (report) => progress.push(report) });
  const filesFor = (volumeName: string) => readdirSync(targetDir).filter((name) => name.includes(volumeName));
  const streamedSince = (count: number) =>
    conversions.slice(count).filter((options) => options.sourceIsExport);

  it('converts the image from the download as it arrives, to the same bytes', async () => {
    const before = conversions.length;
    const progress: ProgressReport[] = [];
    const result = await provision(request('image.qcow2', 'streamed.img'), progress);
    assert.equal(result.cacheHit, false);
    const converted = conversions.slice(before);
    assert.equal(converted.length, 1, 'one conversion, from the download');
    assert.equal(converted[0]?.sourceIsExport, true);
    assert.match(converted[0]?.source ?? '', /^nbd\+unix:\/\/\/\?socket=/);
    const written = readFileSync(join(targetDir, 'streamed.img'));
    assert.equal(written.length, TARGET_BYTES);
    assert.equal(sha256(written.subarray(0, raw.length)), sha256(raw), 'content equals the image');
    assert.ok(
      written.subarray(raw.length).every((byte) => byte === 0),
      'zeros past the image',
    );
    assert.equal(progress.at(-1)?.stage, 'Finalizing');
    assert.equal(progress.at(-1)?.overallPercent, 100);
    assert.deepEqual(readdirSync(socketParent), [], 'no NBD socket folder is left');
    // The log says why: the download's measured rate against the conversion rate.
    const started = logged.filter((line) => line.message === 'converting the image while it downloads');
    assert.equal(started.length, 1);
    assert.ok(Number(started[0]?.download_bytes_per_second) > 0);
    assert.equal(started[0]?.convert_bytes_per_second, 1e15);
  });

  it('converts a cache hit from the cached file, not over NBD', async () => {
    const before = conversions.length;
    const result = await provision(request('image.qcow2', 'hit.img'));
    assert.equal(result.cacheHit, true);
    assert.equal(conversions.length, before + 1);
    assert.equal(conversions.at(-1)?.sourceIsExport, false);
    const written = readFileSync(join(targetDir, 'hit.img'));
    assert.equal(sha256(written.subarray(0, raw.length)), sha256(raw));
  });

  it('converts after the download when told never to convert while downloading', async () => {
    const before = conversions.length;
    const result = await neverWhileDownloading.provision(request('never.qcow2', 'never.img'), {
      signal: new AbortController().signal,
      onProgress: () => {},
    });
    assert.equal(result.cacheHit, false);
    assert.deepEqual(
      conversions.slice(before).map((options) => options.sourceIsExport),
      [false],
    );
    const written = readFileSync(join(targetDir, 'never.img'));
    assert.equal(sha256(written.subarray(0, raw.length)), sha256(raw));
  });

  it('discards what it converted when the checksum does not match', async () => {
    const before = conversions.length;
    const wrong = `sha256:${sha256(Buffer.from('something else'))}`;
    const error = await provision(request('mismatch.qcow2', 'mismatch.img', wrong)).catch(
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof PipelineError, String(error));
    assert.equal(error.reason, 'ChecksumMismatch');
    assert.equal(streamedSince(before).length, 1, 'it had converted while downloading');
    assert.deepEqual(filesFor('mismatch'), []);
    assert.deepEqual(readdirSync(socketParent), []);
  });

  it('never converts an image with a backing file: the download ends, then inspection refuses it', async () => {
    const before = conversions.length;
    const error = await provision(request('overlay.qcow2', 'overlay.img')).catch((caught: unknown) => caught);
    assert.ok(error instanceof PipelineError, String(error));
    assert.equal(error.reason, 'BackingFileNotAllowed');
    assert.equal(conversions.length, before, 'qemu-img convert never ran');
    assert.deepEqual(filesFor('overlay'), []);
  });

  it('stops qemu-img and leaves nothing behind when the job stops mid-way', async () => {
    const stop = new AbortController();
    onStreamedConversion = () => stop.abort(new Error('the object was deleted'));
    try {
      const error = await provision(request('aborted.qcow2', 'aborted.img'), [], stop.signal).catch(
        (caught: unknown) => caught,
      );
      assert.equal((error as Error).message, 'the object was deleted');
    } finally {
      onStreamedConversion = undefined;
    }
    assert.deepEqual(filesFor('aborted'), []);
    assert.deepEqual(readdirSync(socketParent), []);
  });
});
