import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PipelineError } from '../../../src/pipeline/types.ts';
import { LvmCommand, LvmCommandError } from '../../../src/storage/lvm/command.ts';
import { LvmVolumeManager, roundUpToExtent } from '../../../src/storage/lvm/volumes.ts';
import { fail, fakeRunner, ok, reportJson } from './fake-runner.ts';

const MiB = 1024 * 1024;
const UID = '3f0b9c1e-5a7d-4e2b-9c8f-1a2b3c4d5e6f';
const TAG = `lvp.dev/uid=${UID}`;
const REPORT = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];
const VGS = ['vgs', ...REPORT, '-o', 'vg_name,vg_size,vg_free,vg_extent_size', 'vg0'];
const LVS = ['lvs', ...REPORT, '-o', 'lv_name,vg_name,lv_size,lv_tags,lv_active', 'vg0'];

const vgReport = (freeBytes: number, extentBytes = 4 * MiB) =>
  ok(
    reportJson('vg', [
      {
        vg_name: 'vg0',
        vg_size: String(60 * MiB),
        vg_free: String(freeBytes),
        vg_extent_size: String(extentBytes),
      },
    ]),
  );
const lv = (name: string, sizeBytes: number, tags: string, active = 'active') => ({
  lv_name: name,
  vg_name: 'vg0',
  lv_size: String(sizeBytes),
  lv_tags: tags,
  lv_active: active,
});
const lvReport = (...rows: ReturnType<typeof lv>[]) => ok(reportJson('lv', rows));
const vgNotFound = fail(5, '  Volume group "vg0" not found\n  Cannot process volume group vg0\n');

function managerWith(...outputs: Parameters<typeof fakeRunner>) {
  const runner = fakeRunner(...outputs);
  return { runner, volumes: new LvmVolumeManager(new LvmCommand({ runProcess: runner.run })) };
}

const pipelineError =
  (reason: string, terminal: boolean, ...patterns: RegExp[]) =>
  (error: unknown) => {
    assert.ok(error instanceof PipelineError, `expected a PipelineError, got ${String(error)}`);
    assert.equal(error.reason, reason);
    assert.equal(error.terminal, terminal);
    for (const pattern of patterns) assert.match(error.message, pattern);
    return true;
  };

describe('roundUpToExtent', () => {
  it('keeps a whole number of extents', () => assert.equal(roundUpToExtent(8 * MiB, 4 * MiB), 8 * MiB));
  it('rounds one byte over up to the next extent', () =>
    assert.equal(roundUpToExtent(8 * MiB + 1, 4 * MiB), 12 * MiB));
  it('rounds a single byte up to one extent', () => assert.equal(roundUpToExtent(1, 4 * MiB), 4 * MiB));
  it('rounds a size that is not a multiple of 512', () =>
    assert.equal(roundUpToExtent(5_000_000, 4 * MiB), 8 * MiB));
  it('is exact near 2^53', () => {
    const extent = 1024;
    const size = 2 ** 53 - 1 - extent * 2 + 1; // one byte more than an extent multiple minus one extent
    assert.equal(roundUpToExtent(size, extent) % extent, 0);
    assert.ok(roundUpToExtent(size, extent) >= size && roundUpToExtent(size, extent) - size < extent);
  });
  it('refuses a result beyond safe integers', () =>
    assert.throws(() => roundUpToExtent(2 ** 53 - 1, 4 * MiB), RangeError));
  it('refuses a zero extent size', () => assert.throws(() => roundUpToExtent(1, 0), RangeError));
});

