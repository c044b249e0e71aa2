// The libvirt pool refresh through the real virsh, against libvirt's built-in test driver.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PipelineError } from '../../src/pipeline/types.ts';
import { virshPools } from '../../src/storage/libvirt/virsh.ts';

describe('libvirt pools through virsh', () => {
  it('refreshes an existing pool', async () => {
    await virshPools({ uri: 'test:///default' }).refresh('default-pool');
  });

  it('names the pool and the reason when the pool does not exist', async () => {
    await assert.rejects(virshPools({ uri: 'test:///default' }).refresh('no-such-pool'), (error: unknown) => {
      assert.ok(error instanceof PipelineError);
      assert.equal(error.reason, 'LibvirtPoolRefreshFailed');
      assert.equal(error.terminal, false);
      assert.match(error.message, /no-such-pool/);
      assert.match(error.message, /Storage pool not found/i);
      return true;
    });
  });

  it('says clearly when libvirt is unreachable', async () => {
    const uri = 'qemu+unix:///system?socket=/nonexistent/libvirt-sock';
    await assert.rejects(
      virshPools({ uri }).refresh('default'),
      /could not refresh libvirt pool "default" at .*Failed to connect/s,
    );
    await assert.rejects(virshPools({ uri }).ping(), /libvirt at .* does not answer: .*Failed to connect/s);
  });

  it('answers a ping when libvirt is reachable', async () => {
    await virshPools({ uri: 'test:///default' }).ping();
  });
});
