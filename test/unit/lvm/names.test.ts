import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PipelineError } from '../../../src/pipeline/types.ts';
import { assertLogicalVolumeName, assertVolumeGroupName, ownerTag } from '../../../src/storage/lvm/names.ts';

const rejectedWith = (reason: string, pattern: RegExp) => (error: unknown) =>
  error instanceof PipelineError && error.reason === reason && error.terminal && pattern.test(error.message);

describe('LVM names', () => {
  for (const name of ['disk0', 'vm-01.root', 'A_b+c', 'x'.repeat(127), '.hidden', 'my_snapshot']) {
    it(`accepts the LV name ${JSON.stringify(name.slice(0, 20))}`, () => assertLogicalVolumeName(name));
  }

  const badLvNames: [string, RegExp][] = [
    ['', /is empty/],
    ['x'.repeat(128), /longer than 127/],
    ['disk 0', /only the characters/],
    ['disk/0', /only the characters/],
    ['dísk', /only the characters/],
    ['-disk', /hyphen/],
    ['.', /reserved/],
    ['..', /reserved/],
    ['snapshot1', /starting with "snapshot"/],
    ['pvmove0', /starting with "pvmove"/],
    ['vm_rimage_0', /containing "_rimage"/],
    ['vm_iorig', /containing "_iorig"/],
    ['vm_wcorig', /containing "_wcorig"/],
    ['vm_tmeta', /containing "_tmeta"/],
  ];
  for (const [name, pattern] of badLvNames) {
    it(`rejects the LV name ${JSON.stringify(name.slice(0, 20))}`, () =>
      assert.throws(() => assertLogicalVolumeName(name), rejectedWith('InvalidVolumeName', pattern)));
  }

  it('says which name is wrong', () =>
    assert.throws(
      () => assertLogicalVolumeName('disk 0'),
      rejectedWith('InvalidVolumeName', /^"disk 0" is not a valid LVM logical volume name: /),
    ));

  it('accepts VG names that are reserved only for LVs', () => {
    assertVolumeGroupName('snapshot');
    assertVolumeGroupName('vg_tmeta');
  });

  for (const [name, pattern] of [
    ['', /is empty/],
    ['-vg', /hyphen/],
    ['..', /reserved/],
    ['vg 0', /only the characters/],
  ] as const) {
    it(`rejects the VG name ${JSON.stringify(name)}`, () =>
      assert.throws(() => assertVolumeGroupName(name), rejectedWith('InvalidVolumeGroupName', pattern)));
  }
});

describe('ownerTag', () => {
  it('stores a Kubernetes UID', () => {
    assert.equal(
      ownerTag('3f0b9c1e-5a7d-4e2b-9c8f-1a2b3c4d5e6f'),
      'lvp.dev/uid=3f0b9c1e-5a7d-4e2b-9c8f-1a2b3c4d5e6f',
    );
  });

  for (const uid of ['', 'a b', 'uid,with,commas', 'ü', 'x'.repeat(1024 - 'lvp.dev/uid='.length + 1)]) {
    it(`refuses the UID ${JSON.stringify(uid.slice(0, 20))}, which LVM could not store as a tag`, () =>
      assert.throws(() => ownerTag(uid), rejectedWith('InvalidOwnerUid', /cannot be stored in an LVM tag/)));
  }

  it('accepts a UID that exactly fills the 1024-character limit', () => {
    assert.equal(ownerTag('x'.repeat(1024 - 'lvp.dev/uid='.length)).length, 1024);
  });
});
