// LvmVolumeManager against real LVM with device-mapper, inside User-mode Linux. One guest boot
// runs every scenario (fixtures/lvm/volume-scenarios.ts) and records outcomes and what plain
// `lvm` saw; each test below judges one scenario.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { runInUml } from '../rig/uml.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { errorOf, type LvRow, type Outcome, scenarioOf, successValue } from '../support/uml-scenarios.ts';

const MiB = 1024 * 1024;
const VG = 'lvptest';
const OWNER = '3f0b9c1e-5a7d-4e2b-9c8f-1a2b3c4d5e6f';
const OTHER_OWNER = '9a8b7c6d-0000-4111-8222-333344445555';
const TAG = `lvp.dev/uid=${OWNER}`;

interface Device {
  exists: boolean;
  blockDevice?: boolean;
  rdev?: number;
}

let results: Record<string, Record<string, unknown>> = {};

const scenario = (name: string) => scenarioOf(results, name);
const outcomeOf = (result: Record<string, unknown>, key: string) => result[key] as Outcome;
const volumesOf = (result: Record<string, unknown>, key = 'volumes') => result[key] as LvRow[];
const deviceOf = (result: Record<string, unknown>, key = 'device') => result[key] as Device;
const names = (rows: LvRow[]) => rows.map((row) => row.lv_name).sort();