describe('LvmVolumeManager.getVolumeGroup', () => {
  it('reads size, free space and extent size in bytes', async () => {
    const { runner, volumes } = managerWith(vgReport(52 * MiB));
    assert.deepEqual(await volumes.getVolumeGroup('vg0'), {
      name: 'vg0',
      sizeBytes: 60 * MiB,
      freeBytes: 52 * MiB,
      extentSizeBytes: 4 * MiB,
    });
    assert.deepEqual(runner.argv(), [VGS]);
    assert.deepEqual(runner.calls[0]?.env, { LC_ALL: 'C' });
  });

  it('turns LVM’s "not found" into VolumeGroupNotFound, retried', async () => {
    const { volumes } = managerWith(vgNotFound);
    await assert.rejects(
      volumes.getVolumeGroup('vg0'),
      pipelineError('VolumeGroupNotFound', false, /volume group vg0 does not exist on this node/),
    );
  });

  it('also when LVM exits 0 with no row for the VG', async () => {
    const { volumes } = managerWith(ok(reportJson('vg', [])));
    await assert.rejects(volumes.getVolumeGroup('vg0'), pipelineError('VolumeGroupNotFound', false));
  });

  it('passes other LVM failures on with their stderr', async () => {
    const { volumes } = managerWith(fail(5, '  Volume group "other" not found\n'));
    await assert.rejects(volumes.getVolumeGroup('vg0'), (error: unknown) => {
      assert.ok(error instanceof LvmCommandError);
      assert.match(error.message, /Volume group "other" not found/);
      return true;
    });
  });

  it('rejects a size that is not a byte count', async () => {
    const { volumes } = managerWith(
      ok(reportJson('vg', [{ vg_name: 'vg0', vg_size: '60.00m', vg_free: '0', vg_extent_size: '4194304' }])),
    );
    await assert.rejects(
      volumes.getVolumeGroup('vg0'),
      pipelineError('LvmReportInvalid', false, /vg_size="60.00m"/),
    );
  });

  it('checks the name before calling LVM', async () => {
    const { runner, volumes } = managerWith();
    await assert.rejects(volumes.getVolumeGroup('vg 0'), pipelineError('InvalidVolumeGroupName', true));
    assert.deepEqual(runner.calls, []);
  });
});

describe('LvmVolumeManager.findVolume', () => {
  it('finds an LV by name with its tags and device path', async () => {
    const { runner, volumes } = managerWith(
      lvReport(lv('other', 4 * MiB, ''), lv('disk0', 8 * MiB, `${TAG},backup`, '')),
    );
    assert.deepEqual(await volumes.findVolume('vg0', 'disk0'), {
      name: 'disk0',
      vg: 'vg0',
      sizeBytes: 8 * MiB,
      tags: [TAG, 'backup'],
      devicePath: '/dev/vg0/disk0',
      active: false,
    });
    assert.deepEqual(runner.argv(), [LVS]);
  });

  it('reports an untagged LV with no tags', async () => {
    const { volumes } = managerWith(lvReport(lv('disk0', 4 * MiB, '')));
    assert.deepEqual((await volumes.findVolume('vg0', 'disk0'))?.tags, []);
  });

  it('returns undefined when there is no such LV', async () => {
    const { volumes } = managerWith(lvReport(lv('disk00', 4 * MiB, TAG)));
    assert.equal(await volumes.findVolume('vg0', 'disk0'), undefined);
  });

  it('reports a missing VG as VolumeGroupNotFound', async () => {
    const { volumes } = managerWith(vgNotFound);
    await assert.rejects(volumes.findVolume('vg0', 'disk0'), pipelineError('VolumeGroupNotFound', false));
  });
});

