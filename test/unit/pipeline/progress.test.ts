// ProgressTracker: how stage progress becomes the object's overall percent and ETA.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DEFAULT_STAGE_RATES,
  ProgressTracker,
  WRITTEN_WHILE_DOWNLOADING_SHARE,
} from '../../../src/pipeline/progress.ts';
import { FakeClock } from '../../support/fake-clock.ts';

const MB = 1e6;

describe('ProgressTracker', () => {
  it('splits a miss by the expected stage times: download 100 MB/s, convert 200 MB/s → ⅔ and ⅓', () => {
    const tracker = new ProgressTracker({
      clock: new FakeClock(),
      cacheHit: false,
      rates: DEFAULT_STAGE_RATES,
    });
    assert.equal(tracker.report('Initializing', 0, 0).overallPercent, 0);
    assert.equal(tracker.report('Downloading', 50 * MB, 100 * MB).overallPercent, 33.33);
    assert.equal(tracker.report('Downloading', 100 * MB, 100 * MB).overallPercent, 66.67);
    assert.equal(tracker.report('Converting', 50 * MB, 100 * MB).overallPercent, 83.33);
    const done = tracker.report('Finalizing', 0, 0);
    assert.deepEqual([done.overallPercent, done.cacheHit], [100, false]);
  });

  it('follows measured rates: a download twice as fast as conversion gets a third', () => {
    const rates = { download: 400 * MB, convert: 200 * MB };
    const tracker = new ProgressTracker({ clock: new FakeClock(), cacheHit: false, rates });
    assert.equal(tracker.report('Downloading', 1, 1).overallPercent, 33.33);
  });

  it('gives a cache hit the whole range for conversion', () => {
    const tracker = new ProgressTracker({
      clock: new FakeClock(),
      cacheHit: true,
      rates: DEFAULT_STAGE_RATES,
    });
    const report = tracker.report('Converting', 25 * MB, 100 * MB);
    assert.deepEqual([report.overallPercent, report.stagePercent, report.cacheHit], [25, 25, true]);
  });

  it('gives a download that writes the target nearly all of it, and still rises through a conversion after', () => {
    const tracker = new ProgressTracker({
      clock: new FakeClock(),
      cacheHit: false,
      rates: DEFAULT_STAGE_RATES,
      writtenWhileDownloading: true,
    });
    assert.equal(tracker.report('Downloading', 1, 1).overallPercent, WRITTEN_WHILE_DOWNLOADING_SHARE * 100);
    const converting = [1, 2, 3].map((done) => tracker.report('Converting', done, 4).overallPercent);
    assert.deepEqual(converting, [96.25, 97.5, 98.75]);
  });

  it('reports whole bytes when a stage reports a fraction of its total (qemu-img: a percent)', () => {
    const tracker = new ProgressTracker({
      clock: new FakeClock(),
      cacheHit: true,
      rates: DEFAULT_STAGE_RATES,
    });
    const report = tracker.report('Converting', 0.1406 * 268_435_456, 268_435_456);
    assert.equal(report.bytesProcessed, 37_742_025);
  });

  it('never goes backwards when a stage starts over (a resumed or restarted download)', () => {
    const tracker = new ProgressTracker({
      clock: new FakeClock(),
      cacheHit: false,
      rates: DEFAULT_STAGE_RATES,
    });
    tracker.report('Downloading', 60, 100);
    const again = tracker.report('Downloading', 10, 100);
    assert.deepEqual([again.overallPercent, again.stagePercent, again.bytesProcessed], [40, 60, 10]);
  });

  it('estimates the time left from the pace of the current stage', () => {
    const clock = new FakeClock();
    const tracker = new ProgressTracker({ clock, cacheHit: true, rates: DEFAULT_STAGE_RATES });
    assert.equal(tracker.report('Converting', 0, 100).etaSeconds, undefined, 'no pace yet');
    clock.advance(10_000);
    assert.equal(tracker.report('Converting', 25, 100).etaSeconds, 30);
  });
});
