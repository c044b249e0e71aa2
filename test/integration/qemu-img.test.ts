// The qemu-img wrapper and the inspection policy against the real qemu-img (Debian qemu-utils),
// with images generated here: qemu-img create, and qcow2 converted from generated raw files.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { PipelineError } from '../../src/pipeline/types.ts';
import { inspectImage } from '../../src/storage/qemu-img/inspect.ts';
import { createQemuImg } from '../../src/storage/qemu-img/qemu-img.ts';
import { makeWorkDir } from '../rig/workdir.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const qemuImg = createQemuImg();

/** A raw image of random data, written zeros and a hole, so that conversion meets all three. */
function writeMixedRaw(path: string, sizeBytes: number, randomBytesTotal: number): void {
  const fd = openSync(path, 'w');
  try {
    const chunk = 4 * MiB;
    for (let written = 0; written < randomBytesTotal; written += chunk) {
      writeSync(fd, randomBytes(Math.min(chunk, randomBytesTotal - written)), null, null, written);
    }
    writeSync(fd, Buffer.alloc(2 * MiB), null, null, randomBytesTotal + 4 * MiB);
    writeSync(fd, randomBytes(MiB), null, null, sizeBytes - 3 * MiB);
  } finally {
    closeSync(fd);
  }
  truncateSync(path, sizeBytes);
}

async function toQcow2(raw: string, qcow2: string): Promise<void> {
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
}

/** Rewrites the first L1 table entry of a qcow2 image (big-endian offset at header byte 40). */
function patchFirstL1Entry(path: string, entry: bigint): void {
  const fd = openSync(path, 'r+');
  try {
    const header = Buffer.alloc(48);
    readSync(fd, header, 0, 48, 0);
    const l1Entry = Buffer.alloc(8);
    l1Entry.writeBigUInt64BE(entry);
    writeSync(fd, l1Entry, 0, 8, Number(header.readBigUInt64BE(40)));
  } finally {
    closeSync(fd);
  }
}

async function rejectionOf(promise: Promise<unknown>): Promise<PipelineError> {
  const error = await promise.then(
    () => assert.fail('expected a rejection'),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof PipelineError, `expected a PipelineError, got ${String(error)}`);
  return error;
}

