import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelay } from '../../../src/util/backoff.ts';

const policy = { baseMs: 1_000, maxMs: 30_000 };

describe('backoffDelay', () => {
  it('doubles the step per retry, with jitter over its upper half', () => {
    assert.equal(
      backoffDelay(1, policy, () => 0),
      500,
    );
    assert.equal(
      backoffDelay(1, policy, () => 1),
      1_000,
    );
    assert.equal(
      backoffDelay(2, policy, () => 0),
      1_000,
    );
    assert.equal(
      backoffDelay(3, policy, () => 0.5),
      3_000,
    );
  });

  it('never exceeds the maximum, even for huge retry counts', () => {
    assert.equal(
      backoffDelay(6, policy, () => 1),
      30_000,
    );
    assert.equal(
      backoffDelay(10_000, policy, () => 1),
      30_000,
    );
    assert.equal(
      backoffDelay(10_000, policy, () => 0),
      15_000,
    );
  });

  it('stays within bounds with the real random source', () => {
    for (let retry = 1; retry <= 8; retry++) {
      const step = Math.min(30_000, 1_000 * 2 ** (retry - 1));
      const delay = backoffDelay(retry, policy);
      assert.ok(delay >= step / 2 && delay <= step, `retry ${retry}: ${delay}`);
    }
  });
});
