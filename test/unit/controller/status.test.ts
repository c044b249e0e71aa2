import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mergePatch, setCondition } from '../../../src/controller/status.ts';

describe('setCondition', () => {
  const t1 = new Date('2026-01-01T00:00:00Z');
  const t2 = new Date('2026-01-01T00:05:00Z');

  it('keeps lastTransitionTime while the status value stays the same', () => {
    const first = setCondition(
      undefined,
      { type: 'Ready', status: 'False', reason: 'Queued', message: 'm' },
      1,
      t1,
    );
    const second = setCondition(
      first,
      { type: 'Ready', status: 'False', reason: 'Downloading', message: 'n' },
      1,
      t2,
    );
    assert.equal(second[0]?.lastTransitionTime, t1.toISOString());
    assert.equal(second[0]?.reason, 'Downloading');
    const third = setCondition(
      second,
      { type: 'Ready', status: 'True', reason: 'Provisioned', message: 'o' },
      2,
      t2,
    );
    assert.equal(third[0]?.lastTransitionTime, t2.toISOString());
    assert.equal(third[0]?.observedGeneration, 2);
    assert.equal(third.length, 1);
  });
});

describe('mergePatch', () => {
  it('is undefined when nothing changed', () => {
    assert.equal(mergePatch({ a: 1, b: { c: [1, 2] } }, { a: 1, b: { c: [1, 2] } }), undefined);
  });

  it('holds changed fields, nested changes, whole arrays, and null for removed fields', () => {
    assert.deepEqual(
      mergePatch(
        {
          stage: 'Queued',
          queuePosition: 2,
          progress: { stagePercent: 1, overallPercent: 1 },
          conditions: [{ a: 1 }],
        },
        { stage: 'Downloading', progress: { stagePercent: 5, overallPercent: 1 }, conditions: [{ a: 2 }] },
      ),
      { stage: 'Downloading', progress: { stagePercent: 5 }, conditions: [{ a: 2 }], queuePosition: null },
    );
  });

  it('treats a missing previous status as empty', () => {
    assert.deepEqual(mergePatch(undefined, { stage: 'Queued' }), { stage: 'Queued' });
  });
});