describe('LVM volume manager on real LVM (User-mode Linux)', { timeout: 180_000 }, () => {
  before(async () => {
    const workDir = makeWorkDir('lvm');
    // 64 MiB: a VG of 15 extents of 4 MiB, LVM's default extent size.
    const run = await runInUml({
      workDir,
      script: 'test/integration/fixtures/lvm/volume-scenarios.ts',
      args: [OWNER, OTHER_OWNER],
      disksMiB: [64],
      volumeGroup: VG,
    });
    const file = join(run.outDir, 'scenarios.json');
    results = JSON.parse(readFileSync(file, 'utf8'));
    assert.equal(run.exitCode, 0, `guest script failed:\n${run.stderr}`);
  });

  it('reads the volume group: size, free space, extent size', () => {
    const result = scenario('volume-group');
    const raw = result.raw as Record<string, string>;
    assert.deepEqual(successValue(outcomeOf(result, 'volumeGroup')), {
      name: VG,
      sizeBytes: 60 * MiB,
      freeBytes: 60 * MiB,
      extentSizeBytes: 4 * MiB,
    });
    assert.deepEqual(raw, {
      vg_size: String(60 * MiB),
      vg_free: String(60 * MiB),
      vg_extent_size: String(4 * MiB),
    });
  });

  it('creates a tagged, active LV of the extent-rounded size at /dev/VG/LV', () => {
    const result = scenario('create');
    assert.deepEqual(successValue(outcomeOf(result, 'ensured')), {
      name: 'disk1',
      vg: VG,
      sizeBytes: 8 * MiB, // 5,000,000 bytes rounded up to two 4 MiB extents
      tags: [TAG],
      devicePath: `/dev/${VG}/disk1`,
      active: true,
      created: true,
    });
    const [row, ...others] = volumesOf(result);
    assert.deepEqual(others, []);
    assert.deepEqual(
      { ...row, lv_uuid: undefined },
      {
        lv_name: 'disk1',
        lv_uuid: undefined,
        lv_size: String(8 * MiB),
        lv_tags: TAG,
        lv_active: 'active',
      },
    );
    assert.deepEqual(
      { ...deviceOf(result), rdev: undefined },
      { exists: true, blockDevice: true, rdev: undefined },
    );
  });

  it('reuses the same LV when called again, as after a crash', () => {
    const created = scenario('create');
    const result = scenario('reuse-after-crash');
    const ensured = successValue(outcomeOf(result, 'ensured')) as Record<string, unknown>;
    assert.equal(ensured.created, false);
    assert.equal(ensured.devicePath, `/dev/${VG}/disk1`);
    assert.equal(ensured.sizeBytes, 8 * MiB);
    // No second LV, and the same one (same LV UUID, same device numbers).
    assert.deepEqual(volumesOf(result), volumesOf(created));
    assert.equal(deviceOf(result).rdev, deviceOf(created).rdev);
  });

  it('activates its own LV again when it was left inactive', () => {
    const result = scenario('reuse-inactive');
    assert.equal(deviceOf(result, 'deviceWhileInactive').exists, false);
    const ensured = successValue(outcomeOf(result, 'ensured')) as Record<string, unknown>;
    assert.equal(ensured.created, false);
    assert.equal(ensured.active, true);
    assert.equal(deviceOf(result).blockDevice, true);
    const [row] = volumesOf(result);
    assert.equal(row?.lv_active, 'active');
    assert.equal(row?.lv_uuid, volumesOf(scenario('create'))[0]?.lv_uuid);
  });

  it('finds an LV with its tags, and nothing for a missing one', () => {
    const result = scenario('find');
    assert.deepEqual(successValue(outcomeOf(result, 'found')), {
      name: 'disk1',
      vg: VG,
      sizeBytes: 8 * MiB,
      tags: [TAG],
      devicePath: `/dev/${VG}/disk1`,
      active: true,
    });
    assert.equal(successValue(outcomeOf(result, 'missing')), undefined);
  });

  it('refuses a same-named LV created without the tag, and leaves it untouched', () => {
    const result = scenario('conflict-untagged');
    const message = errorOf(outcomeOf(result, 'ensured'), 'VolumeConflict', true);
    assert.match(
      message,
      new RegExp(`logical volume ${VG}/foreign already exists and carries no lvp.dev/uid=<uid> tag`),
    );
    assert.match(message, /never touches LVs it did not create/);
    assert.deepEqual(volumesOf(result), volumesOf(result, 'volumesBefore'));
    assert.equal(result.marker, 'data-the-controller-must-not-touch');
  });

  it('refuses an LV made for another VolumeProvision', () => {
    const result = scenario('conflict-other-owner');
    const message = errorOf(outcomeOf(result, 'ensured'), 'VolumeConflict', true);
    assert.match(message, new RegExp(`${VG}/disk1 .* belongs to another VolumeProvision \\(tag ${TAG}\\)`));
    assert.deepEqual(volumesOf(result), volumesOf(scenario('conflict-untagged')));
  });

  it('reports insufficient VG space before creating anything', () => {
    const result = scenario('insufficient-space');
    const message = errorOf(outcomeOf(result, 'ensured'), 'InsufficientVolumeGroupSpace', false);
    assert.equal(result.freeBefore, 48 * MiB); // 60 MiB less disk1 (8) and foreign (4)
    assert.match(
      message,
      new RegExp(`volume group ${VG} has ${48 * MiB} bytes free, but ${VG}/huge needs ${1024 * MiB} bytes`),
    );
    assert.deepEqual(names(volumesOf(result)), ['disk1', 'foreign']);
    assert.equal(result.freeAfter, result.freeBefore);
  });

  it('refuses to remove an LV created without the tag', () => {
    const result = scenario('remove-refuses-untagged');
    assert.match(errorOf(outcomeOf(result, 'removed'), 'VolumeConflict', true), new RegExp(`${VG}/foreign`));
    assert.deepEqual(names(volumesOf(result)), ['disk1', 'foreign']);
    assert.equal(result.marker, 'data-the-controller-must-not-touch');
  });

  it('refuses to remove an LV made for another VolumeProvision', () => {
    const result = scenario('remove-refuses-other-owner');
    assert.match(errorOf(outcomeOf(result, 'removed'), 'VolumeConflict', true), new RegExp(`${VG}/disk1`));
    assert.deepEqual(names(volumesOf(result)), ['disk1', 'foreign']);
  });

  it('passes LVM’s refusal to remove an open LV on, with its stderr, to be retried', () => {
    const result = scenario('remove-in-use');
    const message = errorOf(outcomeOf(result, 'removed'), 'LvmCommandFailed', false);
    assert.match(message, new RegExp(`^lvm lvremove --yes ${VG}/disk1 failed with exit code \\d+: .*in use`));
    assert.deepEqual(names(volumesOf(result)), ['disk1', 'foreign']);
  });

  it('removes only its own tagged LV', () => {
    const result = scenario('remove');
    assert.equal(successValue(outcomeOf(result, 'removed')), 'removed');
    assert.deepEqual(names(volumesOf(result)), ['foreign']);
    assert.equal(deviceOf(result).exists, false);
  });

  it('treats removing it a second time as done', () => {
    const result = scenario('remove-again');
    assert.equal(successValue(outcomeOf(result, 'removed')), 'absent');
    assert.deepEqual(names(volumesOf(result)), ['foreign']);
  });

  it('reports a missing volume group as VolumeGroupNotFound from every operation', () => {
    const result = scenario('missing-volume-group');
    for (const operation of ['getVolumeGroup', 'findVolume', 'ensureVolume', 'removeVolume']) {
      const message = errorOf(outcomeOf(result, operation), 'VolumeGroupNotFound', false);
      assert.match(message, /volume group nosuchvg does not exist on this node/, operation);
    }
  });

  it('works through the nsenter prefix a containerised controller uses', () => {
    const result = scenario('nsenter-prefix');
    const ensured = successValue(outcomeOf(result, 'ensured')) as Record<string, unknown>;
    assert.equal(ensured.created, true);
    assert.equal(ensured.devicePath, `/dev/${VG}/via-nsenter`);
    assert.deepEqual(
      volumesOf(result, 'volumesAfterCreate').find((row) => row.lv_name === 'via-nsenter')?.lv_tags,
      TAG,
    );
    assert.equal(successValue(outcomeOf(result, 'removed')), 'removed');
    assert.deepEqual(names(volumesOf(result)), ['foreign']);
  });
});
