// The CachedImage reconciler's decisions with narrow fakes; the real cache is covered in
// test/unit/cache and test/integration/cache.test.ts.
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { type CachedImage, type CachedImageStatus, FINALIZER } from '../../../src/api/v1alpha1.ts';
import { CachedImageReconciler } from '../../../src/controller/cached-image-reconciler.ts';
import { JobRunner } from '../../../src/jobs/runner.ts';
import { type ObjectRef, StatusWriter } from '../../../src/k8s/status-writer.ts';
import { type CacheControl, PipelineError } from '../../../src/pipeline/types.ts';
import { FakeClock } from '../../support/fake-clock.ts';

const KEY = 'ns/base-image';

const cachedImage = (metadata: Partial<CachedImage['metadata']> = {}): CachedImage => ({
  apiVersion: 'lvp.dev/v1alpha1',
  kind: 'CachedImage',
  metadata: {
    namespace: 'ns',
    name: 'base-image',
    uid: 'uid-9',
    generation: 1,
    finalizers: [FINALIZER],
    ...metadata,
  },
  spec: { nodeName: 'hv-1', source: { url: 's3://images/base.qcow2', format: 'qcow2' } },
});

const settle = async () => {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
};

describe('CachedImageReconciler', () => {
  let object: CachedImage | undefined;
  let prewarms: number;
  let evictOutcome: 'ok' | 'in-use';
  let prewarmError: PipelineError | undefined;
  let finalizerPatches: string[][];
  let events: string[];
  let writer: StatusWriter<CachedImageStatus>;
  let clock: FakeClock;
  let reconciler: CachedImageReconciler;

  beforeEach(() => {
    object = cachedImage();
    prewarms = 0;
    evictOutcome = 'ok';
    prewarmError = undefined;
    finalizerPatches = [];
    events = [];
    clock = new FakeClock();
    writer = new StatusWriter<CachedImageStatus>(
      { patchStatus: async (_ref: ObjectRef, _patch: object) => {} },
      { intervalMs: 1_000, clock },
    );
    const control: CacheControl = {
      async prewarm() {
        prewarms += 1;
        if (prewarmError) throw prewarmError;
        return {
          sizeBytes: 1024,
          sha256: 'ab'.repeat(32),
          hit: prewarms > 1,
          lastUsed: new Date(clock.now()),
        };
      },
      async evict() {
        if (evictOutcome === 'in-use')
          throw new PipelineError('CachedImageInUse', 'a job is reading it', { terminal: false });
        return true;
      },
    };
    reconciler = new CachedImageReconciler({
      nodeName: 'hv-1',
      cache: { get: (key) => (key === KEY ? object : undefined) },
      objects: { setFinalizers: async (_o, finalizers) => void finalizerPatches.push(finalizers) },
      secrets: { read: async () => undefined },
      events: { record: (_o, type, reason) => void events.push(`${type} ${reason}`) },
      status: writer,
      runner: new JobRunner(2),
      control,
      clock,
      logger: pino({ level: 'silent' }),
      retryBackoff: { baseMs: 1_000, maxMs: 10_000 },
      resyncMs: 600_000,
      requeue: () => {},
    });
  });

  it('adds its finalizer first, then pre-warms and reports Cached', async () => {
    object = cachedImage({ finalizers: [] });
    await reconciler.reconcile(KEY);
    assert.deepEqual(finalizerPatches, [[FINALIZER]]);
    assert.equal(prewarms, 0);
    object = cachedImage();
    await reconciler.reconcile(KEY);
    await settle();
    const status = writer.current('uid-9');
    assert.equal(status?.phase, 'Cached');
    assert.equal(status?.sizeBytes, 1024);
    assert.equal(status?.conditions?.[0]?.status, 'True');
    assert.deepEqual(events, ['Normal Cached']);
  });

  it('checks a cached image again only after the resync interval', async () => {
    await reconciler.reconcile(KEY);
    await settle();
    const early = await reconciler.reconcile(KEY);
    assert.equal(prewarms, 1);
    assert.equal(early.requeueAfterMs, 600_000);
    clock.advance(600_000);
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(prewarms, 2);
    assert.deepEqual(events, ['Normal Cached'], 'a confirmed hit is not announced again');
  });

  it('retries a retryable failure after backoff and stops at a terminal one', async () => {
    prewarmError = new PipelineError('SourceNotFound', 'no such object', { terminal: false });
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(writer.current('uid-9')?.phase, 'Pending');
    assert.match(writer.current('uid-9')?.message ?? '', /retrying in \d+s \(attempt 1\)/);
    const early = await reconciler.reconcile(KEY);
    assert.ok((early.requeueAfterMs ?? 0) > 0);
    prewarmError = new PipelineError('ChecksumMismatch', 'bad bytes', { terminal: true });
    clock.advance(early.requeueAfterMs ?? 0);
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(writer.current('uid-9')?.phase, 'Failed');
    await reconciler.reconcile(KEY);
    assert.equal(prewarms, 2, 'terminal failures are not retried');
  });

  it('evicts on deletion and keeps the finalizer while the image is in use', async () => {
    object = cachedImage({ deletionTimestamp: new Date() });
    evictOutcome = 'in-use';
    await assert.rejects(reconciler.reconcile(KEY), /a job is reading it/);
    assert.deepEqual(finalizerPatches, []);
    assert.ok(events.includes('Normal EvictionDeferred'));
    evictOutcome = 'ok';
    await reconciler.reconcile(KEY);
    assert.deepEqual(finalizerPatches, [[]]);
    assert.ok(events.includes('Normal Evicted'));
  });
});
