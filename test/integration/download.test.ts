// The download step against the rig's real MinIO and real local HTTP(S) servers: content and
// checksums, credentials, sidecars, resume after a dropped connection, stalls, aborts and the
// free-space check, and never a partial file left behind.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { type AddressInfo, connect, createServer as createTcpServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPacedLink } from '../../bench/link.ts';
import { PipelineError } from '../../src/pipeline/types.ts';
import {
  createDownloader,
  type DownloaderConfig,
  type DownloadProgress,
} from '../../src/storage/download/index.ts';
import { makeServerCertificate } from '../rig/certs.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { residentBytes } from '../support/page-cache.ts';

const MiB = 1024 * 1024;
const BUCKET = 'images';

const sha = (algorithm: 'sha256' | 'sha512', data: Buffer) =>
  createHash(algorithm).update(data).digest('hex');

/** Fast retries and a short stall timeout, so that fault tests finish quickly. */
const testConfig: DownloaderConfig = {
  retry: { maxRetries: 2, baseMs: 10, maxMs: 50 },
  stallTimeoutMs: 5_000,
  progressIntervalMs: 0,
  syncIntervalBytes: MiB,
};

let scratch: string;
function emptyFolder(name: string): string {
  const folder = join(scratch, name);
  mkdirSync(folder);
  return folder;
}

/** Checks the error's reason and returns it for further checks. */
async function rejectsWith(promise: Promise<unknown>, reason: string): Promise<PipelineError> {
  const error = await promise.then(
    () => assert.fail(`expected ${reason}, but the download succeeded`),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof PipelineError, `expected a PipelineError, got ${String(error)}`);
  assert.equal(error.reason, reason, error.message);
  return error;
}

interface RecordedRequest {
  range: string | undefined;
  ifRange: string | undefined;
}

