// reflinkCloner on this machine's temporary folder, whatever its file system: what holds on
// every one. XFS, where clones succeed, is in test/integration/reflink.test.ts.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { reflinkCloner } from '../../../src/storage/reflink/reflink.ts';

const dir = mkdtempSync(join(tmpdir(), 'lvp-reflink-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('reflinkCloner', () => {
  it('probes with a file of the given prefix and leaves nothing in either folder', async () => {
    const from = join(dir, 'cache');
    const to = join(dir, 'images');
    mkdirSync(from);
    const cloner = reflinkCloner(from, to, '.partial-');
    assert.equal(typeof (await cloner.supported()), 'boolean');
    assert.deepEqual(readdirSync(from), []);
    assert.deepEqual(readdirSync(to), [], 'the target folder was created, and is empty');
  });

  it('says no, without throwing, when the probe cannot even write its file', async () => {
    const cloner = reflinkCloner(join(dir, 'missing'), join(dir, 'images'), '.partial-');
    assert.equal(await cloner.supported(), false);
  });

  it('throws on a missing source: that is no refusal of the file system', async () => {
    const cloner = reflinkCloner(dir, join(dir, 'images'), '.partial-');
    await assert.rejects(cloner.clone(join(dir, 'no-such-image'), join(dir, 'copy')), { code: 'ENOENT' });
  });
});
