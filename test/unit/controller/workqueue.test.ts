import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WorkQueue } from '../../../src/controller/workqueue.ts';
import { FakeClock } from '../../support/fake-clock.ts';

describe('WorkQueue', () => {
  it('merges duplicate keys that wait to be processed', async () => {
    const queue = new WorkQueue<string>();
    queue.add('a');
    queue.add('b');
    queue.add('a');
    assert.equal(queue.length, 2);
    assert.equal(await queue.get(), 'a');
    assert.equal(await queue.get(), 'b');
  });

  it('never hands out a key that is being processed; an add meanwhile requeues it after done', async () => {
    const queue = new WorkQueue<string>();
    queue.add('a');
    const key = await queue.get();
    queue.add('a');
    assert.equal(queue.length, 0, 'a is dirty but processing, so not queued');
    queue.done(key as string);
    assert.equal(queue.length, 1);
    assert.equal(await queue.get(), 'a');
  });

  it('wakes a waiting worker when a key arrives, and releases workers on shutdown', async () => {
    const queue = new WorkQueue<string>();
    const waiting = queue.get();
    queue.add('x');
    assert.equal(await waiting, 'x');
    const idle = queue.get();
    queue.shutDown();
    assert.equal(await idle, undefined);
    queue.add('y');
    assert.equal(queue.length, 0, 'no adds after shutdown');
  });

  it('backs off per key exponentially and forgets after success', () => {
    const clock = new FakeClock();
    const queue = new WorkQueue<string>({ clock, backoff: { baseMs: 100, maxMs: 1_000 }, random: () => 1 });
    assert.equal(queue.addRateLimited('k'), 100);
    assert.equal(queue.addRateLimited('k'), 200);
    assert.equal(queue.addRateLimited('k'), 400);
    assert.equal(queue.failures('k'), 3);
    assert.equal(queue.addRateLimited('other'), 100, 'backoff is per key');
    queue.forget('k');
    assert.equal(queue.addRateLimited('k'), 100);
  });

  it('adds a delayed key when its time comes, keeping the earliest of two delays', () => {
    const clock = new FakeClock();
    const queue = new WorkQueue<string>({ clock });
    queue.addAfter('k', 1_000);
    queue.addAfter('k', 5_000);
    clock.advance(999);
    assert.equal(queue.length, 0);
    clock.advance(1);
    assert.equal(queue.length, 1);
    assert.equal(clock.pending, 0, 'the later add was dropped');
  });
});
