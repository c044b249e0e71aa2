// A memory cgroup around one process tree, to read the peak memory charged to it: resident
// memory and the page cache it wrote or read, which is what a pod's memory limit counts. The
// prior art's OOM kills came from page cache, which no RSS figure shows.
import { mkdir, readFile, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

export interface MemoryCgroup {
  /** Run a command in it: the command's process joins before it starts (see joinCommand). */
  readonly path: string;
  /** The most memory charged to it at once so far, in bytes. */
  peakBytes(): Promise<number>;
  /**
   * Page cache charged to it that is dirty or under writeback now, in bytes: what the kernel
   * cannot drop when the limit is reached, unlike clean page cache.
   */
  unwrittenBytes(): Promise<number>;
  /** Removes it; every process in it must have exited. */
  remove(): Promise<void>;
}

/**
 * Creates a memory cgroup below this process's own, with cgroup v1's memory controller or
 * cgroup v2's (memory.peak needs Linux 5.19). Resolves with why not where neither can be
 * used (no permission, no memory controller delegated).
 */
export async function createMemoryCgroup(name: string): Promise<MemoryCgroup | { unavailable: string }> {
  const membership = await readFile('/proc/self/cgroup', 'utf8').catch(() => '');
  const v1 = /^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(.*)$/m.exec(membership)?.[1];
  const v2 = /^0::(.*)$/m.exec(membership)?.[1];
  const candidate =
    v1 !== undefined
      ? {
          path: join('/sys/fs/cgroup/memory', v1, name),
          peakFile: 'memory.max_usage_in_bytes',
          unwritten: ['dirty', 'writeback'],
        }
      : v2 !== undefined
        ? {
            path: join('/sys/fs/cgroup', v2, name),
            peakFile: 'memory.peak',
            unwritten: ['file_dirty', 'file_writeback'],
          }
        : undefined;
  if (!candidate) return { unavailable: 'this process is in no memory cgroup' };
  const { path, peakFile, unwritten } = candidate;
  try {
    await mkdir(path);
  } catch (error) {
    return { unavailable: `cannot create ${path}: ${(error as Error).message}` };
  }
  if (!(await stat(join(path, peakFile)).catch(() => undefined))) {
    await rmdir(path).catch(() => {});
    return { unavailable: `${path} has no ${peakFile} (no memory controller there)` };
  }
  return {
    path,
    peakBytes: async () => Number((await readFile(join(path, peakFile), 'utf8')).trim()),
    unwrittenBytes: async () => {
      const lines = (await readFile(join(path, 'memory.stat'), 'utf8')).split('\n');
      return lines
        .map((line) => line.split(' '))
        .filter(([key]) => unwritten.includes(key ?? ''))
        .reduce((sum, [, value]) => sum + Number(value), 0);
    },
    remove: () => removeWhenEmpty(path),
  };
}

/**
 * `command` and `args` wrapped so that the process joins `cgroupPath` and then becomes the
 * command (exec keeps its PID), so everything it allocates or spawns is charged there.
 */
export function joinCommand(
  cgroupPath: string,
  command: string,
  args: readonly string[],
): { command: string; args: string[] } {
  return {
    command: 'sh',
    args: ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroupPath, command, ...args],
  };
}

export interface CgroupMemory {
  peakBytes: number;
  /** The most dirty or under-writeback page cache sampled (every 20 ms) during the work. */
  peakUnwrittenBytes: number;
}

/** Runs `work` and reports the memory charged to `cgroup` meanwhile. */
export async function measureCgroup(
  cgroup: MemoryCgroup,
  work: () => Promise<unknown>,
): Promise<CgroupMemory> {
  let peakUnwrittenBytes = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peakUnwrittenBytes = Math.max(peakUnwrittenBytes, await cgroup.unwrittenBytes());
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  try {
    await work();
  } finally {
    sampling = false;
    await sampler;
  }
  return { peakBytes: await cgroup.peakBytes(), peakUnwrittenBytes };
}

/** rmdir, retried for a few seconds: a stopped process's children may take a moment to exit. */
async function removeWhenEmpty(path: string): Promise<void> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await rmdir(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EBUSY' || attempt === 50) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
