// Proves real LVM with device-mapper inside User-mode Linux: create a tagged LV, convert a
// qcow2 image into it with qemu-img, read it back with a matching checksum, remove it.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { runInUml } from '../rig/uml.ts';
import { makeWorkDir } from '../rig/workdir.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('rig: LVM inside User-mode Linux', { timeout: 180_000 }, () => {
  it('creates a tagged LV, converts a qcow2 image into it byte for byte, and removes it', async () => {
    const workDir = makeWorkDir('uml-smoke');
    // Realistic content: random data, zeros and a hole, in a size that fills whole 4 MiB extents.
    const size = 16 * MiB;
    const raw = Buffer.alloc(size);
    randomBytes(5 * MiB).copy(raw, 0);
    randomBytes(3 * MiB).copy(raw, 11 * MiB);
    const rawPath = join(workDir, 'image.raw');
    writeFileSync(rawPath, raw);
    const qcow2Path = join(workDir, 'image.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, qcow2Path]);

    const result = await runInUml({
      workDir,
      script: 'test/integration/fixtures/uml-lvm-smoke.ts',
      args: [qcow2Path, String(size)],
      disksMiB: [128],
    });
    assert.equal(result.exitCode, 0, `guest script failed:\n${result.stderr}`);

    const report = JSON.parse(readFileSync(join(result.outDir, 'result.json'), 'utf8'));
    assert.deepEqual(report.created, [
      { lv_name: 'smoke', lv_tags: 'lvp.dev/uid=smoke-uid', lv_size: String(size) },
    ]);
    assert.equal(report.deviceSha256, createHash('sha256').update(raw).digest('hex'));
    assert.deepEqual(report.afterRemove, []);
  });

  it('reports a failing guest script with its exit code and stderr', async () => {
    const workDir = makeWorkDir('uml-fail');
    const result = await runInUml({
      workDir,
      script: 'test/integration/fixtures/uml-lvm-smoke.ts',
      args: [join(workDir, 'missing.qcow2'), String(4 * MiB)],
      disksMiB: [64],
    });
    assert.notEqual(result.exitCode, 0);
    assert.match(result.stderr, /missing\.qcow2/);
  });
});
