// When a qcow2 image is converted while it downloads: the rule, and the decision it drives.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  convertWhileDownloading,
  RATE_SAMPLE_BYTES,
  removeStaleSocketFolders,
  StreamingConversion,
  type StreamingConversionOptions,
} from '../../../src/pipeline/streaming-conversion.ts';
import type { PreparedTarget } from '../../../src/pipeline/targets.ts';
import type { ImageInfo } from '../../../src/storage/qemu-img/image-info.ts';
import type { QemuImg } from '../../../src/storage/qemu-img/qemu-img.ts';
import { FakeClock } from '../../support/fake-clock.ts';

const MB = 1e6;

describe('convertWhileDownloading', () => {
  it('waits for enough bytes to judge the rate', () => {
    assert.equal(convertWhileDownloading(RATE_SAMPLE_BYTES - 1, 10, 200 * MB), undefined);
    assert.equal(convertWhileDownloading(RATE_SAMPLE_BYTES, 0, 200 * MB), undefined);
  });

  it('converts while downloading only below a quarter of the conversion rate', () => {
    const seconds = (rate: number) => RATE_SAMPLE_BYTES / rate;
    // A 200 MB/s link against conversions of 1.7 GB/s (virtual bytes) converts alongside...
    assert.equal(convertWhileDownloading(RATE_SAMPLE_BYTES, seconds(200 * MB), 1700 * MB), true);
    assert.equal(convertWhileDownloading(RATE_SAMPLE_BYTES, seconds(424 * MB), 1700 * MB), true);
    // ...loopback MinIO's 530 MB/s and more does not.
    assert.equal(convertWhileDownloading(RATE_SAMPLE_BYTES, seconds(425 * MB), 1700 * MB), false);
    assert.equal(convertWhileDownloading(RATE_SAMPLE_BYTES, seconds(530 * MB), 1700 * MB), false);
  });
});

describe('StreamingConversion', () => {
  /** A conversion whose every tool fails loudly: the tests below must never reach one. */
  const untouchable = (clock: FakeClock, convertRate: number) => {
    const refuse = () => Promise.reject(new Error('must not run'));
    const qemuImg: QemuImg = { info: refuse, check: refuse, convert: refuse };
    const events: string[] = [];
    const conversion = new StreamingConversion({
      qemuImg,
      imageBytes: 4 * RATE_SAMPLE_BYTES,
      targetSizeBytes: 8 * RATE_SAMPLE_BYTES,
      convertRate,
      clock,
      signal: new AbortController().signal,
      prepare: refuse,
      convert: refuse,
      onStart: () => events.push('start'),
      onGiveUp: (reason) => events.push(`gave up: ${reason}`),
    });
    return { conversion, events };
  };

  it('leaves a download that keeps up with conversion alone, and has nothing to finish', async () => {
    const clock = new FakeClock();
    const { conversion, events } = untouchable(clock, 200 * MB);
    const path = '/nonexistent/partial';
    conversion.written({ path, bytes: 1024 });
    clock.advance(100); // 32 MiB in 0.1 s: over 300 MB/s
    conversion.written({ path, bytes: 1024 + RATE_SAMPLE_BYTES });
    clock.advance(10_000); // later batches change nothing: the decision is taken once
    conversion.written({ path, bytes: 2 * RATE_SAMPLE_BYTES });
    assert.equal(await conversion.finish(true), undefined);
    assert.deepEqual(events, []);
  });

  it('measures from the first batch, not from the start of the job', async () => {
    const clock = new FakeClock();
    const { conversion, events } = untouchable(clock, 200 * MB);
    clock.advance(60_000); // a long wait before any byte (queue, connection) is not the rate
    conversion.written({ path: '/nonexistent/partial', bytes: 1 });
    clock.advance(100);
    conversion.written({ path: '/nonexistent/partial', bytes: 1 + RATE_SAMPLE_BYTES });
    assert.equal(await conversion.finish(false), undefined);
    assert.deepEqual(events, []);
  });
});