interface TestServer {
  url: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

async function listen(
  server: Server,
  scheme: 'http' | 'https',
  requests: RecordedRequest[],
): Promise<TestServer> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${scheme}://127.0.0.1:${port}/disk.raw`,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

type Handler = (req: IncomingMessage, res: ServerResponse, requestNumber: number) => void;

function startHttpServer(handler: Handler): Promise<TestServer> {
  const requests: RecordedRequest[] = [];
  const server = createHttpServer((req, res) => {
    requests.push({ range: req.headers.range, ifRange: req.headers['if-range']?.toString() });
    handler(req, res, requests.length);
  });
  return listen(server, 'http', requests);
}

/** Serves `content` as a static server does, with ranges and a strong ETag. */
function serveRange(content: Buffer, req: IncomingMessage, res: ServerResponse): void {
  const headers = { etag: '"v1"', 'accept-ranges': 'bytes' };
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  if (!range) {
    res.writeHead(200, { ...headers, 'content-length': content.length });
    res.end(content);
    return;
  }
  const start = Number(range[1]);
  const end = range[2] ? Number(range[2]) : content.length - 1;
  res.writeHead(206, {
    ...headers,
    'content-length': end - start + 1,
    'content-range': `bytes ${start}-${end}/${content.length}`,
  });
  res.end(content.subarray(start, end + 1));
}

interface ProxyFault {
  kind: 'cut' | 'stall';
  afterBytes: number;
  /** Only a connection whose request matches; default: any. */
  request?: RegExp;
}

/**
 * A TCP proxy in front of MinIO (or of a paced link to it) that counts connections and
 * records the requests it forwards. With a fault, it breaks the first connection (whose
 * request matches) which has carried more than `afterBytes` towards the client: `cut` closes
 * it, `stall` goes silent and keeps it open.
 */
async function startProxy(target: { host: string; port: number }, fault?: ProxyFault) {
  let armed = fault !== undefined;
  let connections = 0;
  let mostOpen = 0;
  const requestText: string[] = [];
  const sockets = new Set<Socket>();
  const server = createTcpServer((client) => {
    connections += 1;
    sockets.add(client);
    mostOpen = Math.max(mostOpen, sockets.size);
    client.on('close', () => sockets.delete(client));
    const upstream = connect(target.port, target.host);
    let sent = 0;
    let stalled = false;
    let matches = fault?.request === undefined;
    client.on('data', (data: Buffer) => {
      const text = data.toString('latin1');
      requestText.push(text);
      matches ||= fault?.request?.test(text) ?? false;
      upstream.write(data);
    });
    upstream.on('data', (data: Buffer) => {
      sent += data.length;
      if (fault && armed && matches && sent > fault.afterBytes) {
        armed = false;
        if (fault.kind === 'cut') {
          client.destroy();
          upstream.destroy();
          return;
        }
        stalled = true;
      }
      if (!stalled) client.write(data);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    faulted: () => fault !== undefined && !armed,
    connections: () => connections,
    /** The most connections that were open at once. */
    mostOpen: () => mostOpen,
    /** Each request's first line, as `GET /bucket/key?query`. */
    requests: () => requestText.flatMap((text) => /^([A-Z]+ \S+) HTTP\/1\.1\r$/m.exec(text)?.[1] ?? []),
    ranges: () => requestText.flatMap((text) => /^range: (.*)$/im.exec(text)?.[1]?.trim() ?? []),
    /** Also ends kept-alive connections, which would hold close() until their idle timeout. */
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

describe('download', { timeout: 180_000 }, () => {
  let minio: MinioServer;
  const downloader = () => createDownloader({ ...testConfig, s3Endpoint: { url: minio.endpoint } });
  const credentials = () => ({ accessKeyId: minio.accessKey, secretKey: minio.secretKey });
  const plain = randomBytes(5 * MiB + 123);
  const sidecarred = randomBytes(3 * MiB + 7);
  const badSidecarred = randomBytes(2 * MiB + 1);
  /** Data, then 4 MiB of zeros in the middle and 3 MiB at the end, as disk images have. */
  const zeroed = Buffer.concat([
    randomBytes(MiB),
    Buffer.alloc(4 * MiB),
    randomBytes(MiB),
    Buffer.alloc(3 * MiB),
  ]);

  /** Downloads disks/plain.raw through `endpoint` into a new folder and checks what it wrote. */
  async function downloadPlainVia(
    endpoint: string,
    folderName: string,
    config: DownloaderConfig = testConfig,
  ) {
    const folder = emptyFolder(folderName);
    const result = await createDownloader({ ...config, s3Endpoint: { url: endpoint } }).download(
      { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
      { destinationPath: join(folder, 'plain.raw'), signal: new AbortController().signal },
    );
    assert.equal(result.sha256, sha('sha256', plain));
    assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', plain));
    assert.deepEqual(readdirSync(folder), ['plain.raw']);
    return result;
  }

  before(async () => {
    scratch = makeWorkDir('download');
    minio = await startMinio(join(scratch, 'minio'));
    const client = minio.client();
    await client.makeBucket(BUCKET);
    await client.putObject(BUCKET, 'disks/plain.raw', plain, plain.length);
    await client.putObject(BUCKET, 'disks/zeroed.raw', zeroed, zeroed.length);
    await client.putObject(BUCKET, 'disks/sidecar.raw', sidecarred, sidecarred.length);
    const goodSidecar = `${sha('sha256', sidecarred)}  sidecar.raw\n`;
    await client.putObject(BUCKET, 'disks/sidecar.raw.sha256', goodSidecar);
    await client.putObject(BUCKET, 'disks/bad-sidecar.raw', badSidecarred, badSidecarred.length);
    await client.putObject(BUCKET, 'disks/bad-sidecar.raw.sha256', `${sha('sha256', plain)}\n`);
    await client.putObject(BUCKET, 'disks/big-sidecar.raw', plain, plain.length);
    await client.putObject(BUCKET, 'disks/big-sidecar.raw.sha256', Buffer.alloc(5000, 'a'));
    await client.putObject(BUCKET, 'disks/gone.raw.sha256', Buffer.alloc(5000, 'a'));
  });
  after(async () => {
    await minio?.stop();
  });

  describe('from MinIO', () => {
    it('downloads s3://bucket/key with credentials, reporting progress up to the size', async () => {
      const folder = emptyFolder('s3-ok');
      const progress: DownloadProgress[] = [];
      const result = await downloader().download(
        { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
        {
          destinationPath: join(folder, 'plain.raw'),
          signal: new AbortController().signal,
          onProgress: (report) => progress.push(report),
        },
      );
      assert.deepEqual(result, {
        path: join(folder, 'plain.raw'),
        sizeBytes: plain.length,
        sha256: sha('sha256', plain),
        connections: 1,
      });
      assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', plain));
      assert.deepEqual(readdirSync(folder), ['plain.raw']);
      assert.deepEqual(progress.at(-1), { bytesDone: plain.length, bytesTotal: plain.length });
      for (let i = 1; i < progress.length; i++)
        assert.ok((progress[i]?.bytesDone ?? 0) >= (progress[i - 1]?.bytesDone ?? 0), 'progress went back');
    });

    it('leaves zeros as holes, trailing ones too, in a file of the full size', async () => {
      const folder = emptyFolder('s3-zeroed');
      const result = await downloader().download(
        { url: `s3://${BUCKET}/disks/zeroed.raw`, credentials: credentials() },
        { destinationPath: join(folder, 'zeroed.raw'), signal: new AbortController().signal },
      );
      const file = statSync(result.path);
      assert.equal(file.size, zeroed.length);
      assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', zeroed));
      assert.ok(file.blocks * 512 <= 3 * MiB, `${file.blocks * 512} bytes allocated for 2 MiB of data`);
    });

    it('reads http://endpoint/bucket/key as an S3 object when credentials are given', async () => {
      const folder = emptyFolder('s3-url');
      const result = await createDownloader(testConfig).download(
        { url: `${minio.endpoint}/${BUCKET}/disks/plain.raw`, credentials: credentials() },
        { destinationPath: join(folder, 'plain.raw'), signal: new AbortController().signal },
      );
      assert.equal(result.sha256, sha('sha256', plain));
    });

    it('reads a key with spaces, unicode and reserved characters, signed and anonymously from a public bucket', async () => {
      // The body comes from a presigned URL, or the plain object URL without credentials:
      // both must encode the key as S3 signs and serves it.
      const key = 'disks/odd name+ü&=%;,.raw';
      const publicBucket = 'public-disks';
      const client = minio.client();
      await client.makeBucket(publicBucket);
      await client.setBucketPolicy(
        publicBucket,
        JSON.stringify({
          Version: '2012-10-17',
          Statement: [
            {
              Effect: 'Allow',
              Principal: { AWS: ['*'] },
              Action: ['s3:GetObject'],
              Resource: [`arn:aws:s3:::${publicBucket}/*`],
            },
          ],
        }),
      );
      await client.putObject(BUCKET, key, sidecarred, sidecarred.length);
      await client.putObject(publicBucket, key, sidecarred, sidecarred.length);
      const path = key.split('/').map(encodeURIComponent).join('/');
      const folder = emptyFolder('s3-odd-key');
      const signed = await downloader().download(
        { url: `s3://${BUCKET}/${path}`, credentials: credentials() },
        { destinationPath: join(folder, 'signed.raw'), signal: new AbortController().signal },
      );
      const anonymous = await downloader().download(
        { url: `s3://${publicBucket}/${path}` },
        { destinationPath: join(folder, 'anonymous.raw'), signal: new AbortController().signal },
      );
      assert.equal(signed.sha256, sha('sha256', sidecarred));
      assert.equal(anonymous.sha256, sha('sha256', sidecarred));
      assert.deepEqual(readdirSync(folder).sort(), ['anonymous.raw', 'signed.raw']);
      // Without the policy, the same anonymous read is refused as such.
      await rejectsWith(
        downloader().download(
          { url: `s3://${BUCKET}/${path}` },
          { destinationPath: join(folder, 'denied.raw'), signal: new AbortController().signal },
        ),
        'SourceAccessDenied',
      );
    });

    it('evicts the downloaded file from the page cache', async () => {
      const folder = emptyFolder('s3-page-cache');
      const result = await downloader().download(
        { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
        { destinationPath: join(folder, 'plain.raw'), signal: new AbortController().signal },
      );
      assert.equal(residentBytes(result.path), 0, 'resident bytes of the downloaded file');
    });

    it('refuses wrong credentials with a clear error that holds no secret, leaving no file', async () => {
      const folder = emptyFolder('s3-denied');
      const secretKey = 'wrong-secret-c0ffee';
      const error = await rejectsWith(
        downloader().download(
          { url: `s3://${BUCKET}/disks/plain.raw`, credentials: { accessKeyId: minio.accessKey, secretKey } },
          { destinationPath: join(folder, 'plain.raw'), signal: new AbortController().signal },
        ),
        'SourceAccessDenied',
      );
      assert.match(error.message, /access denied.*accessKeyId and secretKey/);
      assert.ok(!error.message.includes(secretKey) && !error.message.includes(minio.secretKey));
      assert.deepEqual(readdirSync(folder), []);
    });

    it('reports a missing object or bucket as SourceNotFound, leaving no file', async () => {
      const folder = emptyFolder('s3-missing');
      for (const url of [`s3://${BUCKET}/disks/nope.raw`, 's3://no-such-bucket/disks/plain.raw']) {
        const error = await rejectsWith(
          downloader().download(
            { url, credentials: credentials() },
            { destinationPath: join(folder, 'x.raw'), signal: new AbortController().signal },
          ),
          'SourceNotFound',
        );
        assert.match(error.message, /does not exist/);
      }
      assert.deepEqual(readdirSync(folder), []);
    });

    it('verifies against a matching <key>.sha256 object', async () => {
      const folder = emptyFolder('s3-sidecar');
      const source = { url: `s3://${BUCKET}/disks/sidecar.raw`, credentials: credentials() };
      const stat = await downloader().stat(source, new AbortController().signal);
      assert.deepEqual(stat.expectedChecksum, {
        algorithm: 'sha256',
        hex: sha('sha256', sidecarred),
        origin: `s3://${BUCKET}/disks/sidecar.raw.sha256`,
      });
      const result = await downloader().download(source, {
        destinationPath: join(folder, 'sidecar.raw'),
        signal: new AbortController().signal,
      });
      assert.equal(result.sha256, sha('sha256', sidecarred));
    });

    it('fails with ChecksumMismatch on a mismatching <key>.sha256 object and leaves no file', async () => {
      const folder = emptyFolder('s3-bad-sidecar');
      const error = await rejectsWith(
        downloader().download(
          { url: `s3://${BUCKET}/disks/bad-sidecar.raw`, credentials: credentials() },
          { destinationPath: join(folder, 'bad.raw'), signal: new AbortController().signal },
        ),
        'ChecksumMismatch',
      );
      assert.equal(error.terminal, true);
      assert.ok(error.message.includes(sha('sha256', plain)), 'names the expected checksum');
      assert.ok(error.message.includes(sha('sha256', badSidecarred)), 'names the actual checksum');
      assert.deepEqual(readdirSync(folder), []);
    });

    it('refuses a <key>.sha256 object too big to be a checksum line, and the missing image goes first', async () => {
      const source = { url: `s3://${BUCKET}/disks/big-sidecar.raw`, credentials: credentials() };
      const error = await rejectsWith(
        downloader().stat(source, new AbortController().signal),
        'InvalidChecksumSidecar',
      );
      assert.match(error.message, /big-sidecar\.raw\.sha256 is more than 4096 bytes/);
      // The image and its sidecar are asked for at once; the missing image's answer wins.
      const missing = { url: `s3://${BUCKET}/disks/gone.raw`, credentials: credentials() };
      await rejectsWith(downloader().stat(missing, new AbortController().signal), 'SourceNotFound');
    });

    it('verifies a sha512 spec checksum, which wins over the <key>.sha256 object', async () => {
      const folder = emptyFolder('s3-sha512');
      const source = {
        url: `s3://${BUCKET}/disks/bad-sidecar.raw`,
        credentials: credentials(),
        checksum: `sha512:${sha('sha512', badSidecarred)}`,
      };
      const result = await downloader().download(source, {
        destinationPath: join(folder, 'ok.raw'),
        signal: new AbortController().signal,
      });
      assert.equal(result.sha256, sha('sha256', badSidecarred));

      await rejectsWith(
        downloader().download(
          { ...source, checksum: `sha512:${sha('sha512', plain)}` },
          { destinationPath: join(folder, 'bad.raw'), signal: new AbortController().signal },
        ),
        'ChecksumMismatch',
      );
      assert.deepEqual(readdirSync(folder), ['ok.raw']);
    });

    it('resumes an S3 download with a Range request after the connection is cut', async () => {
      const proxy = await startProxy(minio, { kind: 'cut', afterBytes: 2 * MiB });
      try {
        const { connections } = await downloadPlainVia(proxy.endpoint, 's3-resume');
        assert.equal(connections, 1, 'an object under twice the probe is read in one request');
        assert.ok(proxy.faulted(), 'the proxy cut a connection');
        const resumedAt = proxy.ranges().map((range) => Number(/^bytes=(\d+)-$/.exec(range)?.[1]));
        assert.equal(resumedAt.length, 1, `ranges: ${proxy.ranges()}`);
        assert.ok((resumedAt[0] ?? 0) > 0 && (resumedAt[0] ?? 0) <= 2 * MiB, `resumed at ${resumedAt[0]}`);
      } finally {
        await proxy.close();
      }
    });

    it('makes the S3 calls of successive downloads over one kept-alive connection, asking the region once', async () => {
      const proxy = await startProxy(minio);
      try {
        const folder = emptyFolder('s3-connections');
        const config = { ...testConfig, s3Endpoint: { url: proxy.endpoint } };
        for (const name of ['one.raw', 'two.raw']) {
          const result = await createDownloader(config).download(
            { url: `s3://${BUCKET}/disks/sidecar.raw`, credentials: credentials() },
            { destinationPath: join(folder, name), signal: new AbortController().signal },
          );
          assert.equal(result.sha256, sha('sha256', sidecarred));
        }
        const requests = proxy.requests();
        // Each download states the object, reads its sidecar in one GET, and presigns.
        assert.equal(requests.filter((line) => line.startsWith('HEAD ')).length, 2, requests.join('\n'));
        const sidecarReads = requests.filter((line) =>
          line.startsWith('GET /images/disks/sidecar.raw.sha256'),
        );
        assert.equal(sidecarReads.length, 2, requests.join('\n'));
        assert.equal(requests.filter((line) => line.endsWith('?location')).length, 1, requests.join('\n'));
        // The minio client's calls share kept-alive connections: one for the first download,
        // whose calls wait for the region, and a second for the next one's stat and sidecar
        // read, which go at once. The second body goes over the first one's connection.
        assert.equal(proxy.connections(), 3, requests.join('\n'));
      } finally {
        await proxy.close();
      }
    });

    describe('over parallel ranges, when one connection is slower than the download', () => {
      /** 20 MB/s per connection: far slower than the download writes and hashes. */
      const LINK_BYTES_PER_SECOND = 20e6;
      const rangedConfig = {
        ...testConfig,
        connections: 4,
        chunkBytes: 512 * 1024,
        probeBytes: MiB,
      } satisfies DownloaderConfig;
      /**
       * The ranges of `plain` asked for, as [first, last] byte, in order of their first byte.
       * The last chunk asks for the rest of the object (`bytes=N-`).
       */
      const askedRanges = (ranges: string[]) =>
        ranges
          .flatMap((range) => {
            const match = /^bytes=(\d+)-(\d*)$/.exec(range);
            return match ? [[Number(match[1]), match[2] ? Number(match[2]) : plain.length - 1] as const] : [];
          })
          .sort(([a], [b]) => a - b);

      async function throughLink<T>(
        fault: ProxyFault | undefined,
        body: (proxy: Awaited<ReturnType<typeof startProxy>>) => Promise<T>,
      ): Promise<T> {
        const link = await startPacedLink(minio.port, LINK_BYTES_PER_SECOND);
        const proxy = await startProxy({ host: '127.0.0.1', port: link.port }, fault);
        try {
          return await body(proxy);
        } finally {
          await proxy.close();
          await link.close();
        }
      }

      it('goes on after the first bytes over several range requests at once that cover the rest', async () => {
        await throughLink(undefined, async (proxy) => {
          const { connections } = await downloadPlainVia(proxy.endpoint, 's3-ranges', rangedConfig);
          assert.equal(connections, rangedConfig.connections);
          const ranges = askedRanges(proxy.ranges());
          assert.ok(ranges.length >= 4, `ranges: ${proxy.ranges()}`);
          const [first] = ranges[0] ?? [0];
          assert.ok(first >= MiB && first < plain.length, `the ranges start at ${first}, after the probe`);
          ranges.forEach(([start, last], index) => {
            assert.ok(
              last - start + 1 <= rangedConfig.chunkBytes,
              `range ${start}-${last} is one chunk at most`,
            );
            if (index > 0) assert.equal(start, (ranges[index - 1]?.[1] ?? 0) + 1, 'ranges follow each other');
          });
          assert.equal(ranges.at(-1)?.[1], plain.length - 1, 'the last range ends with the object');
          assert.ok(proxy.mostOpen() >= 3, `at most ${proxy.mostOpen()} connections were open at once`);
          // The ranges reuse their connections: besides the minio client's and the probe's,
          // at most one per range request in flight.
          assert.ok(ranges.length > rangedConfig.connections, `ranges: ${proxy.ranges()}`);
          assert.ok(
            proxy.connections() <= 2 + rangedConfig.connections,
            `${proxy.connections()} connections for ${ranges.length} ranges`,
          );
        });
      });

      it('resumes after one range request is cut, from the bytes that arrived in order', async () => {
        const fault = { kind: 'cut', afterBytes: 100 * 1024, request: /^range: bytes=\d+-\d+\r$/im } as const;
        await throughLink(fault, async (proxy) => {
          await downloadPlainVia(proxy.endpoint, 's3-ranges-cut', rangedConfig);
          assert.ok(proxy.faulted(), 'the proxy cut a range request');
          // The cut chunk is asked for again, from where its bytes stopped.
          const ranges = askedRanges(proxy.ranges());
          const starts = ranges.map(([start]) => start);
          assert.ok(
            starts.some((start, index) => index > 0 && start < (ranges[index - 1]?.[1] ?? 0)),
            `some bytes were asked for twice: ${proxy.ranges()}`,
          );
        });
      });
    });

    it('ends an S3 call that gets no answer when the job is aborted', async () => {
      const proxy = await startProxy(minio, { kind: 'stall', afterBytes: 0 });
      try {
        const controller = new AbortController();
        const reason = new Error('VolumeProvision deleted');
        setTimeout(() => controller.abort(reason), 200);
        const stat = createDownloader({ ...testConfig, s3Endpoint: { url: proxy.endpoint } }).stat(
          { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
          controller.signal,
        );
        await assert.rejects(stat, (error) => error === reason);
        assert.ok(proxy.faulted(), 'the proxy held back the answer');
      } finally {
        await proxy.close();
      }
    });

    it('resumes from its offset when MinIO itself dies mid-download and comes back', async () => {
      const big = randomBytes(64 * MiB);
      await minio.client().putObject(BUCKET, 'disks/big.raw', big, big.length);
      const folder = emptyFolder('s3-minio-restart');
      const progress: number[] = [];
      let restarted: Promise<void> | undefined;
      const result = await createDownloader({
        ...testConfig,
        // Long enough for MinIO to start again.
        retry: { maxRetries: 10, baseMs: 200, maxMs: 2_000 },
        s3Endpoint: { url: minio.endpoint },
      }).download(
        { url: `s3://${BUCKET}/disks/big.raw`, credentials: credentials() },
        {
          destinationPath: join(folder, 'big.raw'),
          signal: new AbortController().signal,
          onProgress: ({ bytesDone }) => {
            progress.push(bytesDone);
            if (bytesDone >= 8 * MiB && !restarted) {
              minio.crash();
              restarted = minio.restart();
            }
          },
        },
      );
      await restarted;
      assert.ok(restarted, 'MinIO was killed during the download');
      const crashedAt = progress.find((bytes) => bytes >= 8 * MiB) ?? 0;
      assert.ok(crashedAt < big.length, `killed at ${crashedAt} of ${big.length} bytes`);
      for (let i = 1; i < progress.length; i++)
        assert.ok((progress[i] ?? 0) >= (progress[i - 1] ?? 0), 'resumed from its offset, not from 0');
      assert.equal(result.sha256, sha('sha256', big));
      assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', big));
      assert.deepEqual(readdirSync(folder), ['big.raw']);
    });

    it('cuts a stalled S3 transfer after the stall timeout and resumes it', async () => {
      const proxy = await startProxy(minio, { kind: 'stall', afterBytes: 2 * MiB });
      try {
        const folder = emptyFolder('s3-stall');
        const config = { ...testConfig, stallTimeoutMs: 300, s3Endpoint: { url: proxy.endpoint } };
        const result = await createDownloader(config).download(
          { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
          { destinationPath: join(folder, 'plain.raw'), signal: new AbortController().signal },
        );
        assert.ok(proxy.faulted(), 'the proxy stalled a connection');
        assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', plain));
        assert.equal(proxy.ranges().length, 1, `ranges: ${proxy.ranges()}`);
      } finally {
        await proxy.close();
      }
    });

    it('stops on abort mid-download with the abort reason and removes the partial file', async () => {
      const folder = emptyFolder('s3-abort');
      const controller = new AbortController();
      const reason = new Error('VolumeProvision deleted');
      let abortedAt = -1;
      const download = downloader().download(
        { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
        {
          destinationPath: join(folder, 'plain.raw'),
          signal: controller.signal,
          onProgress: ({ bytesDone }) => {
            if (bytesDone >= MiB && abortedAt < 0) {
              abortedAt = bytesDone;
              assert.ok(
                readdirSync(folder).some((name) => name.startsWith('.partial-')),
                'writes a partial file',
              );
              controller.abort(reason);
            }
          },
        },
      );
      await assert.rejects(download, (error) => error === reason);
      assert.ok(abortedAt > 0 && abortedAt < plain.length, `aborted at ${abortedAt}`);
      assert.deepEqual(readdirSync(folder), []);
    });

    it('rejects and files nothing when the abort comes with the last bytes', async () => {
      const folder = emptyFolder('s3-abort-at-end');
      const controller = new AbortController();
      const reason = new Error('VolumeProvision deleted');
      const download = downloader().download(
        { url: `s3://${BUCKET}/disks/plain.raw`, credentials: credentials() },
        {
          destinationPath: join(folder, 'plain.raw'),
          signal: controller.signal,
          onProgress: ({ bytesDone }) => {
            if (bytesDone === plain.length) controller.abort(reason);
          },
        },
      );
      await assert.rejects(download, (error) => error === reason);
      assert.ok(controller.signal.aborted, 'the last bytes arrived');
      assert.deepEqual(readdirSync(folder), []);
    });
  });

  describe('from a plain HTTP server', () => {
    const content = randomBytes(4 * MiB + 99);

    it('resumes with a Range request after the connection drops half way', async () => {
      const half = Math.floor(content.length / 2);
      let dropped = false;
      const server = await startHttpServer((req, res) => {
        if (req.headers.range === undefined && !dropped) {
          dropped = true;
          res.writeHead(200, { etag: '"v1"', 'content-length': content.length });
          res.write(content.subarray(0, half), () => res.socket?.destroy());
          return;
        }
        serveRange(content, req, res);
      });
      try {
        const folder = emptyFolder('http-resume');
        const result = await createDownloader(testConfig).download(
          { url: server.url },
          { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
        );
        assert.equal(result.sha256, sha('sha256', content));
        assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', content));
        assert.ok(dropped);
        const resumed = server.requests.find((request) => /^bytes=[1-9]\d*-$/.test(request.range ?? ''));
        assert.ok(resumed, `no resuming Range request among ${JSON.stringify(server.requests)}`);
        const start = Number(/\d+/.exec(resumed.range ?? '')?.[0]);
        assert.ok(start <= half, `resumed at ${start}, after only ${half} bytes were sent`);
        assert.equal(resumed.ifRange, '"v1"');
        assert.deepEqual(readdirSync(folder), ['disk.raw']);
      } finally {
        await server.close();
      }
    });

    it('follows redirects, relative and absolute, for the stat and for the transfer', async () => {
      const paths: string[] = [];
      const server = await startHttpServer((req, res) => {
        paths.push(req.url ?? '');
        if (req.url === '/disk.raw') res.writeHead(301, { location: '/moved/disk.raw?v=2' }).end();
        else if (req.url === '/moved/disk.raw?v=2')
          res.writeHead(302, { location: new URL('/final.raw', server.url).href }).end();
        else serveRange(content, req, res);
      });
      try {
        const folder = emptyFolder('http-redirects');
        const result = await createDownloader(testConfig).download(
          { url: server.url },
          { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
        );
        assert.equal(result.sha256, sha('sha256', content));
        const hops = ['/disk.raw', '/moved/disk.raw?v=2', '/final.raw'];
        assert.deepEqual(paths, [...hops, ...hops]);
      } finally {
        await server.close();
      }
    });

    for (const [what, location, message] of [
      ['a redirect loop', '/disk.raw', /redirected more than 5 times/],
      [
        'a redirect to another scheme',
        'file:///etc/shadow',
        /redirected to file:\/\/\/etc\/shadow, which is not an http\(s\) URL/,
      ],
    ] as const) {
      it(`refuses ${what} with SourceRequestFailed, leaving no file`, async () => {
        const server = await startHttpServer((_req, res) => res.writeHead(302, { location }).end());
        try {
          const folder = emptyFolder(`http-bad-redirect-${what.split(' ').at(-1)}`);
          const error = await rejectsWith(
            createDownloader(testConfig).download(
              { url: server.url },
              { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
            ),
            'SourceRequestFailed',
          );
          assert.match(error.message, message);
          assert.deepEqual(readdirSync(folder), []);
        } finally {
          await server.close();
        }
      });
    }

    it('given its stat, asks the server nothing more before the transfer', async () => {
      const server = await startHttpServer((req, res) => serveRange(content, req, res));
      try {
        const folder = emptyFolder('http-statted');
        const downloader = createDownloader(testConfig);
        const signal = new AbortController().signal;
        const stat = await downloader.stat({ url: server.url }, signal);
        assert.deepEqual(server.requests, [{ range: 'bytes=0-0', ifRange: undefined }]);
        const result = await downloader.download(
          { url: server.url },
          { destinationPath: join(folder, 'disk.raw'), signal, stat },
        );
        assert.equal(result.sha256, sha('sha256', content));
        assert.deepEqual(server.requests.slice(1), [{ range: undefined, ifRange: undefined }]);
      } finally {
        await server.close();
      }
    });

    it('fails with SourceChanged when the object changed after the stat it was given, leaving no file', async () => {
      const replaced = randomBytes(content.length);
      const server = await startHttpServer((req, res, requestNumber) => {
        if (requestNumber === 1) return serveRange(content, req, res);
        res.writeHead(200, { etag: '"v2"', 'content-length': replaced.length });
        res.end(replaced);
      });
      try {
        const folder = emptyFolder('http-statted-changed');
        const downloader = createDownloader(testConfig);
        const signal = new AbortController().signal;
        const stat = await downloader.stat({ url: server.url }, signal);
        const error = await rejectsWith(
          downloader.download(
            { url: server.url },
            { destinationPath: join(folder, 'disk.raw'), signal, stat },
          ),
          'SourceChanged',
        );
        assert.match(error.message, /"v1" became "v2"/);
        assert.deepEqual(readdirSync(folder), []);
      } finally {
        await server.close();
      }
    });

    it('refuses a source that sends far more bytes than it announced (SourceChanged), leaving no file', async () => {
      // The size check answers 1 MiB; the body then streams 16 MiB without a length.
      const server = await startHttpServer((req, res) => {
        if (req.headers.range === 'bytes=0-0') {
          res.writeHead(206, { 'content-range': `bytes 0-0/${MiB}`, 'content-length': 1 });
          res.end(content.subarray(0, 1));
          return;
        }
        res.writeHead(200, { 'transfer-encoding': 'chunked' });
        for (let sent = 0; sent < 16 * MiB; sent += content.length) res.write(content);
        res.end();
      });
      try {
        const folder = emptyFolder('http-oversized');
        const error = await rejectsWith(
          createDownloader(testConfig).download(
            { url: server.url },
            { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
          ),
          'SourceChanged',
        );
        assert.match(error.message, /sent more than the 1048576 bytes it announced/);
        assert.deepEqual(readdirSync(folder), []);
      } finally {
        await server.close();
      }
    });

    it('starts over from byte 0 when the server ignores the Range header', async () => {
      const server = await startHttpServer((_req, res, requestNumber) => {
        res.writeHead(200, { 'content-length': content.length });
        // Request 1 is the stat; the transfer's first request is cut after a megabyte.
        if (requestNumber === 2) {
          res.write(content.subarray(0, MiB), () => res.socket?.destroy());
          return;
        }
        res.end(content);
      });
      try {
        const folder = emptyFolder('http-no-ranges');
        // What a reader of the partial file was told, and the file's size at that moment.
        const told: { bytes: number; fileBytes: number }[] = [];
        const result = await createDownloader(testConfig).download(
          { url: server.url },
          {
            destinationPath: join(folder, 'disk.raw'),
            signal: new AbortController().signal,
            onWritten: ({ path, bytes }) => told.push({ bytes, fileBytes: statSync(path).size }),
          },
        );
        assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', content));
        assert.equal(result.sha256, sha('sha256', content));
        // It says it starts over before it empties the file, then counts from 0 again.
        const restart = told.findIndex(({ bytes }) => bytes === 0);
        assert.ok(restart > 0, `told ${JSON.stringify(told.map(({ bytes }) => bytes))}`);
        assert.ok((told[restart]?.fileBytes ?? 0) >= MiB, 'the file still held the first attempt');
        assert.equal(told.at(-1)?.bytes, content.length);
        assert.ok(
          told
            .slice(0, restart)
            .every(({ bytes }, index, all) => index === 0 || bytes > (all[index - 1]?.bytes ?? 0)),
        );
        assert.ok(
          server.requests.some((request) => /^bytes=[1-9]\d*-$/.test(request.range ?? '')),
          'it asked to resume before starting over',
        );
      } finally {
        await server.close();
      }
    });

    it('goes on in one request when a slow server answers a range request with the whole object', async () => {
      // 64 KiB every 5 ms: the download waits for bytes, so it asks for ranges.
      const writeSlowly = async (res: ServerResponse) => {
        for (let at = 0; at < content.length && !res.destroyed; at += 64 * 1024) {
          res.write(content.subarray(at, at + 64 * 1024));
          await sleep(5);
        }
        res.end();
      };
      const server = await startHttpServer((_req, res) => {
        res.writeHead(200, { 'content-length': content.length });
        void writeSlowly(res);
      });
      try {
        const folder = emptyFolder('http-slow-no-ranges');
        const config = { ...testConfig, connections: 4, chunkBytes: 256 * 1024, probeBytes: 512 * 1024 };
        const result = await createDownloader(config).download(
          { url: server.url },
          { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
        );
        assert.equal(result.sha256, sha('sha256', content));
        assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', content));
        const ranges = server.requests.map(({ range }) => range ?? '');
        const bounded = ranges.filter((range) => /^bytes=[1-9]\d*-\d+$/.test(range));
        assert.ok(bounded.length > 0, `it asked for a range after the probe: ${ranges}`);
        assert.match(ranges.at(-1) ?? '', /^bytes=[1-9]\d*-$/, 'then for the rest in one request');
        assert.deepEqual(readdirSync(folder), ['disk.raw']);
      } finally {
        await server.close();
      }
    });

    it('gives up with DownloadStalled when no bytes arrive within the stall timeout', async () => {
      const server = await startHttpServer((req, res) => {
        if (req.headers.range === 'bytes=0-0') return serveRange(content, req, res);
        // Headers and a first megabyte, then silence with the connection open.
        const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
        res.writeHead(start ? 206 : 200, {
          'content-length': content.length - start,
          ...(start ? { 'content-range': `bytes ${start}-${content.length - 1}/${content.length}` } : {}),
        });
        if (!start) res.write(content.subarray(0, MiB));
      });
      try {
        const folder = emptyFolder('http-stall');
        const error = await rejectsWith(
          createDownloader({
            ...testConfig,
            stallTimeoutMs: 300,
            retry: { ...testConfig.retry, maxRetries: 1 },
          }).download(
            { url: server.url },
            { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
          ),
          'DownloadStalled',
        );
        assert.match(error.message, /no bytes received for 300 ms/);
        assert.ok(
          server.requests.some(
            (request) => request.range?.startsWith('bytes=') && request.range !== 'bytes=0-0',
          ),
        );
        assert.deepEqual(readdirSync(folder), []);
      } finally {
        await server.close();
      }
    });

    it('refuses with InsufficientCacheSpace before writing when the image exceeds free space', async () => {
      const claimedSize = 2 ** 50; // 1 PiB
      const server = await startHttpServer((_req, res) => {
        res.writeHead(206, { 'content-length': 1, 'content-range': `bytes 0-0/${claimedSize}` });
        res.end('x');
      });
      try {
        const folder = emptyFolder('http-space');
        const error = await rejectsWith(
          createDownloader(testConfig).download(
            { url: server.url },
            { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
          ),
          'InsufficientCacheSpace',
        );
        assert.equal(error.terminal, false);
        assert.match(
          error.message,
          /is 1\.0 PiB; the download needs 1\.1 PiB free in .*http-space, which has/,
        );
        assert.deepEqual(
          server.requests,
          [{ range: 'bytes=0-0', ifRange: undefined }],
          'only the stat request',
        );
        assert.deepEqual(readdirSync(folder), []);
      } finally {
        await server.close();
      }
    });

    it('reports 404 as SourceNotFound and keeps the query string out of the message', async () => {
      const server = await startHttpServer((_req, res) => {
        res.writeHead(404).end();
      });
      try {
        const folder = emptyFolder('http-404');
        const error = await rejectsWith(
          createDownloader(testConfig).download(
            { url: `${server.url}?X-Amz-Signature=s3cr3t` },
            { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
          ),
          'SourceNotFound',
        );
        assert.match(error.message, /disk\.raw answered HTTP 404/);
        assert.ok(!error.message.includes('s3cr3t'));
        assert.deepEqual(readdirSync(folder), []);
      } finally {
        await server.close();
      }
    });
  });

  describe("from MinIO over HTTPS with a private CA (the Secret's ca.crt)", () => {
    let tlsMinio: MinioServer;
    let caBundle: string;
    const tlsDownloader = () => createDownloader({ ...testConfig, s3Endpoint: { url: tlsMinio.endpoint } });
    const tlsCredentials = () => ({ accessKeyId: tlsMinio.accessKey, secretKey: tlsMinio.secretKey });

    before(async () => {
      const dir = emptyFolder('minio-tls-certs');
      const certificate = await makeServerCertificate(dir, { commonName: '127.0.0.1' });
      caBundle = readFileSync(certificate.ca, 'utf8');
      tlsMinio = await startMinio(join(scratch, 'minio-tls'), {
        tls: { certFile: certificate.cert, keyFile: certificate.key, caFile: certificate.ca },
      });
      const client = tlsMinio.client();
      await client.makeBucket(BUCKET);
      await client.putObject(BUCKET, 'disks/zeroed.raw', zeroed, zeroed.length);
      await client.putObject(BUCKET, 'disks/zeroed.raw.sha256', `${sha('sha256', zeroed)}  zeroed.raw\n`);
    });
    after(async () => {
      await tlsMinio?.stop();
    });

    it('stats, reads the checksum sidecar and downloads over TLS, trusting the CA bundle', async () => {
      assert.match(tlsMinio.endpoint, /^https:/);
      const folder = emptyFolder('s3-tls');
      const result = await tlsDownloader().download(
        { url: `s3://${BUCKET}/disks/zeroed.raw`, credentials: { ...tlsCredentials(), caBundle } },
        { destinationPath: join(folder, 'zeroed.raw'), signal: new AbortController().signal },
      );
      assert.equal(result.sha256, sha('sha256', zeroed));
      assert.equal(sha('sha256', readFileSync(result.path)), sha('sha256', zeroed));
      assert.deepEqual(readdirSync(folder), ['zeroed.raw']);
    });

    it('fails with SourceTLSFailed without the CA bundle, leaving no file', async () => {
      const folder = emptyFolder('s3-tls-no-ca');
      const error = await rejectsWith(
        tlsDownloader().download(
          { url: `s3://${BUCKET}/disks/zeroed.raw`, credentials: tlsCredentials() },
          { destinationPath: join(folder, 'zeroed.raw'), signal: new AbortController().signal },
        ),
        'SourceTLSFailed',
      );
      assert.match(error.message, /ca\.crt/);
      assert.ok(!error.message.includes(tlsMinio.secretKey), 'the message holds no secret');
      assert.deepEqual(readdirSync(folder), []);
    });
  });

  describe('from an HTTPS server with a private CA', () => {
    const content = randomBytes(MiB + 5);
    let server: TestServer;
    let caBundle: string;
    let tlsConnections = 0;

    before(async () => {
      const dir = emptyFolder('tls');
      const certificate = await makeServerCertificate(dir, { commonName: '127.0.0.1' });
      caBundle = readFileSync(certificate.ca, 'utf8');
      const requests: RecordedRequest[] = [];
      const https = createHttpsServer(
        { key: readFileSync(certificate.key), cert: readFileSync(certificate.cert) },
        (req, res) => serveRange(content, req, res),
      );
      https.on('secureConnection', () => {
        tlsConnections += 1;
      });
      server = await listen(https, 'https', requests);
    });
    after(async () => {
      await server?.close();
    });

    it('trusts the server with the CA bundle from the Secret', async () => {
      const folder = emptyFolder('https-ca');
      const result = await createDownloader(testConfig).download(
        { url: server.url, credentials: { caBundle } },
        { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
      );
      assert.equal(result.sha256, sha('sha256', content));
    });

    it('shares one connection between the stats of downloads that trust the same CA', async () => {
      const folder = emptyFolder('https-reuse');
      const downloader = createDownloader(testConfig);
      // A bundle no other test used (one more newline), so no connection is open for it yet.
      const bundle = `${caBundle}\n`;
      const before = tlsConnections;
      for (const name of ['one.raw', 'two.raw']) {
        await downloader.download(
          { url: server.url, credentials: { caBundle: bundle } },
          { destinationPath: join(folder, name), signal: new AbortController().signal },
        );
      }
      // Each download is a stat and a transfer: the stats share one kept-alive connection
      // (undici's), and the transfers another (httpGet's); four if nothing were shared.
      assert.equal(tlsConnections - before, 2);
    });

    it('fails with SourceTLSFailed without it, leaving no file', async () => {
      const folder = emptyFolder('https-no-ca');
      const error = await rejectsWith(
        createDownloader(testConfig).download(
          { url: server.url },
          { destinationPath: join(folder, 'disk.raw'), signal: new AbortController().signal },
        ),
        'SourceTLSFailed',
      );
      assert.match(error.message, /ca\.crt/);
      assert.deepEqual(readdirSync(folder), []);
    });
  });
});
