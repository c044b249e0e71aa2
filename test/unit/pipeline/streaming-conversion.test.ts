// When a qcow2 image is converted while it downloads: the rule, and the decision it drives.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  convertWhileDownloading,
  RATE_SAMPLE_BYTES,
  removeStaleSocketFolders,
  StreamingConversion,
} from '../../../src/pipeline/streaming-conversion.ts';
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
