// The reconciler's decisions, with narrow fakes for everything around it. The same
// behaviour is proven against a real API server in test/integration/controller.test.ts.
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { FINALIZER, type VolumeProvision, type VolumeProvisionStatus } from '../../../src/api/v1alpha1.ts';
import { Reconciler } from '../../../src/controller/reconciler.ts';
import { JobRunner } from '../../../src/jobs/runner.ts';
import type { EventType } from '../../../src/k8s/api.ts';
import { type ObjectRef, StatusWriter } from '../../../src/k8s/status-writer.ts';
import {
  type Pipeline,
  PipelineError,
  type ProvisionOptions,
  type ProvisionRequest,
} from '../../../src/pipeline/types.ts';
import { FakeClock } from '../../support/fake-clock.ts';

const KEY = 'ns/vm-disk';

function volumeProvision(overrides: Partial<VolumeProvision['metadata']> = {}): VolumeProvision {
  return {
    apiVersion: 'lvp.dev/v1alpha1',
    kind: 'VolumeProvision',
    metadata: {
      namespace: 'ns',
      name: 'vm-disk',
      uid: 'uid-1',
      generation: 1,
      resourceVersion: '1',
      finalizers: [FINALIZER],
      ...overrides,
    },
    spec: {
      nodeName: 'hv-1',
      source: { url: 's3://images/disk.qcow2', format: 'qcow2', secretRef: { name: 'creds' } },
      target: { type: 'file', volumeName: 'vm-disk', size: '1Gi' },
      reclaimPolicy: 'Delete',
    },
  };
}

/** A pipeline whose outcome each test decides; it waits for the signal when told to block. */
class ScriptedPipeline implements Pipeline {
  outcome: 'succeed' | 'block' | PipelineError = 'succeed';
  requests: ProvisionRequest[] = [];
  released: string[] = [];

  async provision(request: ProvisionRequest, options: ProvisionOptions) {
    this.requests.push(request);
    options.onProgress({
      stage: 'Downloading',
      stagePercent: 50,
      overallPercent: 20,
      bytesProcessed: 5,
      bytesTotal: 10,
    });
    if (this.outcome === 'block') {
      await new Promise((_, reject) =>
        options.signal.addEventListener('abort', () => reject(options.signal.reason)),
      );
    }
    if (this.outcome instanceof PipelineError) throw this.outcome;
    return { devicePath: '/images/vm-disk', virtualSize: 1024, cacheHit: false };
  }

  async release(request: Pick<ProvisionRequest, 'uid'>) {
    this.released.push(request.uid);
  }
}

const settle = async () => {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
};

