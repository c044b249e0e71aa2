// ArrivalOrder: the rank a VolumeProvision or CachedImage waits with for a job slot.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ArrivalOrder } from '../../../src/jobs/arrival-order.ts';

describe('ArrivalOrder', () => {
  it('ranks by creation time, then by the order keys first arrived, whatever the order of asking', () => {
    const order = new ArrivalOrder();
    for (const key of ['ns/a', 'ns/b', 'ns/c']) order.arrive(key);
    const sameSecond = '2026-11-23T13:25:55Z';
    assert.deepEqual(order.rank('ns/c', sameSecond), [Date.parse('2026-11-23T13:25:55Z'), 2]);
    assert.deepEqual(order.rank('ns/a', sameSecond), [Date.parse('2026-11-23T13:25:55Z'), 0]);
    // A later arrival that was created earlier (a relist after a restart) still goes first.
    assert.deepEqual(order.rank('ns/old', '2026-11-23T13:00:00Z'), [Date.parse('2026-11-23T13:00:00Z'), 3]);
  });

  it('keeps the first arrival across reconciles, and forgets a key whose object is gone', () => {
    const order = new ArrivalOrder();
    order.arrive('ns/a');
    order.arrive('ns/b');
    order.arrive('ns/a');
    assert.deepEqual(order.rank('ns/a', undefined), [0, 0]);
    order.forget('ns/a');
    assert.deepEqual(order.rank('ns/a', 'not a time'), [0, 2], 'a new object of the same name arrives anew');
  });
});
