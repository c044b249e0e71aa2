// Images written into their target while they download: the real Provisioner, Downloader,
// ImageCache, qemu-img, GNU dd and file targets against the rig's real MinIO. qemu-img is
// wrapped only to count conversions. The LVM side of the raw path runs in provision-lvm.test.ts;
// the qcow2 decoder's layouts in qcow2-mirror.test.ts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { context, trace } from '@opentelemetry/api';
import { node, tracing } from '@opentelemetry/sdk-node';
import type { ImageFormat } from '../../src/api/v1alpha1.ts';
import { WRITTEN_WHILE_DOWNLOADING_SHARE } from '../../src/pipeline/progress.ts';
import { Provisioner, tracedDownloader } from '../../src/pipeline/provisioner.ts';
import { PipelineError, type ProgressReport, type ProvisionRequest } from '../../src/pipeline/types.ts';
import { createDownloader, ddPageCache } from '../../src/storage/download/index.ts';
import { virshPools } from '../../src/storage/libvirt/virsh.ts';
import { inJobSpan } from '../../src/telemetry/tracing.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { fileRequests, fileTargets, observedQemuImg, openNodeCache } from '../support/file-pipeline.ts';
import { mixedImage, sha256 } from '../support/images.ts';
import { residentBytes } from '../support/page-cache.ts';

const MiB = 1024 * 1024;
const BUCKET = 'images';

// The jobs' spans, kept in memory: the twin test reads the structure of their traces.
const spans = new tracing.InMemorySpanExporter();
const spanProvider = new node.NodeTracerProvider({
  spanProcessors: [new tracing.SimpleSpanProcessor(spans)],
});
spanProvider.register();

/** For each job span (runJob, runCacheJob) recorded, its DownloadImageToPath children. */
function downloadSpansOfEachJob() {
  const finished = spans.getFinishedSpans();
  const jobs = finished.filter((span) => span.name === 'runJob' || span.name === 'runCacheJob');
  return jobs.map((job) =>
    finished.filter(
      (span) =>
        span.name === 'DownloadImageToPath' && span.parentSpanContext?.spanId === job.spanContext().spanId,
    ),
  );
}

/** Each job's download spans' image.download_shared, jobs sorted: [[false], [true]] for a pair. */
const sharedFlags = (downloads: ReturnType<typeof downloadSpansOfEachJob>) =>
  downloads.map((spansOfJob) => spansOfJob.map((span) => span.attributes['image.download_shared'])).sort();