describe('LvmVolumeManager.ensureVolume', () => {
  const request = { vg: 'vg0', name: 'disk0', sizeBytes: 5_000_000, ownerUid: UID };

  it('creates a tagged, active LV of the extent-rounded size', async () => {
    const { runner, volumes } = managerWith(vgReport(60 * MiB), lvReport(lv('other', 4 * MiB, '')), ok());
    assert.deepEqual(await volumes.ensureVolume(request), {
      name: 'disk0',
      vg: 'vg0',
      sizeBytes: 8 * MiB,
      tags: [TAG],
      devicePath: '/dev/vg0/disk0',
      active: true,
      created: true,
    });
    assert.deepEqual(runner.argv(), [
      VGS,
      LVS,
      [
        'lvcreate',
        '-n',
        'disk0',
        '-L',
        `${8 * MiB}b`,
        '--addtag',
        TAG,
        '--activate',
        'y',
        '--zero',
        'y',
        '--wipesignatures',
        'y',
        '--yes',
        'vg0',
      ],
    ]);
    assert.ok(runner.calls.every((call) => call.env.LC_ALL === 'C' && call.file === 'lvm'));
  });

  it('creates an LV that takes exactly all free space', async () => {
    const { runner, volumes } = managerWith(vgReport(8 * MiB), lvReport(), ok());
    assert.equal((await volumes.ensureVolume(request)).created, true);
    assert.equal(runner.calls.length, 3);
  });

  it('reuses its own LV after a crash, without creating another', async () => {
    const { runner, volumes } = managerWith(vgReport(0), lvReport(lv('disk0', 8 * MiB, `other,${TAG}`)));
    assert.deepEqual(await volumes.ensureVolume(request), {
      name: 'disk0',
      vg: 'vg0',
      sizeBytes: 8 * MiB,
      tags: ['other', TAG],
      devicePath: '/dev/vg0/disk0',
      active: true,
      created: false,
    });
    assert.deepEqual(runner.argv(), [VGS, LVS]);
  });

  it('activates its own LV when it is inactive', async () => {
    const { runner, volumes } = managerWith(vgReport(0), lvReport(lv('disk0', 12 * MiB, TAG, '')), ok());
    const volume = await volumes.ensureVolume(request);
    assert.equal(volume.active, true);
    assert.equal(volume.sizeBytes, 12 * MiB);
    assert.deepEqual(runner.argv()[2], ['lvchange', '--activate', 'y', 'vg0/disk0']);
  });

  it('refuses an untagged LV of the same name and leaves it alone', async () => {
    const { runner, volumes } = managerWith(vgReport(60 * MiB), lvReport(lv('disk0', 8 * MiB, 'keep')));
    await assert.rejects(
      volumes.ensureVolume(request),
      pipelineError(
        'VolumeConflict',
        true,
        /logical volume vg0\/disk0 already exists and carries no lvp\.dev\/uid=<uid> tag/,
        /never touches LVs it did not create/,
      ),
    );
    assert.deepEqual(runner.argv(), [VGS, LVS]);
  });

  it('refuses an LV made for another VolumeProvision', async () => {
    const { runner, volumes } = managerWith(
      vgReport(60 * MiB),
      lvReport(lv('disk0', 8 * MiB, 'lvp.dev/uid=someone-else')),
    );
    await assert.rejects(
      volumes.ensureVolume(request),
      pipelineError(
        'VolumeConflict',
        true,
        /belongs to another VolumeProvision \(tag lvp\.dev\/uid=someone-else\)/,
      ),
    );
    assert.equal(runner.calls.length, 2);
  });

  it('refuses its own LV when it is smaller than needed', async () => {
    const { volumes } = managerWith(vgReport(60 * MiB), lvReport(lv('disk0', 4 * MiB, TAG)));
    await assert.rejects(
      volumes.ensureVolume(request),
      pipelineError('VolumeSizeMismatch', true, /4194304 bytes, but 8388608 bytes are now needed/),
    );
  });

  it('checks free space before creating anything', async () => {
    const { runner, volumes } = managerWith(vgReport(4 * MiB), lvReport());
    await assert.rejects(
      volumes.ensureVolume(request),
      pipelineError(
        'InsufficientVolumeGroupSpace',
        false,
        /volume group vg0 has 4194304 bytes free, but vg0\/disk0 needs 8388608 bytes \(5000000 requested, rounded up to whole 4194304-byte extents\)/,
      ),
    );
    assert.deepEqual(runner.argv(), [VGS, LVS]);
  });

  it('reports a missing VG before anything else', async () => {
    const { runner, volumes } = managerWith(vgNotFound);
    await assert.rejects(volumes.ensureVolume(request), pipelineError('VolumeGroupNotFound', false));
    assert.equal(runner.calls.length, 1);
  });

  it('passes a failed lvcreate on with LVM’s message', async () => {
    const { volumes } = managerWith(
      vgReport(60 * MiB),
      lvReport(),
      fail(5, '  Logical Volume "disk0" already exists in volume group "vg0"\n'),
    );
    await assert.rejects(
      volumes.ensureVolume(request),
      pipelineError(
        'LvmCommandFailed',
        false,
        /^lvm lvcreate -n disk0 .* failed with exit code 5: Logical Volume "disk0" already exists/,
      ),
    );
  });

  for (const sizeBytes of [0, -1, 1.5, Number.NaN, 2 ** 53]) {
    it(`refuses the size ${sizeBytes} without calling LVM`, async () => {
      const { runner, volumes } = managerWith();
      await assert.rejects(
        volumes.ensureVolume({ ...request, sizeBytes }),
        pipelineError('InvalidVolumeSize', true),
      );
      assert.deepEqual(runner.calls, []);
    });
  }

  it('refuses a reserved LV name without calling LVM', async () => {
    const { runner, volumes } = managerWith();
    await assert.rejects(
      volumes.ensureVolume({ ...request, name: 'snapshot0' }),
      pipelineError('InvalidVolumeName', true),
    );
    assert.deepEqual(runner.calls, []);
  });

  it('refuses an owner UID that cannot be a tag without calling LVM', async () => {
    const { runner, volumes } = managerWith();
    await assert.rejects(
      volumes.ensureVolume({ ...request, ownerUid: 'a,b' }),
      pipelineError('InvalidOwnerUid', true),
    );
    assert.deepEqual(runner.calls, []);
  });
});

