// rememberingInspections with a fake qemu-img that counts its calls, on real files.
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { ImageInfo } from '../../../src/storage/qemu-img/image-info.ts';
import type { QemuImg } from '../../../src/storage/qemu-img/qemu-img.ts';
import { rememberingInspections } from '../../../src/storage/qemu-img/remembered.ts';

const dir = mkdtempSync(join(tmpdir(), 'lvp-remembered-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function countingQemuImg() {
  const calls: string[] = [];
  let failNext = false;
  const qemuImg: QemuImg = {
    async info(path, format) {
      calls.push(`info ${format} ${path}`);
      if (failNext) {
        failNext = false;
        throw new Error('qemu-img info timed out');
      }
      return { format, virtualSize: calls.length } satisfies ImageInfo;
    },
    async check(path, format) {
      calls.push(`check ${format} ${path}`);
      return { status: 'clean', corruptions: 0, leaks: 0, detail: '' };
    },
    async convert(options) {
      calls.push(`convert ${options.source}`);
    },
  };
  return { qemuImg, calls, failNextInfo: () => (failNext = true) };
}

const file = (name: string, content = 'image') => {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
};

describe('rememberingInspections', () => {
  it('asks qemu-img once per file, operation and format while the file stays the same', async () => {
    const { qemuImg, calls } = countingQemuImg();
    const remembering = rememberingInspections(qemuImg);
    const path = file('same.qcow2');
    const first = await remembering.info(path, 'qcow2');
    assert.deepEqual(await remembering.info(path, 'qcow2'), first);
    await remembering.check(path, 'qcow2');
    await remembering.check(path, 'qcow2');
    await remembering.info(path, 'raw');
    await remembering.convert({
      source: path,
      sourceFormat: 'qcow2',
      target: 'x',
      targetIsBlockDevice: false,
    });
    await remembering.convert({
      source: path,
      sourceFormat: 'qcow2',
      target: 'x',
      targetIsBlockDevice: false,
    });
    assert.deepEqual(calls, [
      `info qcow2 ${path}`,
      `check qcow2 ${path}`,
      `info raw ${path}`,
      `convert ${path}`,
      `convert ${path}`,
    ]);
  });

  it('asks again once the file was written to, or replaced by another file', async () => {
    const { qemuImg, calls } = countingQemuImg();
    const remembering = rememberingInspections(qemuImg);
    const path = file('changing.qcow2');
    await remembering.info(path, 'qcow2');
    appendFileSync(path, 'more');
    await remembering.info(path, 'qcow2');
    renameSync(file('other.qcow2', 'image'), path);
    await remembering.info(path, 'qcow2');
    assert.equal(calls.length, 3);
  });

  it('does not remember a failure', async () => {
    const { qemuImg, calls, failNextInfo } = countingQemuImg();
    const remembering = rememberingInspections(qemuImg);
    const path = file('flaky.qcow2');
    failNextInfo();
    await assert.rejects(remembering.info(path, 'qcow2'), /timed out/);
    await remembering.info(path, 'qcow2');
    await remembering.info(path, 'qcow2');
    assert.equal(calls.length, 2);
  });

  it('keeps the files inspected last, up to its capacity', async () => {
    const { qemuImg, calls } = countingQemuImg();
    const remembering = rememberingInspections(qemuImg, 2);
    const [a, b, c] = ['a', 'b', 'c'].map((name) => file(`${name}.raw`));
    for (const path of [a, b, a, c, a, b]) await remembering.info(path as string, 'raw');
    // a stays (used again before c came), b was the oldest when c came, so it is asked again.
    assert.deepEqual(calls, [`info raw ${a}`, `info raw ${b}`, `info raw ${c}`, `info raw ${b}`]);
  });
});
