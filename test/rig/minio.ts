// A real MinIO server on loopback, built from the Go module proxy.
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { Agent as HttpsAgent } from 'node:https';
import { join } from 'node:path';
import { Client } from 'minio';
import { freePort, httpStatus, waitUntil } from './net.ts';
import { ManagedProcess } from './processes.ts';
import { goTool } from './tools.ts';

export interface MinioServer {
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  readonly accessKey: string;
  readonly secretKey: string;
  /** The running server's process ID (a new one after restart). */
  readonly pid: number;
  client(): Client;
  /** Kills the server at once (SIGKILL), as a crash would: open connections drop. */
  crash(): void;
  /** Starts the server again on the same port, data and credentials; resolves once it is ready. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface MinioOptions {
  /** Serve HTTPS with this key pair (PEM files), as a production MinIO with a private CA does. */
  tls?: { certFile: string; keyFile: string; caFile: string };
}

export async function startMinio(workDir: string, options: MinioOptions = {}): Promise<MinioServer> {
  mkdirSync(join(workDir, 'data'), { recursive: true });
  // MinIO reads its key pair from <certs-dir>/public.crt and private.key.
  const certsDir = join(workDir, 'certs');
  if (options.tls) {
    mkdirSync(certsDir, { recursive: true });
    copyFileSync(options.tls.certFile, join(certsDir, 'public.crt'));
    copyFileSync(options.tls.keyFile, join(certsDir, 'private.key'));
  }
  const port = await freePort();
  const consolePort = await freePort();
  const accessKey = `rig${randomBytes(6).toString('hex')}`;
  const secretKey = randomBytes(24).toString('hex');
  const launch = () =>
    new ManagedProcess({
      name: 'minio',
      command: goTool('minio'),
      args: [
        'server',
        '--quiet',
        '--address',
        `127.0.0.1:${port}`,
        '--console-address',
        `127.0.0.1:${consolePort}`,
        ...(options.tls ? ['--certs-dir', certsDir] : []),
        join(workDir, 'data'),
      ],
      env: {
        ...process.env,
        MINIO_ROOT_USER: accessKey,
        MINIO_ROOT_PASSWORD: secretKey,
        MINIO_BROWSER: 'off',
        MINIO_UPDATE: 'off',
        HOME: workDir,
      },
      logFile: join(workDir, 'minio.log'),
    });
  const useSSL = options.tls !== undefined;
  const ca = options.tls ? readFileSync(options.tls.caFile) : undefined;
  const endpoint = `${useSSL ? 'https' : 'http'}://127.0.0.1:${port}`;
  const ready = async (server: ManagedProcess) => {
    try {
      await waitUntil(
        async () => (await httpStatus(`${endpoint}/minio/health/ready`, ca ? { ca } : {})) === 200,
        {
          what: 'minio',
          timeoutMs: 60_000,
          process: server,
        },
      );
    } catch (error) {
      await server.stop();
      throw error;
    }
  };
  let minio = launch();
  await ready(minio);
  return {
    endpoint,
    host: '127.0.0.1',
    port,
    accessKey,
    secretKey,
    get pid() {
      return minio.pid;
    },
    client: () =>
      new Client({
        endPoint: '127.0.0.1',
        port,
        useSSL,
        accessKey,
        secretKey,
        ...(ca ? { transportAgent: new HttpsAgent({ ca }) } : {}),
      }),
    crash: () => minio.signal('SIGKILL'),
    async restart() {
      await minio.stop();
      minio = launch();
      await ready(minio);
    },
    stop: () => minio.stop(),
  };
}
