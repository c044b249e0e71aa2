import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type ObjectRef, StatusWriter } from '../../../src/k8s/status-writer.ts';
import { FakeClock } from '../../support/fake-clock.ts';

const ref: ObjectRef = { namespace: 'ns', name: 'vm', uid: 'uid-1' };

function recordingApi(failFirst = 0) {
  const patches: object[] = [];
  let failures = failFirst;
  return {
    patches,
    api: {
      async patchStatus(_ref: ObjectRef, patch: object) {
        if (failures > 0) {
          failures -= 1;
          throw new Error('API server unavailable');
        }
        patches.push(patch);
      },
    },
  };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe('StatusWriter', () => {
  it('writes a stage change at once, as a merge patch guarded by the UID', async () => {
    const { api, patches } = recordingApi();
    const writer = new StatusWriter(api, { intervalMs: 5_000, clock: new FakeClock() });
    await writer.set(ref, { stage: 'Queued', queuePosition: 1 }, { immediate: true });
    await writer.set(ref, { stage: 'Downloading' }, { immediate: true });
    assert.deepEqual(patches, [
      { metadata: { uid: 'uid-1' }, status: { stage: 'Queued', queuePosition: 1 } },
      { metadata: { uid: 'uid-1' }, status: { stage: 'Downloading', queuePosition: null } },
    ]);
  });

  it('writes nothing when the status did not change, including what the object already holds', async () => {
    const { api, patches } = recordingApi();
    const writer = new StatusWriter(api, { intervalMs: 5_000, clock: new FakeClock() });
    writer.observe(ref, { stage: 'Completed' });
    await writer.set(ref, { stage: 'Completed' }, { immediate: true });
    assert.equal(patches.length, 0);
  });

  it('coalesces progress to one write per interval, carrying the latest values', async () => {
    const clock = new FakeClock();
    const { api, patches } = recordingApi();
    const writer = new StatusWriter(api, { intervalMs: 5_000, clock });
    await writer.set(
      ref,
      {
        stage: 'Downloading',
        progress: { stagePercent: 0, overallPercent: 0, bytesProcessed: 0, bytesTotal: 100 },
      },
      { immediate: true },
    );
    for (let percent = 1; percent <= 40; percent += 1) {
      await writer.set(
        ref,
        {
          stage: 'Downloading',
          progress: {
            stagePercent: percent,
            overallPercent: percent,
            bytesProcessed: percent,
            bytesTotal: 100,
          },
        },
        { immediate: false },
      );
      clock.advance(100);
    }
    await flush();
    // 40 updates over 4 s: only the first write has happened; the next is due at 5 s.
    assert.equal(patches.length, 1);
    clock.advance(1_000);
    await flush();
    assert.equal(patches.length, 2);
    assert.deepEqual(patches[1], {
      metadata: { uid: 'uid-1' },
      status: { progress: { stagePercent: 40, overallPercent: 40, bytesProcessed: 40 } },
    });
  });

  it('counts a write still in flight as made, so a change meanwhile waits a full interval', async () => {
    const clock = new FakeClock();
    const patches: object[] = [];
    let land = () => {};
    const landed = new Promise<void>((resolve) => {
      land = resolve;
    });
    const api = {
      async patchStatus(_ref: ObjectRef, patch: object) {
        if (patches.length === 0) await landed;
        patches.push(patch);
      },
    };
    const writer = new StatusWriter(api, { intervalMs: 5_000, clock });
    const first = writer.set(ref, { stage: 'Queued', queuePosition: 3 }, { immediate: true });
    await flush(); // the first patch is on its way
    const second = writer.set(ref, { stage: 'Queued', queuePosition: 2 }, { immediate: false });
    land();
    await Promise.all([first, second]);
    await flush();
    assert.deepEqual(patches, [
      { metadata: { uid: 'uid-1' }, status: { stage: 'Queued', queuePosition: 3 } },
    ]);
    clock.advance(5_000);
    await flush();
    assert.deepEqual(patches[1], { metadata: { uid: 'uid-1' }, status: { queuePosition: 2 } });
  });

  it('retries a failed write after the interval', async () => {
    const clock = new FakeClock();
    const { api, patches } = recordingApi(1);
    const errors: unknown[] = [];
    const writer = new StatusWriter(api, {
      intervalMs: 5_000,
      clock,
      onError: (_ref, error) => errors.push(error),
    });
    await writer.set(ref, { stage: 'Queued' }, { immediate: true });
    assert.equal(patches.length, 0);
    assert.equal(errors.length, 1);
    clock.advance(5_000);
    await flush();
    assert.equal(patches.length, 1);
  });

  it('drops pending writes for a forgotten object', async () => {
    const clock = new FakeClock();
    const { api, patches } = recordingApi();
    const writer = new StatusWriter(api, { intervalMs: 5_000, clock });
    await writer.set(ref, { stage: 'Downloading' }, { immediate: true });
    await writer.set(ref, { stage: 'Downloading', message: 'later' }, { immediate: false });
    writer.forget(ref.uid);
    clock.advance(10_000);
    await flush();
    assert.equal(patches.length, 1);
    assert.equal(writer.current(ref.uid), undefined);
  });
});
