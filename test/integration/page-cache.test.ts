// Page cache eviction with the real GNU dd, run from one long-lived shell, checked with
// util-linux's fincore (how much of a file is resident in the page cache).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ddPageCache } from '../../src/storage/download/pageCache.ts';
import { projectRoot } from '../rig/tools.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { residentBytes } from '../support/page-cache.ts';

const MiB = 1024 * 1024;

/** A file of `mib` MiB, written, flushed and read back, so that it sits in the page cache. */
function cachedFile(dir: string, name: string, mib: number): string {
  const path = join(dir, name);
  writeFileSync(path, Buffer.alloc(mib * MiB, 7));
  execFileSync('sync', ['-f', path]);
  readFileSync(path);
  assert.ok(residentBytes(path) > 0, `${name} is in the page cache before eviction`);
  return path;
}

/** This process's children running the eviction shell. */
function evictionShells(): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return (
          parent === process.pid && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('oflag=nocache')
        );
      } catch {
        return false; // it exited while we looked
      }
    })
    .map(Number);
}

describe('page cache eviction (GNU dd through one shell)', () => {
  const dir = makeWorkDir('page-cache');

  it('drops files from the page cache, for many concurrent callers, through one shell', async () => {
    const messages: string[] = [];
    const pageCache = ddPageCache((message) => messages.push(message));
    const files = Array.from({ length: 12 }, (_, index) => cachedFile(dir, `file-${index}`, 4));
    await Promise.all(files.map((path) => pageCache.evict(path)));
    for (const path of files) assert.equal(residentBytes(path), 0, `${path} is still cached`);
    assert.deepEqual(messages, []);
    assert.equal(evictionShells().length, 1, 'one shell ran every eviction');
  });

  it('starts the shell again when it died, without reporting eviction as unavailable', async () => {
    const messages: string[] = [];
    const pageCache = ddPageCache((message) => messages.push(message));
    await pageCache.evict(cachedFile(dir, 'before-kill', 1));
    const [shell] = evictionShells();
    assert.ok(shell, 'the eviction shell runs');
    process.kill(shell, 'SIGKILL');
    const path = cachedFile(dir, 'after-kill', 4);
    await pageCache.evict(path);
    assert.equal(residentBytes(path), 0);
    assert.deepEqual(messages, []);
    assert.notEqual(evictionShells()[0], shell, 'a new shell took over');
  });

  it("reports a failing dd once, with dd's message, and stops evicting", async () => {
    const messages: string[] = [];
    const pageCache = ddPageCache((message) => messages.push(message));
    await pageCache.evict(join(dir, 'missing-folder', 'file'));
    assert.equal(messages.length, 1);
    assert.match(
      messages[0] ?? '',
      /dd failed with status 1: dd: failed to open .*missing-folder\/file.*No such file/,
    );
    const path = cachedFile(dir, 'after-failure', 1);
    await pageCache.evict(path);
    assert.ok(residentBytes(path) > 0, 'eviction stopped after the failure');
    assert.equal(messages.length, 1, 'reported once');
  });

  it('reports a missing dd, and never keeps the process alive', () => {
    // A PATH with sh and nothing else: the shell starts, dd is not found (status 127).
    const bin = join(dir, 'bin-without-dd');
    mkdirSync(bin);
    symlinkSync('/bin/sh', join(bin, 'sh'));
    const script = `
      import { ddPageCache } from ${JSON.stringify(join(projectRoot, 'src/storage/download/pageCache.ts'))};
      await ddPageCache((message) => console.log(message)).evict(${JSON.stringify(cachedFile(dir, 'no-dd', 1))});
    `;
    // The child must exit by itself once the eviction answered: the shell holds no reference.
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { PATH: bin },
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(child.signal, null, `the process did not exit on its own: ${child.stderr}`);
    assert.equal(child.status, 0, child.stderr);
    assert.match(child.stdout, /page cache eviction with dd is unavailable.*status 127.*dd.*not found/);
  });
});
