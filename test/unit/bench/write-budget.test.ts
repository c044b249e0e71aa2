// The scale scenario's judge of status writes: one per stage change plus one per interval.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type JobWrites, overWriteBudget, stageChanges } from '../../../bench/write-budget.ts';

const INTERVAL = 5;
const OK = 200;
/** A job that waited in the queue, then ran: five stage changes as a watch sees them. */
const queuedThenRan: JobWrites = {
  name: 'vp-7',
  seconds: 2.4,
  seen: [
    { stage: 'Queued', queuePosition: 3 },
    { stage: 'Queued', queuePosition: 1 },
    { stage: 'Initializing' },
    { stage: 'Converting' },
    { stage: 'Finalizing' },
    { stage: 'Completed' },
  ],
  writes: [OK, OK, OK, OK, OK, OK],
};

describe('status-write budget', () => {
  it('counts stage changes, not the statuses within one stage', () => {
    assert.equal(stageChanges(queuedThenRan.seen), 5);
    assert.equal(stageChanges([]), 0);
    assert.equal(stageChanges([{ stage: 'Queued' }, { stage: 'Initializing' }, { stage: 'Queued' }]), 3);
  });

  it('allows one write per stage change plus one per started interval', () => {
    assert.equal(overWriteBudget(queuedThenRan, INTERVAL), undefined);
    const longWait = { ...queuedThenRan, seconds: 12.1, writes: Array(8).fill(OK) };
    assert.equal(overWriteBudget(longWait, INTERVAL), undefined);
    assert.ok(overWriteBudget({ ...longWait, writes: Array(9).fill(OK) }, INTERVAL));
  });

  it('reports a job over budget with what the watch saw and every write, retries included', () => {
    const retried = { ...queuedThenRan, writes: [OK, OK, 429, OK, OK, OK, OK] };
    assert.deepEqual(overWriteBudget(retried, INTERVAL), {
      name: 'vp-7',
      seconds: 2.4,
      stageChanges: 5,
      seen: ['Queued(3)', 'Queued(1)', 'Initializing', 'Converting', 'Finalizing', 'Completed'],
      writes: [OK, OK, 429, OK, OK, OK, OK],
    });
  });
});
