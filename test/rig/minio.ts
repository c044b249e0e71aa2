// A real MinIO server on loopback, built from the Go module proxy.
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
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
  client(): Client;
  /** Kills the server at once (SIGKILL), as a crash would: open connections drop. */
  crash(): void;
  /** Starts the server again on the same port, data and credentials; resolves once it is ready. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function startMinio(workDir: string): Promise<MinioServer> {
  mkdirSync(join(workDir, 'data'), { recursive: true });
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
  const endpoint = `http://127.0.0.1:${port}`;
  const ready = async (server: ManagedProcess) => {
    try {
      await waitUntil(async () => (await httpStatus(`${endpoint}/minio/health/ready`)) === 200, {
        what: 'minio',
        timeoutMs: 60_000,
        process: server,
      });
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
    client: () => new Client({ endPoint: '127.0.0.1', port, useSSL: false, accessKey, secretKey }),
    crash: () => minio.signal('SIGKILL'),
    async restart() {
      await minio.stop();
      minio = launch();
      await ready(minio);
    },
    stop: () => minio.stop(),
  };
}