describe('LvmVolumeManager.checkVolume', () => {
  const request = { vg: 'vg0', name: 'disk0', sizeBytes: 5_000_000, ownerUid: UID };

  it('passes a free name with one lvs, creating nothing', async () => {
    const { runner, volumes } = managerWith(lvReport(lv('other', 4 * MiB, '')));
    await volumes.checkVolume(request);
    assert.deepEqual(runner.argv(), [LVS]);
  });

  it('passes its own LV, without activating it', async () => {
    const { runner, volumes } = managerWith(lvReport(lv('disk0', 8 * MiB, TAG, '')));
    await volumes.checkVolume(request);
    assert.deepEqual(runner.argv(), [LVS]);
  });

  it('refuses an LV made for another VolumeProvision', async () => {
    const { volumes } = managerWith(lvReport(lv('disk0', 8 * MiB, 'lvp.dev/uid=someone-else')));
    await assert.rejects(
      volumes.checkVolume(request),
      pipelineError('VolumeConflict', true, /belongs to another VolumeProvision/),
    );
  });

  it('refuses an untagged LV of the same name', async () => {
    const { volumes } = managerWith(lvReport(lv('disk0', 8 * MiB, 'keep')));
    await assert.rejects(volumes.checkVolume(request), pipelineError('VolumeConflict', true, /carries no/));
  });

  it('reports a missing VG', async () => {
    const { volumes } = managerWith(vgNotFound);
    await assert.rejects(volumes.checkVolume(request), pipelineError('VolumeGroupNotFound', false));
  });

  it('refuses a size that is not a byte count without calling LVM', async () => {
    const { runner, volumes } = managerWith();
    await assert.rejects(
      volumes.checkVolume({ ...request, sizeBytes: 0 }),
      pipelineError('InvalidVolumeSize', true),
    );
    assert.deepEqual(runner.calls, []);
  });
});

describe('LvmVolumeManager.removeVolume', () => {
  const request = { vg: 'vg0', name: 'disk0', ownerUid: UID };

  it('removes its own LV', async () => {
    const { runner, volumes } = managerWith(lvReport(lv('disk0', 8 * MiB, TAG)), ok());
    assert.equal(await volumes.removeVolume(request), 'removed');
    assert.deepEqual(runner.argv(), [LVS, ['lvremove', '--yes', 'vg0/disk0']]);
  });

  it('does nothing when the LV is already gone', async () => {
    const { runner, volumes } = managerWith(lvReport(lv('disk1', 8 * MiB, TAG)));
    assert.equal(await volumes.removeVolume(request), 'absent');
    assert.deepEqual(runner.argv(), [LVS]);
  });

  it('refuses an LV without its tag', async () => {
    const { runner, volumes } = managerWith(lvReport(lv('disk0', 8 * MiB, '')));
    await assert.rejects(volumes.removeVolume(request), pipelineError('VolumeConflict', true, /vg0\/disk0/));
    assert.deepEqual(runner.argv(), [LVS]);
  });

  it('passes on an LV that LVM will not remove (in use)', async () => {
    const { volumes } = managerWith(
      lvReport(lv('disk0', 8 * MiB, TAG)),
      fail(5, '  Logical volume vg0/disk0 in use.\n'),
    );
    await assert.rejects(
      volumes.removeVolume(request),
      pipelineError(
        'LvmCommandFailed',
        false,
        /lvm lvremove --yes vg0\/disk0 failed with exit code 5: Logical volume vg0\/disk0 in use\./,
      ),
    );
  });

  it('reports a missing VG as VolumeGroupNotFound', async () => {
    const { volumes } = managerWith(vgNotFound);
    await assert.rejects(volumes.removeVolume(request), pipelineError('VolumeGroupNotFound', false));
  });
});
