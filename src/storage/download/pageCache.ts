// Drops a file's pages from the page cache. Page cache is charged to the pod's memory cgroup
// and counted by the kubelet's working set, so a multi-GiB download can get the pod evicted or
// OOM-killed. Node has no posix_fadvise; GNU dd calls posix_fadvise(POSIX_FADV_DONTNEED) for
// `oflag=nocache`, and with `count=0` it does so for the whole file without writing a byte.
//
// dd runs from one long-lived shell, not from this process: spawning a child forks the whole
// controller, which blocks the event loop for about 0.11 ms per MB resident (15 ms at 140 MB),
// and writers evict every 64 MiB, so each eviction stalled the download that asked for it
// (about 10 % of a download's time on this project's bench machine).
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';

export interface PageCache {
  /** Evicts the file's clean pages; call it after an fsync, since dirty pages cannot go. */
  evict(path: string): Promise<void>;
}

/**
 * Reads one path per line and answers each with one line, in order: `ok`, or `error` and dd's
 * exit status and message. `set -f` keeps the unquoted message from being globbed; leaving it
 * unquoted joins its lines into one.
 */
const EVICTION_LOOP = `set -f
while IFS= read -r path; do
  if out=$(dd of="$path" oflag=nocache conv=notrunc,fdatasync count=0 status=none 2>&1); then
    echo ok
  else
    echo error "$?:" $out
  fi
done`;

/** The shell is gone (or never started); a new one may do better, unlike a failing dd. */
class ShellGone extends Error {}

class EvictionShell {
  readonly #child: ChildProcessByStdio<Writable, Readable, null>;
  readonly #waiting: { resolve: () => void; reject: (error: Error) => void }[] = [];
  #gone: ShellGone | undefined;

  constructor() {
    this.#child = spawn('sh', ['-c', EVICTION_LOOP], { stdio: ['pipe', 'pipe', 'ignore'] });
    this.#child.on('error', (error) =>
      this.#end(new ShellGone(`the eviction shell failed: ${error.message}`)),
    );
    this.#child.on('exit', (code, signal) =>
      this.#end(new ShellGone(`the eviction shell exited (${signal ?? `status ${code}`})`)),
    );
    // A broken pipe surfaces as the exit above; without a listener it would throw.
    this.#child.stdin.on('error', () => {});
    createInterface({ input: this.#child.stdout }).on('line', (line) => this.#answer(line));
    this.#holdProcess(false);
  }

  get gone(): boolean {
    return this.#gone !== undefined;
  }

  evict(path: string): Promise<void> {
    if (this.#gone) return Promise.reject(this.#gone);
    if (path.includes('\n'))
      return Promise.reject(new Error(`cannot evict ${JSON.stringify(path)}: it holds a line break`));
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#holdProcess(true);
      this.#child.stdin.write(`${path}\n`);
    });
  }

  #answer(line: string): void {
    const next = this.#waiting.shift();
    if (line === 'ok') next?.resolve();
    else next?.reject(new Error(`dd failed with ${line.replace(/^error /, 'status ')}`));
    if (this.#waiting.length === 0) this.#holdProcess(false);
  }

  #end(reason: ShellGone): void {
    this.#gone ??= reason;
    for (const waiting of this.#waiting.splice(0)) waiting.reject(reason);
  }

  /** The shell keeps this process alive only while an eviction waits for it. */
  #holdProcess(hold: boolean): void {
    for (const handle of [this.#child, this.#child.stdin, this.#child.stdout] as Partial<RefHandle>[]) {
      if (hold) handle.ref?.();
      else handle.unref?.();
    }
  }
}

interface RefHandle {
  ref(): void;
  unref(): void;
}

/** One shell for the whole process, started on first use and again if it dies. */
let shell: EvictionShell | undefined;
function evictionShell(): EvictionShell {
  if (!shell || shell.gone) shell = new EvictionShell();
  return shell;
}

/**
 * Best effort: a dd that fails (a distroless image has none) is reported once through
 * `onUnavailable` and eviction stops, leaving only the periodic fsync to bound dirty pages. A
 * shell that died is started again once before that.
 */
export function ddPageCache(onUnavailable: (message: string) => void = () => {}): PageCache {
  let available = true;
  return {
    async evict(path) {
      if (!available) return;
      try {
        await evictionShell()
          .evict(path)
          .catch((error: unknown) => {
            if (error instanceof ShellGone) return evictionShell().evict(path);
            throw error;
          });
      } catch (error) {
        available = false;
        const detail = error instanceof Error ? error.message : String(error);
        onUnavailable(`page cache eviction with dd is unavailable, writes are only flushed: ${detail}`);
      }
    },
  };
}

/**
 * Keeps the page cache of a file that another process writes (qemu-img into a file target)
 * from growing with the image: evicts it each time the writer reports `intervalBytes` more
 * progress, one eviction at a time. Only clean pages go, so it is for a writer that flushes as
 * it goes.
 */
export class TrailingEviction {
  readonly #pageCache: PageCache;
  readonly #path: string;
  readonly #intervalBytes: number;
  #evictedAt = 0;
  #running: Promise<void> | undefined;

  constructor(pageCache: PageCache, path: string, intervalBytes: number) {
    this.#pageCache = pageCache;
    this.#path = path;
    this.#intervalBytes = intervalBytes;
  }

  /** The writer has written `bytes` from the start. */
  progressed(bytes: number): void {
    if (this.#running || bytes - this.#evictedAt < this.#intervalBytes) return;
    this.#evictedAt = bytes;
    this.#running = this.#pageCache.evict(this.#path).finally(() => {
      this.#running = undefined;
    });
  }

  /** Resolves when no eviction runs. Call it before removing the file: dd would create it anew. */
  async idle(): Promise<void> {
    await this.#running;
  }

  /** Evicts what the writer left, once it has finished. */
  async finish(): Promise<void> {
    await this.idle();
    await this.#pageCache.evict(this.#path);
  }
}
