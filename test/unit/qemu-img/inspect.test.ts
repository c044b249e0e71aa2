// inspectImage's order of steps, with a narrow fake of qemu-img; the real tool is exercised in
// test/integration/qemu-img.test.ts.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { PipelineError } from '../../../src/pipeline/types.ts';
import type { CheckResult, ImageInfo } from '../../../src/storage/qemu-img/image-info.ts';
import { inspectImage } from '../../../src/storage/qemu-img/inspect.ts';
import type { QemuImg } from '../../../src/storage/qemu-img/qemu-img.ts';

const dir = mkdtempSync(join(tmpdir(), 'lvp-inspect-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const qcow2Path = join(dir, 'image.qcow2');
writeFileSync(
  qcow2Path,
  Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]), Buffer.alloc(100)]),
);
const rawPath = join(dir, 'image.raw');
writeFileSync(rawPath, Buffer.alloc(4096));

function fakeQemuImg(
  info: ImageInfo,
  check: CheckResult = { status: 'clean', corruptions: 0, leaks: 0, detail: '' },
) {
  const calls: string[] = [];
  const qemuImg: QemuImg = {
    async info(path, format) {
      calls.push(`info ${format} ${path}`);
      return info;
    },
    async check(path, format) {
      calls.push(`check ${format} ${path}`);
      return check;
    },
    async convert() {
      throw new Error('inspectImage must not convert');
    },
  };
  return { qemuImg, calls };
}

async function rejection(promise: Promise<unknown>): Promise<PipelineError> {
  const error = await promise.then(
    () => assert.fail('expected a rejection'),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof PipelineError);
  assert.equal(error.terminal, true);
  return error;
}

describe('inspectImage', () => {
  it('runs info then check for an acceptable qcow2 image and returns the info', async () => {
    const info = { format: 'qcow2', virtualSize: 1024 };
    const { qemuImg, calls } = fakeQemuImg(info);
    assert.deepEqual(await inspectImage(qemuImg, qcow2Path, 'qcow2', 1024), info);
    assert.deepEqual(calls, [`info qcow2 ${qcow2Path}`, `check qcow2 ${qcow2Path}`]);
  });

  it('does not check a raw image', async () => {
    const { qemuImg, calls } = fakeQemuImg({ format: 'raw', virtualSize: 4096 });
    await inspectImage(qemuImg, rawPath, 'raw', 4096);
    assert.deepEqual(calls, [`info raw ${rawPath}`]);
  });

  it('never lets qemu-img open a file whose header contradicts the declared format', async () => {
    const { qemuImg, calls } = fakeQemuImg({ format: 'raw', virtualSize: 1 });
    assert.equal(
      (await rejection(inspectImage(qemuImg, qcow2Path, 'raw', 1 << 30))).reason,
      'FormatMismatch',
    );
    assert.equal(
      (await rejection(inspectImage(qemuImg, rawPath, 'qcow2', 1 << 30))).reason,
      'FormatMismatch',
    );
    assert.deepEqual(calls, []);
  });

  it('never checks an image that names a backing file, because check would open it', async () => {
    const { qemuImg, calls } = fakeQemuImg({
      format: 'qcow2',
      virtualSize: 1,
      backingFilename: '/etc/shadow',
    });
    const error = await rejection(inspectImage(qemuImg, qcow2Path, 'qcow2', 1 << 30));
    assert.equal(error.reason, 'BackingFileNotAllowed');
    assert.deepEqual(calls, [`info qcow2 ${qcow2Path}`]);
  });

  it('turns a failing check into a terminal CorruptImage error', async () => {
    const { qemuImg } = fakeQemuImg(
      { format: 'qcow2', virtualSize: 1 },
      { status: 'corrupt', corruptions: 1, leaks: 0, detail: 'ERROR l2_offset' },
    );
    const error = await rejection(inspectImage(qemuImg, qcow2Path, 'qcow2', 1 << 30));
    assert.equal(error.reason, 'CorruptImage');
    assert.match(error.message, /ERROR l2_offset/);
  });
});