describe('Reconciler', () => {
  let object: VolumeProvision | undefined;
  let pipeline: ScriptedPipeline;
  let finalizerPatches: string[][];
  /** Jobs the pipeline had seen when each finalizer patch was sent. */
  let jobsAtFinalizerPatch: number[];
  let finalizerFailure: Error | undefined;
  let statusPatches: object[];
  let events: { type: EventType; reason: string }[];
  let requeued: string[];
  let secrets: Record<string, string> | undefined;
  let reconciler: Reconciler;
  let writer: StatusWriter<VolumeProvisionStatus>;
  let clock: FakeClock;

  beforeEach(() => {
    object = volumeProvision();
    pipeline = new ScriptedPipeline();
    finalizerPatches = [];
    jobsAtFinalizerPatch = [];
    finalizerFailure = undefined;
    statusPatches = [];
    events = [];
    requeued = [];
    secrets = { accessKeyId: 'AKIA', secretKey: 'shh' };
    clock = new FakeClock();
    writer = new StatusWriter(
      { patchStatus: async (_ref: ObjectRef, patch: object) => void statusPatches.push(patch) },
      { intervalMs: 5_000, clock },
    );
    reconciler = new Reconciler({
      nodeName: 'hv-1',
      cache: { get: (key) => (key === KEY ? object : undefined) },
      objects: {
        async setFinalizers(patched, finalizers) {
          finalizerPatches.push(finalizers);
          jobsAtFinalizerPatch.push(pipeline.requests.length);
          if (finalizerFailure) throw finalizerFailure;
          return { ...patched, metadata: { ...patched.metadata, finalizers, resourceVersion: '2' } };
        },
      },
      secrets: { read: async () => secrets },
      events: { record: (_object, type, reason) => void events.push({ type, reason }) },
      status: writer,
      runner: new JobRunner(2),
      pipeline,
      clock,
      logger: pino({ level: 'silent' }),
      retryBackoff: { baseMs: 10_000, maxMs: 60_000 },
      requeue: (key) => requeued.push(key),
    });
  });

  const stage = (): VolumeProvisionStatus['stage'] => writer.current('uid-1')?.stage;

  it('adds the finalizer before any work, then goes on without waiting for its watch echo', async () => {
    object = volumeProvision({ finalizers: [] });
    await reconciler.reconcile(KEY);
    await settle();
    assert.deepEqual(finalizerPatches, [[FINALIZER]]);
    assert.deepEqual(jobsAtFinalizerPatch, [0]);
    assert.equal(pipeline.requests.length, 1);
    assert.equal(stage(), 'Completed');
    // The echo of the patch finds the job done and changes nothing.
    object = volumeProvision();
    const writes = statusPatches.length;
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(pipeline.requests.length, 1);
    assert.equal(statusPatches.length, writes);
  });

  it('starts nothing when the finalizer cannot be added', async () => {
    object = volumeProvision({ finalizers: [] });
    finalizerFailure = new Error('409 Conflict');
    await assert.rejects(reconciler.reconcile(KEY), /409 Conflict/);
    await settle();
    assert.equal(pipeline.requests.length, 0);
    assert.equal(statusPatches.length, 0);
  });

  it('never touches an object meant for another node', async () => {
    object = volumeProvision({ finalizers: [] });
    (object as VolumeProvision).spec.nodeName = 'hv-2';
    await reconciler.reconcile(KEY);
    assert.deepEqual(finalizerPatches, []);
    assert.equal(pipeline.requests.length, 0);
    assert.equal(statusPatches.length, 0);
  });

  it("runs a job with the Secret's credentials and ends Completed with Ready=True", async () => {
    await reconciler.reconcile(KEY);
    await settle();
    assert.deepEqual(pipeline.requests[0]?.credentials, { accessKeyId: 'AKIA', secretKey: 'shh' });
    const status = writer.current('uid-1');
    assert.equal(status?.stage, 'Completed');
    assert.equal(status?.devicePath, '/images/vm-disk');
    assert.equal(status?.attempts, 1);
    assert.equal(status?.observedGeneration, 1);
    assert.deepEqual(
      status?.conditions?.map((c) => [c.type, c.status, c.reason, c.observedGeneration]),
      [['Ready', 'True', 'Provisioned', 1]],
    );
    assert.deepEqual(events, [{ type: 'Normal', reason: 'Provisioned' }]);
    assert.deepEqual(requeued, [KEY]);
    await reconciler.reconcile(KEY);
    assert.equal(pipeline.requests.length, 1, 'a completed object is not provisioned again');
  });

  it('fails for good on a terminal error, with its reason', async () => {
    pipeline.outcome = new PipelineError('ChecksumMismatch', 'expected sha256:aa, got sha256:bb', {
      terminal: true,
    });
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(stage(), 'Failed');
    assert.equal(writer.current('uid-1')?.conditions?.[0]?.reason, 'ChecksumMismatch');
    assert.deepEqual(events.at(-1), { type: 'Warning', reason: 'ChecksumMismatch' });
    await reconciler.reconcile(KEY);
    assert.equal(pipeline.requests.length, 1, 'terminal failures are not retried');
  });

  it('retries a retryable error only after its backoff', async () => {
    secrets = undefined;
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(stage(), 'Queued');
    assert.equal(writer.current('uid-1')?.conditions?.[0]?.reason, 'SecretNotFound');
    assert.match(writer.current('uid-1')?.message ?? '', /retrying in \d+s \(attempt 1\)/);
    const early = await reconciler.reconcile(KEY);
    assert.ok((early.requeueAfterMs ?? 0) > 0, 'asks to come back later');
    assert.equal(pipeline.requests.length, 0);
    secrets = { accessKeyId: 'a', secretKey: 'b' };
    clock.advance(early.requeueAfterMs ?? 0);
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(stage(), 'Completed');
    assert.equal(writer.current('uid-1')?.attempts, 2);
  });

  it('on deletion cancels the running job without calling it failed, releases the volume, then drops the finalizer', async () => {
    pipeline.outcome = 'block';
    await reconciler.reconcile(KEY);
    await settle();
    assert.equal(stage(), 'Downloading');
    object = volumeProvision({ deletionTimestamp: new Date() });
    await reconciler.reconcile(KEY);
    assert.deepEqual(pipeline.released, ['uid-1']);
    assert.deepEqual(finalizerPatches, [[]]);
    assert.ok(!events.some((event) => event.type === 'Warning'), 'a cancelled job is not a failure');
    assert.ok(events.some((event) => event.reason === 'VolumeDeleted'));
  });

  it('keeps the volume when the reclaim policy is Retain', async () => {
    object = volumeProvision({ deletionTimestamp: new Date() });
    (object as VolumeProvision).spec.reclaimPolicy = 'Retain';
    await reconciler.reconcile(KEY);
    assert.deepEqual(pipeline.released, []);
    assert.deepEqual(finalizerPatches, [[]]);
    assert.ok(events.some((event) => event.reason === 'VolumeRetained'));
  });
});

