// Drops a file's pages from the page cache. Page cache is charged to the pod's memory cgroup
// and counted by the kubelet's working set, so a multi-GiB download can get the pod evicted or
// OOM-killed. Node has no posix_fadvise; GNU dd calls posix_fadvise(POSIX_FADV_DONTNEED) for
// `oflag=nocache`, and with `count=0` it does so for the whole file without writing a byte.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface PageCache {
  /** Evicts the file's clean pages; call it after an fsync, since dirty pages cannot go. */
  evict(path: string): Promise<void>;
}

/**
 * Best effort: without GNU dd (a distroless image) the first failure is reported once through
 * `onUnavailable` and eviction stops, leaving only the periodic fsync to bound dirty pages.
 */
export function ddPageCache(onUnavailable: (message: string) => void = () => {}): PageCache {
  let available = true;
  return {
    async evict(path) {
      if (!available) return;
      try {
        await run('dd', [`of=${path}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0', 'status=none']);
      } catch (error) {
        available = false;
        const detail = error instanceof Error ? error.message : String(error);
        onUnavailable(`page cache eviction with dd is unavailable, downloads only fsync: ${detail}`);
      }
    },
  };
}