describe('StreamingConversion giving up', () => {
  /** A partial file that starts with the qcow2 magic; reads past its end are zeros. */
  const partialQcow2 = (t: { after(fn: () => void): void }) => {
    const folder = mkdtempSync(join(tmpdir(), 'streaming-unit-'));
    t.after(() => rmSync(folder, { recursive: true, force: true }));
    const path = join(folder, 'partial');
    writeFileSync(path, Buffer.from([0x51, 0x46, 0x49, 0xfb]));
    return path;
  };

  /** A conversion that decides to start at once; `convert` and `info` are the test's. */
  const started = (options: Pick<StreamingConversionOptions, 'convert' | 'qemuImg'>) => {
    const clock = new FakeClock();
    const events: string[] = [];
    const target: PreparedTarget = {
      writePath: '/nonexistent/target',
      isBlockDevice: false,
      devicePath: '/nonexistent/target',
      commit: () => Promise.reject(new Error('must not commit')),
      discard: async () => {
        events.push('discarded');
      },
    };
    const conversion = new StreamingConversion({
      ...options,
      imageBytes: 4 * RATE_SAMPLE_BYTES,
      targetSizeBytes: 8 * RATE_SAMPLE_BYTES,
      convertRate: 1e15,
      clock,
      signal: new AbortController().signal,
      prepare: async () => ({ complete: false, target }),
      onStart: () => events.push('started'),
      onGiveUp: (reason) => events.push(`gave up: ${reason}`),
    });
    return { conversion, events, clock };
  };
  const info =
    (virtualSize: number, extra: Partial<ImageInfo> = {}): QemuImg['info'] =>
    async () => ({ format: 'qcow2', virtualSize, ...extra });
  const unused = () => Promise.reject(new Error('must not run'));

  it('discards the target and leaves the job to convert from the cache when qemu-img fails', async (t) => {
    const path = partialQcow2(t);
    const { conversion, events, clock } = started({
      qemuImg: { info: info(MB), check: unused, convert: unused },
      convert: () => Promise.reject(new Error('qemu-img convert failed: Input/output error')),
    });
    conversion.written({ path, bytes: 1 });
    clock.advance(1000);
    conversion.written({ path, bytes: 1 + RATE_SAMPLE_BYTES });
    assert.equal(await conversion.finish(true), undefined);
    assert.deepEqual(events, [
      'started',
      'discarded',
      'gave up: qemu-img convert failed: Input/output error',
    ]);
  });

  it('never prepares a target for an image whose info breaks the rules', async (t) => {
    const path = partialQcow2(t);
    const { conversion, events, clock } = started({
      qemuImg: { info: info(MB, { backingFilename: '/etc/shadow' }), check: unused, convert: unused },
      convert: unused,
    });
    conversion.written({ path, bytes: 1 });
    clock.advance(1000);
    conversion.written({ path, bytes: 1 + RATE_SAMPLE_BYTES });
    assert.equal(await conversion.finish(true), undefined);
    assert.equal(events.length, 1);
    assert.match(events[0] ?? '', /^gave up: the image depends on a backing file/);
  });

  it('discards a finished conversion when the download then fails', async (t) => {
    const path = partialQcow2(t);
    const converted = Promise.withResolvers<void>();
    const { conversion, events, clock } = started({
      qemuImg: { info: info(MB), check: unused, convert: unused },
      convert: async () => converted.resolve(),
    });
    conversion.written({ path, bytes: 1 });
    clock.advance(1000);
    conversion.written({ path, bytes: 1 + RATE_SAMPLE_BYTES });
    // Every byte converted; then the download fails its checksum.
    await converted.promise;
    assert.equal(await conversion.finish(false), undefined);
    assert.deepEqual(events, ['started', 'discarded']);
  });
});

describe('removeStaleSocketFolders', () => {
  it("removes the folders of dead processes and its own predecessor's, and keeps the rest", async (t) => {
    const parent = mkdtempSync(join(tmpdir(), 'stale-sockets-'));
    t.after(() => rmSync(parent, { recursive: true, force: true }));
    // A process that has exited: its PID is free (unless reused within this test).
    const dead = spawnSync('true').pid;
    const names = [
      `lvp-nbd-${dead}-aaaaaa`,
      `lvp-nbd-${process.pid}-bbbbbb`,
      `lvp-nbd-${process.ppid}-cccccc`,
      'lvp-nbd-notapid',
      'something-else',
    ];
    for (const name of names) mkdirSync(join(parent, name));
    const removed = await removeStaleSocketFolders(parent);
    assert.deepEqual(removed.sort(), [names[0], names[1]].sort());
    assert.deepEqual(readdirSync(parent).sort(), [names[2], names[3], names[4]].sort());
  });

  it('finds nothing to do in a folder that does not exist', async () => {
    assert.deepEqual(await removeStaleSocketFolders(join(tmpdir(), 'no-such-folder-for-lvp')), []);
  });
});
