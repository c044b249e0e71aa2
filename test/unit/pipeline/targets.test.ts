import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { VolumeProvisionSpec } from '../../../src/api/v1alpha1.ts';
import { FileTargets, LvmTargets } from '../../../src/pipeline/targets.ts';
import { PipelineError } from '../../../src/pipeline/types.ts';
import type { VolumeManager } from '../../../src/storage/lvm/volumes.ts';

const MiB = 1024 * 1024;
const spec = (
  volumeName: string,
  target: Partial<VolumeProvisionSpec['target']> = {},
): VolumeProvisionSpec => ({
  nodeName: 'node-a',
  source: { url: 's3://images/disk.qcow2', format: 'qcow2' },
  target: { type: 'file', volumeName, size: '8Mi', ...target },
  reclaimPolicy: 'Delete',
});
const rejectsWith = (reason: string, pattern: RegExp) => (error: unknown) => {
  assert.ok(error instanceof PipelineError, String(error));
  assert.equal(error.reason, reason);
  assert.equal(error.terminal, true);
  assert.match(error.message, pattern);
  return true;
};

describe('FileTargets.check', () => {
  const root = mkdtempSync(join(tmpdir(), 'lvp-targets-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const dir = join(root, 'images');
  const targets = new FileTargets({ dir, stateDir: join(root, 'state') });

  it('passes a free name and creates nothing', async () => {
    await targets.check('uid-a', spec('free.img'));
    assert.deepEqual(readdirSync(root), []);
  });

  it("passes the owner's own name and refuses it to anyone else", async () => {
    const preparation = await targets.prepare('uid-a', spec('owned.img'), 8 * MiB);
    assert.equal(preparation.complete, false);
    await targets.check('uid-a', spec('owned.img'));
    await assert.rejects(
      targets.check('uid-b', spec('owned.img')),
      rejectsWith('VolumeConflict', /owned\.img belongs to another VolumeProvision \(UID uid-a\)/),
    );
  });

  it('refuses a file it did not create', async () => {
    writeFileSync(join(dir, 'foreign.img'), 'not ours');
    await assert.rejects(
      targets.check('uid-a', spec('foreign.img')),
      rejectsWith('VolumeConflict', /foreign\.img already exists and was not created by this controller/),
    );
  });
});

describe('LvmTargets.check', () => {
  const checked: unknown[] = [];
  const volumes = {
    checkVolume: async (request: unknown) => {
      checked.push(request);
    },
  } as unknown as VolumeManager;

  it('checks the LV in the default volume group', async () => {
    const targets = new LvmTargets({
      volumes,
      zeroer: { zeroFrom: async () => {} },
      defaultVolumeGroup: 'vg0',
    });
    await targets.check('uid-a', spec('disk0', { type: 'lvm' }), 8 * MiB);
    assert.deepEqual(checked, [{ vg: 'vg0', name: 'disk0', sizeBytes: 8 * MiB, ownerUid: 'uid-a' }]);
  });

  it('refuses a spec without a volume group when there is no default, before asking LVM', async () => {
    checked.length = 0;
    const targets = new LvmTargets({
      volumes,
      zeroer: { zeroFrom: async () => {} },
      defaultVolumeGroup: undefined,
    });
    await assert.rejects(
      targets.check('uid-a', spec('disk0', { type: 'lvm' }), 8 * MiB),
      rejectsWith('VolumeGroupNotSet', /spec\.target\.volumeGroup is empty/),
    );
    assert.deepEqual(checked, []);
  });
});