/** PIDs of running qemu-img processes whose command line names `path`. */
function qemuImgProcessesUsing(path: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (argv[0]?.endsWith('qemu-img') && argv.includes(path)) pids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

describe('qemu-img conversion and inspection (real qemu-img)', { timeout: 120_000 }, () => {
  const dir = makeWorkDir('qemu-img');
  const sourceRaw = join(dir, 'source.raw');
  const sourceQcow2 = join(dir, 'source.qcow2');
  const size = 64 * MiB;

  before(async () => {
    writeMixedRaw(sourceRaw, size, 8 * MiB);
    await toQcow2(sourceRaw, sourceQcow2);
  });

  describe('convert', () => {
    for (const [format, source] of [
      ['qcow2', sourceQcow2],
      ['raw', sourceRaw],
    ] as const) {
      it(`converts a ${format} image to a raw file equal to the source byte for byte, reporting progress up to 100`, async () => {
        const target = join(dir, `from-${format}.raw`);
        const reported: number[] = [];
        await qemuImg.convert({
          source,
          sourceFormat: format,
          target,
          targetIsBlockDevice: false,
          onProgress: (percent) => reported.push(percent),
        });
        assert.ok(
          readFileSync(target).equals(readFileSync(sourceRaw)),
          'converted content differs from the source',
        );
        // How many reports arrive depends on how qemu-img's writes meet our reads; the abort
        // test below proves reports arrive while qemu-img still runs.
        assert.equal(reported.at(-1), 100);
        for (let i = 1; i < reported.length; i++) {
          assert.ok((reported[i] ?? 0) > (reported[i - 1] ?? 0), `progress went backwards: ${reported}`);
        }
      });
    }

    it("rejects with qemu-img's own message when the target folder does not exist", async () => {
      const error = await rejectionOf(
        qemuImg.convert({
          source: sourceQcow2,
          sourceFormat: 'qcow2',
          target: join(dir, 'missing-folder', 'out.raw'),
          targetIsBlockDevice: false,
        }),
      );
      assert.equal(error.reason, 'ConversionFailed');
      assert.equal(error.terminal, false);
      assert.match(error.message, /missing-folder\/out\.raw.*No such file or directory/);
      assert.doesNotMatch(error.message, /\n$/);
    });

    it('kills qemu-img when the signal aborts, rejects with the abort reason and removes the partial file', async () => {
      const bigRaw = join(dir, 'big.raw');
      writeMixedRaw(bigRaw, 1024 * MiB, 384 * MiB);
      const target = join(dir, 'aborted.raw');
      const controller = new AbortController();
      const reason = new Error('VolumeProvision deleted');
      let pidsAtAbort: number[] = [];
      let percentAtAbort = 100;
      const conversion = qemuImg.convert({
        source: bigRaw,
        sourceFormat: 'raw',
        target,
        targetIsBlockDevice: false,
        signal: controller.signal,
        onProgress: (percent) => {
          if (controller.signal.aborted) return;
          percentAtAbort = percent;
          pidsAtAbort = qemuImgProcessesUsing(target);
          controller.abort(reason);
        },
      });
      await assert.rejects(conversion, (error) => error === reason).finally(() => rmSync(bigRaw));
      assert.ok(percentAtAbort > 0 && percentAtAbort < 100, `progress while running: ${percentAtAbort}`);
      assert.equal(pidsAtAbort.length, 1, 'qemu-img was running when the signal aborted');
      for (const pid of pidsAtAbort)
        assert.equal(existsSync(`/proc/${pid}`), false, `qemu-img ${pid} still exists`);
      assert.equal(existsSync(target), false, 'the partial target file is left behind');
    });

    it('does not start when the signal is already aborted', async () => {
      const controller = new AbortController();
      controller.abort(new Error('shutting down'));
      const target = join(dir, 'never.raw');
      await assert.rejects(
        qemuImg.convert({
          source: sourceRaw,
          sourceFormat: 'raw',
          target,
          targetIsBlockDevice: false,
          signal: controller.signal,
        }),
        /shutting down/,
      );
      assert.equal(existsSync(target), false);
    });
  });

  describe('info and check', () => {
    it('reads the sizes of a qcow2 image and finds it clean', async () => {
      const info = await qemuImg.info(sourceQcow2, 'qcow2');
      assert.equal(info.format, 'qcow2');
      assert.equal(info.virtualSize, size);
      assert.ok((info.actualSize ?? 0) > 8 * MiB);
      assert.equal(info.backingFilename, undefined);
      assert.equal(info.dataFile, undefined);
      assert.deepEqual(await qemuImg.check(sourceQcow2, 'qcow2'), {
        status: 'clean',
        corruptions: 0,
        leaks: 0,
        detail: '',
      });
    });

    it('reports a missing qemu-img binary as a retryable failure', async () => {
      const error = await rejectionOf(
        createQemuImg({ binary: join(dir, 'no-such-qemu-img') }).info(sourceRaw, 'raw'),
      );
      assert.equal(error.reason, 'QemuImgFailed');
      assert.equal(error.terminal, false);
      assert.match(error.message, /no-such-qemu-img/);
    });

    it('says that raw images have no checks', async () => {
      assert.equal((await qemuImg.check(sourceRaw, 'raw')).status, 'unsupported');
    });
  });

  describe('inspectImage', () => {
    it('accepts a clean qcow2 image and a raw image that fit the target', async () => {
      assert.equal((await inspectImage(qemuImg, sourceQcow2, 'qcow2', size)).virtualSize, size);
      assert.equal((await inspectImage(qemuImg, sourceRaw, 'raw', size)).virtualSize, size);
    });

    it('rejects a qcow2 image with a backing file', async () => {
      const base = join(dir, 'base.raw');
      await run('qemu-img', ['create', '-q', '-f', 'raw', base, '16M']);
      const overlay = join(dir, 'overlay.qcow2');
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay]);
      const error = await rejectionOf(inspectImage(qemuImg, overlay, 'qcow2', size));
      assert.equal(error.reason, 'BackingFileNotAllowed');
      assert.equal(error.terminal, true);
      assert.match(error.message, /base\.raw/);
    });

    it('rejects a qcow2 image with an external data file', async () => {
      const image = join(dir, 'external.qcow2');
      await run('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-o',
        `data_file=${join(dir, 'external-data.raw')}`,
        image,
        '16M',
      ]);
      const error = await rejectionOf(inspectImage(qemuImg, image, 'qcow2', size));
      assert.equal(error.reason, 'ExternalDataFileNotAllowed');
      assert.match(error.message, /external-data\.raw/);
    });

    it('rejects a qcow2 image declared raw, even though qemu-img info -f raw accepts it', async () => {
      // The dangerous case: opened as raw it looks harmless, opened as qcow2 it reads /etc/shadow.
      const image = join(dir, 'shadow-overlay.qcow2');
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', image, '1M']);
      assert.equal((await qemuImg.info(image, 'raw')).format, 'raw');
      const error = await rejectionOf(inspectImage(qemuImg, image, 'raw', size));
      assert.equal(error.reason, 'FormatMismatch');
      assert.match(error.message, /declared raw but starts with a qcow2 header/);
    });

    it('rejects a raw image declared qcow2', async () => {
      const error = await rejectionOf(inspectImage(qemuImg, sourceRaw, 'qcow2', size));
      assert.equal(error.reason, 'FormatMismatch');
      assert.match(error.message, /declared qcow2/);
    });

    it('rejects an image whose virtual size is larger than the target', async () => {
      const error = await rejectionOf(inspectImage(qemuImg, sourceQcow2, 'qcow2', size - 1));
      assert.equal(error.reason, 'VirtualSizeTooLarge');
      assert.match(error.message, new RegExp(`at least ${size}`));
    });

    it('rejects a qcow2 image with a corrupted L1 table by its check', async () => {
      const image = join(dir, 'corrupt.qcow2');
      await toQcow2(sourceRaw, image);
      // The first L2 table moves to an unaligned offset inside the header cluster.
      patchFirstL1Entry(image, (1n << 63n) | 0x200n);
      const error = await rejectionOf(inspectImage(qemuImg, image, 'qcow2', size));
      assert.equal(error.reason, 'CorruptImage');
      assert.equal(error.terminal, true);
      assert.match(error.message, /qemu-img check found \d+ corruption\(s\).*not cluster aligned/);
    });

    it('rejects a truncated qcow2 image (the second half of the file lost)', async () => {
      const image = join(dir, 'truncated.qcow2');
      await toQcow2(sourceRaw, image);
      truncateSync(image, Math.floor(statSync(image).size / 2));
      const error = await rejectionOf(inspectImage(qemuImg, image, 'qcow2', size));
      assert.equal(error.reason, 'CorruptImage');
      assert.equal(error.terminal, true);
    });

    it('rejects a qcow2 image whose header qemu-img cannot open', async () => {
      const image = join(dir, 'bad-header.qcow2');
      await toQcow2(sourceRaw, image);
      const fd = openSync(image, 'r+');
      writeSync(fd, Buffer.from([0, 0, 0, 9]), 0, 4, 4); // qcow2 version 9 does not exist
      closeSync(fd);
      const error = await rejectionOf(inspectImage(qemuImg, image, 'qcow2', size));
      assert.equal(error.reason, 'CorruptImage');
      assert.match(error.message, /cannot open the image as qcow2: .*version 9/);
    });

    it('accepts a qcow2 image whose only fault is leaked clusters, which convert does not copy', async () => {
      const image = join(dir, 'leaky.qcow2');
      await toQcow2(sourceRaw, image);
      // Dropping the only L1 entry leaks its L2 table and data clusters; the disk reads as zeros.
      patchFirstL1Entry(image, 0n);
      assert.equal((await qemuImg.check(image, 'qcow2')).status, 'leaks');
      await inspectImage(qemuImg, image, 'qcow2', size);
      const target = join(dir, 'leaky.raw');
      await qemuImg.convert({ source: image, sourceFormat: 'qcow2', target, targetIsBlockDevice: false });
      assert.ok(readFileSync(target).equals(Buffer.alloc(size)));
    });
  });
});
