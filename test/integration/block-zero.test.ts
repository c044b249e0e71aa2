// Zeroing the tail of a real block device (a loop device on the host, which needs root).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { PipelineError } from '../../src/pipeline/types.ts';
import { blkdiscardZeroer } from '../../src/storage/block/zero.ts';
import { makeWorkDir } from '../rig/workdir.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

function read(device: string, offset: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  const fd = openSync(device, 'r');
  readSync(fd, buffer, 0, length, offset);
  closeSync(fd);
  return buffer;
}

describe('zeroing a block device past the image', () => {
  let device: string;
  const size = 8 * MiB;
  const image = randomBytes(3 * MiB + 1000);

  before(async () => {
    const backing = join(makeWorkDir('block-zero'), 'device.img');
    writeFileSync(backing, randomBytes(size));
    device = (await run('losetup', ['--find', '--show', backing])).stdout.trim();
    const fd = openSync(device, 'r+');
    writeSync(fd, image, 0, image.length, 0);
    closeSync(fd);
  });
  after(async () => {
    if (device) await run('losetup', ['--detach', device]);
  });

  it('zeroes from the end of the image, rounded up to a sector, to the end of the device', async () => {
    await blkdiscardZeroer().zeroFrom(device, image.length, size);
    const start = Math.ceil(image.length / 512) * 512;
    assert.ok(read(device, 0, image.length).equals(image), 'the image is untouched');
    assert.ok(
      read(device, start, size - start).equals(Buffer.alloc(size - start)),
      'the tail reads as zeros',
    );
  });

  it('does nothing when the image fills the device', async () => {
    await blkdiscardZeroer().zeroFrom(device, size, size);
  });

  it('fails with a reason that names the device when zeroing is impossible', async () => {
    await assert.rejects(blkdiscardZeroer().zeroFrom('/dev/nonexistent-lvp', 0, MiB), (error: unknown) => {
      assert.ok(error instanceof PipelineError);
      assert.equal(error.reason, 'VolumeZeroingFailed');
      assert.match(error.message, /\/dev\/nonexistent-lvp/);
      return true;
    });
  });
});