describe('images written while they download (MinIO, file targets)', { timeout: 180_000 }, () => {
  let workDir: string;
  let minio: MinioServer;
  let provisioner: Provisioner;
  let targetDir: string;
  const conversions: string[] = [];
  const mixed = mixedImage(24);
  let qcow2Bytes: Buffer;

  before(async () => {
    workDir = makeWorkDir('raw-mirror');
    minio = await startMinio(join(workDir, 'minio'));
    const client = minio.client();
    await client.makeBucket(BUCKET);
    await client.putObject(BUCKET, 'mixed.raw', mixed, mixed.length);
    await client.putObject(BUCKET, 'shared.raw', mixed, mixed.length);
    await client.putObject(BUCKET, 'prewarmed.raw', mixed, mixed.length);
    /** `raw` as a qcow2 image's bytes, made by qemu-img. */
    const asQcow2 = (name: string, raw: Buffer) => {
      writeFileSync(join(workDir, `${name}.raw`), raw);
      execFileSync('qemu-img', [
        'convert',
        '-f',
        'raw',
        '-O',
        'qcow2',
        ...[`${name}.raw`, `${name}.qcow2`].map((file) => join(workDir, file)),
      ]);
      return readFileSync(join(workDir, `${name}.qcow2`));
    };
    // A qcow2 file declared raw: its header must never reach a target.
    qcow2Bytes = asQcow2('disguised', mixedImage(2));
    await client.putObject(BUCKET, 'disguised.raw', qcow2Bytes, qcow2Bytes.length);
    const mixedQcow2 = asQcow2('mixed', mixed);
    // zstd compression is an incompatible feature, which the decoder leaves to qemu-img.
    execFileSync('qemu-img', [
      'convert',
      '-f',
      'qcow2',
      '-O',
      'qcow2',
      '-c',
      '-o',
      'compression_type=zstd',
      ...['mixed.qcow2', 'zstd.qcow2'].map((file) => join(workDir, file)),
    ]);
    const zstd = readFileSync(join(workDir, 'zstd.qcow2'));
    await client.putObject(BUCKET, 'zstd.qcow2', zstd, zstd.length);
    await client.putObject(BUCKET, 'mixed.qcow2', mixedQcow2, mixedQcow2.length);
    await client.putObject(BUCKET, 'stopped.qcow2', mixedQcow2, mixedQcow2.length);

    const downloader = tracedDownloader(createDownloader({ s3Endpoint: { url: minio.endpoint } }));
    const cache = await openNodeCache(workDir, downloader);
    const qemuImg = observedQemuImg((options) => conversions.push(options.target));
    targetDir = join(workDir, 'images');
    provisioner = new Provisioner({
      downloader,
      cache,
      qemuImg,
      // Small, so that targets are flushed and evicted many times during each write.
      pageCache: { syncIntervalBytes: MiB, pageCache: ddPageCache() },
      targets: fileTargets(workDir, targetDir),
      libvirt: virshPools({ uri: 'test:///default' }),
    });
  });
  after(async () => {
    await minio?.stop();
    await spanProvider.shutdown();
    trace.disable();
    context.disable();
  });

  const fileRequest = fileRequests();
  const request = (
    key: string,
    volumeName: string,
    extra: { checksum?: string; format?: ImageFormat } = {},
  ) =>
    fileRequest({
      bucket: BUCKET,
      key,
      volumeName,
      format: extra.format ?? 'raw',
      sizeBytes: 32 * MiB,
      credentials: { accessKeyId: minio.accessKey, secretKey: minio.secretKey },
      ...(extra.checksum ? { checksum: extra.checksum } : {}),
    });
  const provision = (req: ProvisionRequest, progress: ProgressReport[] = []) =>
    provisioner.provision(req, {
      signal: new AbortController().signal,
      onProgress: (report) => progress.push(report),
    });
  const stagesOf = (progress: ProgressReport[]) => [...new Set(progress.map((report) => report.stage))];
  /** The overall percent the Downloading stage reached. */
  const downloadedTo = (progress: ProgressReport[]) =>
    Math.max(...progress.filter((report) => report.stage === 'Downloading').map((r) => r.overallPercent));
  const filesFor = (volumeName: string) => readdirSync(targetDir).filter((name) => name.includes(volumeName));
  /** A job that wrote `mixed` into its target as it downloaded; returns the target's bytes. */
  function assertWrittenWhileDownloading(volumeName: string, progress: ProgressReport[]): Buffer {
    // The download is the whole job here, so it carries the progress nearly to the end.
    assert.deepEqual(stagesOf(progress), ['Initializing', 'Downloading', 'Finalizing']);
    assert.equal(downloadedTo(progress), WRITTEN_WHILE_DOWNLOADING_SHARE * 100);
    assert.equal(progress.at(-1)?.overallPercent, 100);
    const written = readFileSync(join(targetDir, volumeName));
    assert.equal(written.length, 32 * MiB, 'the file has the target size');
    assert.equal(sha256(written.subarray(0, mixed.length)), sha256(mixed), 'content equals the image');
    assert.ok(
      written.subarray(mixed.length).every((byte) => byte === 0),
      'zeros past the image',
    );
    const allocated = statSync(join(targetDir, volumeName)).blocks * 512;
    assert.ok(allocated < mixed.length - 6 * MiB, `zero stripes stay holes (${allocated} bytes allocated)`);
    return written;
  }

  it('writes a raw cache miss into the target during the download: byte for byte, sparse, no conversion', async () => {
    const before = conversions.length;
    const progress: ProgressReport[] = [];
    const result = await provision(request('mixed.raw', 'streamed.img'), progress);
    assert.equal(result.cacheHit, false);
    assert.equal(conversions.length, before, 'qemu-img convert did not run');
    assertWrittenWhileDownloading('streamed.img', progress);
  });

  it('decodes a qcow2 cache miss into a file target during the download: same content, sparse, no conversion', async () => {
    const before = conversions.length;
    const progress: ProgressReport[] = [];
    const result = await provision(request('mixed.qcow2', 'decoded.img', { format: 'qcow2' }), progress);
    assert.equal(result.cacheHit, false);
    // qcow2 rounds the raw file's size up to whole sectors.
    assert.equal(result.virtualSize, Math.ceil(mixed.length / 512) * 512);
    assert.equal(conversions.length, before, 'qemu-img convert did not run');
    const written = assertWrittenWhileDownloading('decoded.img', progress);
    // A hit of the same image converts from the cache, to the same content.
    const hit = await provision(request('mixed.qcow2', 'decoded-hit.img', { format: 'qcow2' }));
    assert.equal(hit.cacheHit, true);
    assert.equal(conversions.length, before + 1);
    const converted = readFileSync(join(targetDir, 'decoded-hit.img'));
    assert.equal(sha256(converted), sha256(written));
  });

  it('stops decoding a qcow2 image when the job stops mid-download, and leaves no target file', async () => {
    const stop = new AbortController();
    const error = await provisioner
      .provision(request('stopped.qcow2', 'stopped.img', { format: 'qcow2' }), {
        signal: stop.signal,
        // Half the image is in the target by now; the rest never arrives there.
        onProgress: (report) => {
          if (report.stage === 'Downloading' && report.bytesProcessed > report.bytesTotal / 2)
            stop.abort(new Error('the object was deleted'));
        },
      })
      .catch((caught: unknown) => caught);
    assert.equal((error as Error).message, 'the object was deleted');
    assert.deepEqual(filesFor('stopped'), []);
  });

  it('converts a qcow2 image the decoder does not take after the download, into the target it had prepared', async () => {
    const before = conversions.length;
    const progress: ProgressReport[] = [];
    const result = await provision(request('zstd.qcow2', 'zstd.img', { format: 'qcow2' }), progress);
    assert.equal(result.cacheHit, false);
    assert.equal(conversions.length, before + 1);
    assert.deepEqual(stagesOf(progress), ['Initializing', 'Downloading', 'Converting', 'Finalizing']);
    const written = readFileSync(join(targetDir, 'zstd.img'));
    assert.equal(sha256(written.subarray(0, mixed.length)), sha256(mixed));
    assert.deepEqual(filesFor('zstd'), ['zstd.img'], 'no partial file left');
  });

  it('converts a cache hit with qemu-img, to the same content, and leaves none of it in the page cache', async () => {
    const before = conversions.length;
    const result = await provision(request('mixed.raw', 'from-cache.img'));
    assert.equal(result.cacheHit, true);
    assert.equal(conversions.length, before + 1);
    // qemu-img writes a file target through the page cache and flushes as it goes; the
    // provisioner evicts what it leaves (qemu-img.ts, convertCacheOptions).
    assert.equal(residentBytes(join(targetDir, 'from-cache.img')), 0, 'the target is still cached');
    const written = readFileSync(join(targetDir, 'from-cache.img'));
    assert.equal(sha256(written.subarray(0, mixed.length)), sha256(mixed));
  });

  it('refuses a "raw" image with a qcow2 header (FormatMismatch) and leaves no target file', async () => {
    const error = await provision(request('disguised.raw', 'disguised.img')).catch(
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof PipelineError, String(error));
    assert.equal(error.reason, 'FormatMismatch');
    assert.equal(error.terminal, true);
    assert.deepEqual(filesFor('disguised'), []);
  });

  it('leaves no target file when the checksum does not match', async () => {
    const wrong = `sha256:${sha256(Buffer.from('something else'))}`;
    const error = await provision(request('shared.raw', 'mismatch.img', { checksum: wrong })).catch(
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof PipelineError, String(error));
    assert.equal(error.reason, 'ChecksumMismatch');
    assert.deepEqual(filesFor('mismatch'), []);
  });

  it('gives two jobs for one new image one download: one writes while downloading, the other converts', async () => {
    const before = conversions.length;
    const progress: [ProgressReport[], ProgressReport[]] = [[], []];
    spans.reset();
    const results = await Promise.all(
      progress.map((reports, index) => {
        const volumeName = `twin-${index}.img`;
        return inJobSpan('runJob', { 'volume.name': volumeName }, undefined, () =>
          provision(request('shared.raw', volumeName), reports),
        );
      }),
    );
    assert.deepEqual(
      results.map((result) => result.cacheHit),
      [false, false],
    );
    assert.equal(conversions.length, before + 1, 'only the job that joined the download converts');
    // Each job's progress fits its own work: the joiner keeps room for its conversion.
    const converter = progress.find((reports) => stagesOf(reports).includes('Converting'));
    const writer = progress.find((reports) => reports !== converter);
    assert.ok(converter && writer);
    assert.equal(downloadedTo(writer), WRITTEN_WHILE_DOWNLOADING_SHARE * 100);
    assert.ok(downloadedTo(converter) < 90, `the joiner's download reached ${downloadedTo(converter)} %`);
    assert.equal(converter.at(-1)?.overallPercent, 100);
    // Each job's trace shows the download it waited for: its own, or the one it joined.
    const downloads = downloadSpansOfEachJob();
    assert.deepEqual(sharedFlags(downloads), [[false], [true]]);
    for (const [download] of downloads) {
      assert.equal(download?.attributes['image.url'], `s3://${BUCKET}/shared.raw`);
      assert.equal(download?.attributes['image.size_bytes'], mixed.length);
      assert.ok(String(download?.attributes['image.destination_path']).length > 0);
      // Only the downloading job's span knows how it read (one request, from loopback MinIO).
      const own = download?.attributes['image.download_shared'] === false;
      assert.equal(download?.attributes['image.download_connections'], own ? 1 : undefined);
    }
    for (const name of ['twin-0.img', 'twin-1.img']) {
      const written = readFileSync(join(targetDir, name));
      assert.equal(sha256(written.subarray(0, mixed.length)), sha256(mixed), name);
    }
  });

  it('traces a pre-warm that shares a new image’s download with a provision, each in its own trace', async () => {
    spans.reset();
    const credentials = { accessKeyId: minio.accessKey, secretKey: minio.secretKey };
    await Promise.all([
      inJobSpan('runJob', {}, undefined, () => provision(request('prewarmed.raw', 'beside-prewarm.img'))),
      inJobSpan('runCacheJob', {}, undefined, () =>
        provisioner.prewarm(
          { url: `s3://${BUCKET}/prewarmed.raw`, format: 'raw' },
          credentials,
          new AbortController().signal,
        ),
      ),
    ]);
    const downloads = downloadSpansOfEachJob();
    assert.equal(downloads.length, 2, 'a runJob and a runCacheJob');
    assert.deepEqual(sharedFlags(downloads), [[false], [true]]);
    for (const [download] of downloads) assert.equal(download?.attributes['image.size_bytes'], mixed.length);
  });
});
