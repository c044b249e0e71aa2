// Mounted Secrets change under a running pod: cert-manager renews the serving certificate, an
// admin rotates the metrics token, and the kubelet swaps the files in place (a symlink flip of
// `..data`). Polling the content catches that swap where inotify on the file path does not,
// the way controller-runtime's certwatcher re-reads its files on an interval.
import { readFile } from 'node:fs/promises';

export interface FileReloader {
  stop(): void;
  /** Reads the files once now and applies any change; the interval calls the same. */
  check(): Promise<void>;
}

export interface FileReloaderOptions {
  paths: readonly string[];
  /** The contents already in use, in the order of `paths`. */
  initial: readonly Buffer[];
  intervalMs: number;
  /** Applies new contents; a throw keeps the old ones in use (reported through onError). */
  apply(contents: Buffer[]): void;
  onError(error: Error): void;
}

/**
 * Re-reads `paths` every `intervalMs` and calls `apply` when any content changed. A file that
 * is briefly missing or a pair that does not fit yet (a new certificate before its new key)
 * is reported once per distinct content and retried on the next round.
 */
export function reloadFilesOnChange(options: FileReloaderOptions): FileReloader {
  let applied = options.initial;
  let rejected: readonly Buffer[] | undefined;
  const same = (a: readonly Buffer[], b: readonly Buffer[] | undefined) =>
    b !== undefined &&
    a.length === b.length &&
    a.every((content, index) => content.equals(b[index] as Buffer));
  let running: Promise<void> | undefined;

  const round = async () => {
    let contents: Buffer[];
    try {
      contents = await Promise.all(options.paths.map((path) => readFile(path)));
    } catch (error) {
      options.onError(new Error(`cannot re-read ${options.paths.join(', ')}: ${(error as Error).message}`));
      return;
    }
    if (same(contents, applied) || same(contents, rejected)) return;
    try {
      options.apply(contents);
      applied = contents;
      rejected = undefined;
    } catch (error) {
      rejected = contents;
      options.onError(error as Error);
    }
  };
  // One round at a time: a slow read must not let two rounds apply out of order.
  const check = () => {
    running ??= round().finally(() => {
      running = undefined;
    });
    return running;
  };
  const timer = setInterval(() => void check(), options.intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer), check };
}