describe('Reconciler, several objects', () => {
  it('lines jobs up in creation order even when their reconciles finish out of order', async () => {
    // Five objects created in one second, as `kubectl apply` of a list does.
    const names = ['q0', 'q1', 'q2', 'q3', 'q4'];
    const objects = new Map(
      names.map((name, index) => {
        const object = volumeProvision({
          name,
          uid: `uid-${name}`,
          finalizers: [],
          creationTimestamp: '2026-11-23T13:25:55Z' as unknown as Date,
        });
        object.spec.target.volumeName = `vm-${index}`;
        return [`ns/${name}`, object];
      }),
    );
    const pipeline = new ScriptedPipeline();
    pipeline.outcome = 'block';
    const runner = new JobRunner(1);
    const clock = new FakeClock();
    /** Answers each object's finalizer patch when called. */
    const answers = new Map<string, () => void>();
    const reconciler = new Reconciler({
      nodeName: 'hv-1',
      cache: { get: (key) => objects.get(key) },
      objects: {
        setFinalizers: (object, finalizers) =>
          new Promise((resolve) =>
            answers.set(object.metadata?.name ?? '', () =>
              resolve({ ...object, metadata: { ...object.metadata, finalizers } }),
            ),
          ),
      },
      secrets: { read: async () => ({ accessKeyId: 'AKIA', secretKey: 'shh' }) },
      events: { record: () => {} },
      status: new StatusWriter({ patchStatus: async () => {} }, { intervalMs: 5_000, clock }),
      runner,
      pipeline,
      clock,
      logger: pino({ level: 'silent' }),
      retryBackoff: { baseMs: 10_000, maxMs: 60_000 },
      requeue: () => {},
    });
    // The add events, in creation order: each reconcile sends its finalizer patch.
    const reconciles = [...objects.keys()].map((key) => reconciler.reconcile(key));
    // The patches' answers come back in any order, and each reconcile submits its job then.
    for (const name of ['q0', 'q2', 'q4', 'q1', 'q3']) {
      answers.get(name)?.();
      await settle();
    }
    await Promise.all(reconciles);
    assert.deepEqual(
      names.map((name) => runner.positionOf(`ns/${name}`)),
      [0, 1, 2, 3, 4],
    );
    await runner.shutDown();
  });
});
