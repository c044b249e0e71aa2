// parallelRanges with a fake fetch whose bodies the tests feed by hand, and StarvationProbe
// with a fake clock.
import assert from 'node:assert/strict';
import { PassThrough, type Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { parallelRanges, StarvationProbe } from '../../../src/storage/download/parallel-ranges.ts';

const content = Buffer.from(Array.from({ length: 100 }, (_, index) => index));

interface Request {
  start: number;
  end: number;
  signal: AbortSignal;
  body: PassThrough;
}

/** A fetch that records its requests and leaves their bodies to the test. */
function manualFetch() {
  const requests: Request[] = [];
  let waiting: (() => void) | undefined;
  const fetch = async (start: number, end: number, signal: AbortSignal): Promise<Readable> => {
    const body = new PassThrough();
    signal.addEventListener('abort', () => body.destroy(signal.reason), { once: true });
    requests.push({ start, end, signal, body });
    waiting?.();
    return body;
  };
  /** Resolves once `count` requests were made. */
  const made = async (count: number) => {
    while (requests.length < count) await new Promise<void>((resolve) => (waiting = resolve));
  };
  return { fetch, requests, made };
}

/** Sends a request's whole range and ends its body. */
function answer(request: Request, bytes = content.subarray(request.start, request.end)): void {
  request.body.end(bytes);
}

async function readAll(body: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of body) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

/** Reads until the body fails; returns what arrived before, and the error. */
async function readUntilFailure(body: Readable): Promise<{ received: Buffer; error: unknown }> {
  const parts: Buffer[] = [];
  try {
    for await (const part of body) parts.push(part as Buffer);
  } catch (error) {
    return { received: Buffer.concat(parts), error };
  }
  assert.fail('the body ended without an error');
}

describe('parallelRanges', () => {
  const options = { start: 10, end: 100, chunkBytes: 20, connections: 3 };

  it('hands the bytes on in order when later chunks arrive first, with at most `connections` requests at once', async () => {
    const { fetch, requests, made } = manualFetch();
    const body = parallelRanges(fetch, { ...options, signal: new AbortController().signal });
    const received = readAll(body);
    await made(3);
    assert.deepEqual(
      requests.map(({ start, end }) => [start, end]),
      [
        [10, 30],
        [30, 50],
        [50, 70],
      ],
    );
    answer(requests[2] as Request);
    answer(requests[1] as Request);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(requests.length, 3, 'no fourth request while the first is unanswered');
    answer(requests[0] as Request);
    await made(5);
    assert.deepEqual(
      requests.slice(3).map(({ start, end }) => [start, end]),
      [
        [70, 90],
        [90, 100],
      ],
    );
    answer(requests[4] as Request);
    answer(requests[3] as Request);
    assert.deepEqual(await received, content.subarray(10));
  });

  it('fails after handing on the bytes that arrived before a chunk broke, and ends the other requests', async () => {
    const { fetch, requests, made } = manualFetch();
    const body = parallelRanges(fetch, { ...options, signal: new AbortController().signal });
    const outcome = readUntilFailure(body);
    await made(3);
    answer(requests[0] as Request);
    answer(requests[2] as Request);
    const broken = requests[1] as Request;
    // As httpGet does, the bytes before the break reach the reader before the error.
    broken.body.write(content.subarray(30, 35));
    await new Promise((resolve) => setImmediate(resolve));
    broken.body.destroy(new Error('connection reset'));
    const { received, error } = await outcome;
    assert.deepEqual(received, content.subarray(10, 35));
    assert.match((error as Error).message, /connection reset/);
    assert.ok(
      requests.every(({ signal }) => signal.aborted),
      'every request still in flight was aborted',
    );
  });

  it('refuses a chunk that ends short or runs long', async () => {
    for (const [bytes, message] of [
      [content.subarray(10, 25), /connection closed after 15 of 20 bytes from byte 10/],
      [content.subarray(10, 31), /sent more than the 20 bytes asked for from byte 10/],
    ] as const) {
      const { fetch, requests, made } = manualFetch();
      const outcome = readUntilFailure(
        parallelRanges(fetch, { ...options, signal: new AbortController().signal }),
      );
      await made(1);
      answer(requests[0] as Request, bytes);
      const { error } = await outcome;
      assert.match((error as Error).message, message);
    }
  });

  it('fails with the error of a request that never answered, in its turn', async () => {
    const body = parallelRanges(
      async (start) => {
        if (start === 30) throw new Error('HTTP 503');
        const chunk = new PassThrough();
        chunk.end(content.subarray(start, Math.min(100, start + 20)));
        return chunk;
      },
      { ...options, signal: new AbortController().signal },
    );
    const { received, error } = await readUntilFailure(body);
    assert.deepEqual(received, content.subarray(10, 30));
    assert.match((error as Error).message, /HTTP 503/);
  });

  it('ends every request when the stream is destroyed or the signal aborts', async () => {
    for (const stop of ['destroy', 'abort'] as const) {
      const { fetch, requests, made } = manualFetch();
      const controller = new AbortController();
      const body = parallelRanges(fetch, { ...options, signal: controller.signal });
      body.resume();
      body.on('error', () => {});
      await made(3);
      if (stop === 'destroy') body.destroy();
      else controller.abort(new Error('the job stopped'));
      await new Promise((resolve) => setImmediate(resolve));
      assert.ok(
        requests.every(({ signal }) => signal.aborted),
        `${stop}: every request was aborted`,
      );
    }
  });
});

describe('StarvationProbe', () => {
  /** Feeds the probe writes of 1 unit that took `writeMs`, each after `waitMs` of waiting. */
  function probe(waitMs: number, writeMs: number, writes: number): boolean | undefined {
    let now = 0;
    const subject = new StarvationProbe(writes, () => now);
    let verdict: boolean | undefined;
    for (let write = 0; write < writes; write++) {
      now += waitMs;
      subject.arrived();
      now += writeMs;
      subject.consumed(1);
      verdict = subject.starved();
      if (write < writes - 1) assert.equal(verdict, undefined, 'no verdict before the probe bytes');
    }
    return verdict;
  }

  it('finds a download that mostly waits for bytes starved', () => {
    assert.equal(probe(3, 1, 10), true);
  });

  it('counts the wait for the first bytes', () => {
    let now = 0;
    const subject = new StarvationProbe(1, () => now);
    now += 10;
    subject.arrived();
    now += 1;
    subject.consumed(1);
    assert.equal(subject.starved(), true);
  });

  it('finds a download that is busy writing not starved', () => {
    assert.equal(probe(0.1, 1, 10), false);
    assert.equal(probe(0, 1, 10), false);
  });
});
