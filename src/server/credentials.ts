// The server's mounted credentials, kept current while the pod runs: the serving certificate
// (and client CA) and the static metrics token are re-read on an interval and swapped in for
// new connections and requests, so a renewal or rotation needs no restart.
import { readFileSync } from 'node:fs';
import type { Logger } from '../telemetry/logger.ts';
import { type BearerCheck, staticTokenCheck } from './auth.ts';
import { type FileReloader, reloadFilesOnChange } from './file-reloader.ts';
import type { RunningServer, TlsFiles } from './server.ts';

/** As often as controller-runtime's certwatcher polls. */
export const CREDENTIAL_RELOAD_INTERVAL_MS = 10_000;

export interface TlsFilePaths {
  cert: string;
  key: string;
  clientCa?: string;
}

const tlsPathList = (paths: TlsFilePaths) => [
  paths.cert,
  paths.key,
  ...(paths.clientCa ? [paths.clientCa] : []),
];

function tlsOf([cert, key, clientCa]: readonly Buffer[]): TlsFiles {
  if (!cert || !key) throw new Error('a certificate and a key are both needed');
  return { cert, key, ...(clientCa ? { clientCa } : {}) };
}

/** Reads the TLS files once, for the server's start. */
export function readTlsFiles(paths: TlsFilePaths): TlsFiles {
  return tlsOf(tlsPathList(paths).map((path) => readFileSync(path)));
}

/** Swaps renewed TLS files into `server`; a pair that does not fit yet is logged and kept out. */
export function reloadServerTls(
  server: Pick<RunningServer, 'setTls'>,
  paths: TlsFilePaths,
  initial: TlsFiles,
  logger: Logger,
  intervalMs = CREDENTIAL_RELOAD_INTERVAL_MS,
): FileReloader {
  const files = tlsPathList(paths);
  const contents = [initial.cert, initial.key, ...(initial.clientCa ? [initial.clientCa] : [])];
  return reloadFilesOnChange({
    paths: files,
    initial: contents.map((content) => Buffer.from(content)),
    intervalMs,
    apply(next) {
      server.setTls(tlsOf(next));
      logger.info({ files }, 'serving renewed TLS certificates');
    },
    onError(error) {
      logger.warn({ err: error.message, files }, 'still serving the previous TLS certificates');
    },
  });
}

/** A static token check that follows the token file; an empty new token is refused. */
export function reloadingTokenCheck(
  path: string,
  logger: Logger,
  intervalMs = CREDENTIAL_RELOAD_INTERVAL_MS,
): { check: BearerCheck; reloader: FileReloader } {
  const initial = readFileSync(path);
  let current = staticTokenCheck(initial.toString('utf8'));
  const reloader = reloadFilesOnChange({
    paths: [path],
    initial: [initial],
    intervalMs,
    apply([content]) {
      current = staticTokenCheck(content?.toString('utf8') ?? '');
      logger.info({ file: path }, 'checking /metrics against the rotated token');
    },
    onError(error) {
      logger.warn({ err: error.message, file: path }, 'still checking /metrics against the previous token');
    },
  });
  return { check: (token) => current(token), reloader };
}
