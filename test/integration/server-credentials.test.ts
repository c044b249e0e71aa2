// Rotated credentials on a running server: renewed TLS certificates (made with the rig's
// openssl) are served to new connections, a pair that does not fit yet is kept out, and the
// static /metrics token follows its file. Rounds run through check(), so no test waits on
// the interval, except the one that proves the interval itself runs.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from 'node:tls';
import { pino } from 'pino';
import { readTlsFiles, reloadingTokenCheck, reloadServerTls } from '../../src/server/credentials.ts';
import type { FileReloader } from '../../src/server/file-reloader.ts';
import { type RunningServer, startServer } from '../../src/server/server.ts';
import { ProvisionerMetrics } from '../../src/telemetry/metrics.ts';
import { makeServerCertificate, type ServerCertificate } from '../rig/certs.ts';
import { waitUntil } from '../rig/net.ts';
import { makeWorkDir } from '../rig/workdir.ts';

const HOUR_MS = 3_600_000;

/** A logger whose lines the test reads. */
function recordingLogger() {
  const lines: { level: number; msg: string; err?: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  return { logger, lines };
}

/** The SHA-256 fingerprint of the certificate a new TLS connection is served. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(socket.getPeerX509Certificate()?.fingerprint256 ?? '');
      socket.end();
    });
    socket.once('error', reject);
  });
}

const serverOptions = () => ({
  version: 'v0.1.0',
  startedAt: Date.now(),
  metrics: new ProvisionerMetrics(),
  jobSlots: () => ({ running: 0, slots: 2 }),
  readiness: {},
  logger: pino({ level: 'silent' }),
});

const fingerprintOf = (certificate: ServerCertificate) =>
  new X509Certificate(readTlsFiles(certificate).cert).fingerprint256;

describe('rotated server credentials', () => {
  let workDir: string;
  let first: ServerCertificate;
  let renewed: ServerCertificate;
  const live = { cert: '', key: '' };

  before(async () => {
    workDir = makeWorkDir('server-credentials');
    const dir = (name: string) => {
      mkdirSync(join(workDir, name));
      return join(workDir, name);
    };
    [first, renewed] = await Promise.all([
      makeServerCertificate(dir('first'), { commonName: 'first' }),
      makeServerCertificate(dir('renewed'), { commonName: 'renewed' }),
    ]);
    live.cert = join(workDir, 'tls.crt');
    live.key = join(workDir, 'tls.key');
  });

  async function tlsServer(): Promise<RunningServer> {
    copyFileSync(first.cert, live.cert);
    copyFileSync(first.key, live.key);
    return startServer(serverOptions(), { port: 0, address: '127.0.0.1', tls: readTlsFiles(live) });
  }

  describe('TLS', () => {
    let server: RunningServer;
    let reloader: FileReloader | undefined;
    before(async () => {
      server = await tlsServer();
    });
    after(async () => {
      reloader?.stop();
      await server.close();
    });

    it('keeps a renewed certificate out until its key arrives, then serves it to new connections', async () => {
      const { logger, lines } = recordingLogger();
      reloader = reloadServerTls(server, live, readTlsFiles(live), logger, HOUR_MS);
      assert.equal(await servedFingerprint(server.port), fingerprintOf(first));

      // The kubelet may show the new certificate a moment before the new key.
      copyFileSync(renewed.cert, live.cert);
      await reloader.check();
      assert.equal(await servedFingerprint(server.port), fingerprintOf(first));
      const warning = lines.find((line) => line.msg === 'still serving the previous TLS certificates');
      assert.match(warning?.err ?? '', /key values mismatch/);

      // The same half-renewed pair is reported once, not every round.
      await reloader.check();
      assert.equal(lines.filter((line) => line.msg === warning?.msg).length, 1);

      copyFileSync(renewed.key, live.key);
      await reloader.check();
      assert.equal(await servedFingerprint(server.port), fingerprintOf(renewed));
      assert.ok(lines.some((line) => line.msg === 'serving renewed TLS certificates'));
    });

    it('keeps serving while a file is missing, and says which', async () => {
      const { logger, lines } = recordingLogger();
      reloader?.stop();
      reloader = reloadServerTls(server, live, readTlsFiles(live), logger, HOUR_MS);
      const served = await servedFingerprint(server.port);
      rmSync(live.key);
      await reloader.check();
      assert.equal(await servedFingerprint(server.port), served);
      assert.match(lines.at(-1)?.err ?? '', /cannot re-read .*tls\.key.*ENOENT/);
      copyFileSync(renewed.key, live.key);
    });

    it('picks up a renewal on its own, on the interval', async () => {
      reloader?.stop();
      copyFileSync(first.cert, live.cert);
      copyFileSync(first.key, live.key);
      server.setTls(readTlsFiles(live));
      assert.equal(await servedFingerprint(server.port), fingerprintOf(first));

      reloader = reloadServerTls(server, live, readTlsFiles(live), pino({ level: 'silent' }), 20);
      copyFileSync(renewed.cert, live.cert);
      copyFileSync(renewed.key, live.key);
      await waitUntil(async () => (await servedFingerprint(server.port)) === fingerprintOf(renewed), {
        what: 'the renewed certificate',
        timeoutMs: 10_000,
      });
    });
  });

  it('refuses new TLS files on a plain HTTP server, and a client CA that was not there at start', async () => {
    const plain = await startServer(serverOptions(), { port: 0, address: '127.0.0.1' });
    const withTls = await tlsServer();
    try {
      assert.throws(() => plain.setTls(readTlsFiles(first)), /started without TLS/);
      assert.throws(
        () => withTls.setTls(readTlsFiles({ ...first, clientCa: first.ca })),
        /client CA can only be added or removed by a restart/,
      );
    } finally {
      await Promise.all([plain.close(), withTls.close()]);
    }
  });

  it('checks /metrics against a rotated token, and keeps the old one when the new file is empty', async () => {
    const path = join(workDir, 'token');
    writeFileSync(path, 'first-token\n');
    const { logger, lines } = recordingLogger();
    const { check, reloader } = reloadingTokenCheck(path, logger, HOUR_MS);
    try {
      assert.equal(await check('first-token'), 'allowed');

      writeFileSync(path, 'second-token');
      await reloader.check();
      assert.equal(await check('first-token'), 'unauthenticated');
      assert.equal(await check('second-token'), 'allowed');

      writeFileSync(path, '');
      await reloader.check();
      assert.equal(await check('second-token'), 'allowed');
      assert.match(lines.at(-1)?.err ?? '', /token is empty/);
      assert.ok(JSON.stringify(lines).includes('second-token') === false, 'tokens never reach a log line');
    } finally {
      reloader.stop();
    }
  });
});
