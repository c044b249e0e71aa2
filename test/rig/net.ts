// Loopback ports and readiness polling shared by the rig's components.
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ManagedProcess } from './processes.ts';

/** A port that was free on 127.0.0.1 a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not allocate a loopback port'));
      });
    });
  });
}

export interface WaitOptions {
  what: string;
  timeoutMs: number;
  intervalMs?: number;
  /** Fails fast, with this process's log, if it dies while we wait. */
  process?: ManagedProcess;
}

/** Polls `probe` until it returns true; a timeout names what was awaited and the last error. */
export async function waitUntil(probe: () => Promise<boolean>, options: WaitOptions): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let lastError = 'not ready';
  while (Date.now() < deadline) {
    options.process?.assertRunning();
    try {
      if (await probe()) return;
    } catch (error) {
      lastError = error instanceof Error ? error.message : String(error);
    }
    await sleep(options.intervalMs ?? 200);
  }
  const log = options.process ? `; log: ${options.process.logFile}\n${options.process.logTail()}` : '';
  throw new Error(`${options.what} not ready after ${options.timeoutMs} ms (${lastError})${log}`);
}

/** The HTTP status of a GET, trusting `ca` for https; the body is discarded. */
export function httpStatus(
  url: string,
  options: { ca?: Buffer; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<number> {
  const request = url.startsWith('https:') ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { headers: options.headers, ca: options.ca, timeout: options.timeoutMs ?? 5_000 },
      (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.once('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.once('error', reject);
    req.end();
  });
}
