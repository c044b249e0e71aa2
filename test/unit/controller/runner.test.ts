import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type JobAbort, JobRunner } from '../../../src/jobs/runner.ts';

/** A task that runs until the test releases it, recording what happened. */
function controllableTask(log: string[], key: string) {
  let release = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const task = async (signal: AbortSignal) => {
    log.push(`start ${key}`);
    await Promise.race([
      released,
      new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true })),
    ]);
    log.push(signal.aborted ? `abort ${key} ${(signal.reason as JobAbort).kind}` : `end ${key}`);
  };
  return { task, release };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('JobRunner', () => {
  it('runs at most `slots` jobs and starts the waiting ones in FIFO order', async () => {
    const log: string[] = [];
    const runner = new JobRunner(2);
    const jobs = ['a', 'b', 'c', 'd'].map((key) => ({ key, ...controllableTask(log, key) }));
    for (const job of jobs) runner.submit(job.key, job.task);
    await tick();
    assert.deepEqual(log, ['start a', 'start b']);
    assert.equal(runner.running, 2);
    assert.deepEqual(
      ['a', 'b', 'c', 'd'].map((key) => runner.positionOf(key)),
      [0, 0, 1, 2],
    );

    jobs[1]?.release();
    await tick();
    assert.deepEqual(log, ['start a', 'start b', 'end b', 'start c']);
    assert.equal(runner.positionOf('d'), 1);
    jobs[0]?.release();
    await tick();
    jobs[2]?.release();
    jobs[3]?.release();
    await tick();
    assert.equal(runner.running, 0);
  });

  it('lines waiting jobs up by rank, keeping submission order among equal ranks', async () => {
    const log: string[] = [];
    const runner = new JobRunner(1);
    const running = controllableTask(log, 'running');
    runner.submit('running', running.task, [0]);
    // Submitted out of creation order, as parallel workers may: [created at, arrival].
    const waiting = [
      ['q4', [1000, 4]],
      ['q3', [1000, 3]],
      ['late', [2000, 0]],
      ['q2', [1000, 2]],
      ['q2-twin', [1000, 2]],
    ] as const;
    for (const [key, rank] of waiting) runner.submit(key, controllableTask(log, key).task, rank);
    assert.deepEqual(
      ['q2', 'q2-twin', 'q3', 'q4', 'late'].map((key) => runner.positionOf(key)),
      [1, 2, 3, 4, 5],
    );
    running.release();
    await tick();
    assert.deepEqual(log, ['start running', 'end running', 'start q2']);
    await runner.shutDown();
  });

  it('does not queue a key twice', () => {
    const runner = new JobRunner(1);
    const { task } = controllableTask([], 'a');
    assert.equal(runner.submit('a', task), true);
    assert.equal(runner.submit('a', task), false);
  });

  it('cancels a running job through its signal and waits until its task returned', async () => {
    const log: string[] = [];
    const finished: string[] = [];
    const runner = new JobRunner(1, { finished: (key) => finished.push(key) });
    runner.submit('a', controllableTask(log, 'a').task);
    runner.submit('b', controllableTask(log, 'b').task);
    await tick();
    await runner.cancel('b');
    assert.deepEqual(finished, ['b'], 'a waiting job is dropped at once');
    await runner.cancel('a');
    assert.deepEqual(log, ['start a', 'abort a cancelled']);
    assert.equal(runner.has('a'), false);
  });

  it('hands running jobs back on shutdown and refuses new ones', async () => {
    const log: string[] = [];
    const runner = new JobRunner(2);
    runner.submit('a', controllableTask(log, 'a').task);
    runner.submit('b', controllableTask(log, 'b').task);
    runner.submit('c', controllableTask(log, 'c').task);
    await tick();
    await runner.shutDown();
    assert.deepEqual(log.sort(), ['abort a shutdown', 'abort b shutdown', 'start a', 'start b']);
    assert.equal(runner.submit('d', controllableTask(log, 'd').task), false);
  });

  it('reports the waiting order whenever it changes', async () => {
    const orders: string[][] = [];
    const runner = new JobRunner(1, { queueChanged: (waiting) => orders.push([...waiting]) });
    const a = controllableTask([], 'a');
    runner.submit('a', a.task);
    runner.submit('b', controllableTask([], 'b').task);
    runner.submit('c', controllableTask([], 'c').task);
    a.release();
    await tick();
    assert.deepEqual(orders.at(-1), ['c']);
    assert.ok(orders.some((order) => order.join() === 'b,c'));
  });

  it('never reports a job waiting that started at once', async () => {
    const orders: string[][] = [];
    const runner = new JobRunner(1, { queueChanged: (waiting) => orders.push([...waiting]) });
    const a = controllableTask([], 'a');
    runner.submit('a', a.task);
    assert.ok(
      !orders.some((order) => order.includes('a')),
      `a was reported waiting: ${JSON.stringify(orders)}`,
    );
    runner.submit('b', controllableTask([], 'b').task);
    assert.deepEqual(orders.at(-1), ['b']);
    a.release();
    await tick();
    assert.ok(
      orders.filter((order) => order.includes('b')).length === 1,
      'b was reported once, then started',
    );
    await runner.shutDown();
  });

  it('rejects a slot count that is not a positive integer', () => {
    assert.throws(() => new JobRunner(0), /positive integer/);
  });
});
