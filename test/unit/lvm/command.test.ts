import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PipelineError } from '../../../src/pipeline/types.ts';
import { LvmCommand, LvmCommandError, parseReport } from '../../../src/storage/lvm/command.ts';
import { fail, fakeRunner, ok, reportJson } from './fake-runner.ts';

/** True while the process exists and is not a zombie waiting to be reaped. */
function isRunning(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

async function waitUntil(condition: () => boolean, failure: string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (condition()) return;
    await sleep(50);
  }
  assert.fail(failure);
}

const NSENTER = ['nsenter', '--target', '1', '--mount', '--uts', '--ipc', '--net', '--pid', '--'];

describe('LvmCommand.run', () => {
  it('runs lvm with an argument array and LC_ALL=C', async () => {
    const runner = fakeRunner(ok('done\n'));
    const lvm = new LvmCommand({ runProcess: runner.run });
    assert.equal(await lvm.run('lvremove', ['--yes', 'vg0/disk one']), 'done\n');
    assert.deepEqual(runner.calls, [
      { file: 'lvm', args: ['lvremove', '--yes', 'vg0/disk one'], env: { LC_ALL: 'C' }, timeoutMs: 120_000 },
    ]);
  });

  it('puts the prefix in front, so the prefix binary is what runs', async () => {
    const runner = fakeRunner(ok());
    const lvm = new LvmCommand({
      prefix: NSENTER,
      lvmPath: '/sbin/lvm',
      timeoutMs: 5_000,
      runProcess: runner.run,
    });
    await lvm.run('lvchange', ['--activate', 'y', 'vg0/a']);
    assert.deepEqual(runner.calls, [
      {
        file: 'nsenter',
        args: [...NSENTER.slice(1), '/sbin/lvm', 'lvchange', '--activate', 'y', 'vg0/a'],
        env: { LC_ALL: 'C' },
        timeoutMs: 5_000,
      },
    ]);
  });

  it('fails with the command and LVM’s trimmed stderr, to be retried', async () => {
    const runner = fakeRunner(fail(5, '  Volume group "vg9" not found\n  Cannot process volume group vg9\n'));
    const lvm = new LvmCommand({ prefix: NSENTER, runProcess: runner.run });
    const error = await lvm.run('vgs', ['vg9']).then(
      () => assert.fail('expected a failure'),
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof LvmCommandError);
    assert.ok(error instanceof PipelineError);
    assert.equal(error.reason, 'LvmCommandFailed');
    assert.equal(error.terminal, false);
    assert.equal(error.exitCode, 5);
    assert.equal(error.stderr, 'Volume group "vg9" not found\nCannot process volume group vg9');
    assert.deepEqual(error.command, [...NSENTER, 'lvm', 'vgs', 'vg9']);
    assert.equal(
      error.message,
      'nsenter --target 1 --mount --uts --ipc --net --pid -- lvm vgs vg9 failed with exit code 5: ' +
        'Volume group "vg9" not found\nCannot process volume group vg9',
    );
  });

  it('reports a process that could not run, with the reason', async () => {
    const runner = fakeRunner(new Error('spawn lvm ENOENT'));
    const lvm = new LvmCommand({ runProcess: runner.run });
    await assert.rejects(lvm.run('vgs', []), (error: unknown) => {
      assert.ok(error instanceof LvmCommandError);
      assert.equal(error.exitCode, undefined);
      assert.equal(error.message, 'lvm vgs could not run: spawn lvm ENOENT');
      return true;
    });
  });
});

describe('LvmCommand.report', () => {
  it('asks for a JSON report in plain bytes and returns the requested fields', async () => {
    const runner = fakeRunner(
      ok(reportJson('vg', [{ vg_name: 'vg0', vg_free: '4194304', vg_uuid: 'ignored' }])),
    );
    const lvm = new LvmCommand({ runProcess: runner.run });
    const rows = await lvm.report('vgs', ['vg_name', 'vg_free'], ['vg0']);
    assert.deepEqual(rows, [{ vg_name: 'vg0', vg_free: '4194304' }]);
    assert.deepEqual(runner.argv(), [
      ['vgs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'vg_name,vg_free', 'vg0'],
    ]);
  });

  it('names the command when the report cannot be read', async () => {
    const runner = fakeRunner(ok('  WARNING: something\n{'));
    const lvm = new LvmCommand({ prefix: ['nsenter', '-t', '1', '-m', '--'], runProcess: runner.run });
    await assert.rejects(lvm.report('lvs', ['lv_name'], ['vg0']), (error: unknown) => {
      assert.ok(error instanceof PipelineError);
      assert.equal(error.reason, 'LvmReportInvalid');
      assert.match(
        error.message,
        /^nsenter -t 1 -m -- lvm lvs --reportformat json .* vg0 printed output that is not JSON/,
      );
      return true;
    });
  });
});

describe('parseReport', () => {
  const command = ['lvm', 'lvs'];
  const parse = (stdout: string) => parseReport(stdout, 'lv', ['lv_name', 'lv_size'], command);
  const rejectsWith = (stdout: string, pattern: RegExp) =>
    assert.throws(
      () => parse(stdout),
      (error: unknown) =>
        error instanceof PipelineError && error.reason === 'LvmReportInvalid' && pattern.test(error.message),
    );

  it('reads rows of every report section', () => {
    const stdout = JSON.stringify({
      report: [{ lv: [{ lv_name: 'a', lv_size: '1' }] }, { lv: [{ lv_name: 'b', lv_size: '2' }] }],
    });
    assert.deepEqual(parse(stdout), [
      { lv_name: 'a', lv_size: '1' },
      { lv_name: 'b', lv_size: '2' },
    ]);
  });

  it('reads an empty report as no rows', () => {
    assert.deepEqual(parse(reportJson('lv', [])), []);
  });

  it('rejects output that is not JSON', () => rejectsWith('Volume group not found', /not JSON/));
  it('rejects JSON without a report list', () => rejectsWith('{"report": {}}', /without a "report" list/));
  it('rejects a section without the expected key', () =>
    rejectsWith('{"report": [{"vg": []}]}', /without a "lv" list/));
  it('rejects a row that is not an object', () =>
    rejectsWith('{"report": [{"lv": ["a"]}]}', /not an object/));
  it('rejects a row missing a field', () =>
    rejectsWith('{"report": [{"lv": [{"lv_name": "a"}]}]}', /without the string field\(s\) lv_size/));
  it('rejects a field that is not a string', () =>
    rejectsWith('{"report": [{"lv": [{"lv_name": "a", "lv_size": 1}]}]}', /lv_size/));
});

describe('the default process runner (real processes)', () => {
  it('passes arguments without a shell and sets LC_ALL=C', async () => {
    // The prefix stands in for nsenter: it prints what it received instead of running lvm.
    const lvm = new LvmCommand({ prefix: ['sh', '-c', 'printf "%s|" "$LC_ALL" "$@"', 'sh'] });
    assert.equal(await lvm.run('lvcreate', ['$(touch /x)', 'a b', '*']), 'C|lvm|lvcreate|$(touch /x)|a b|*|');
  });

  it('returns a non-zero exit code with stderr', async () => {
    const lvm = new LvmCommand({ prefix: ['sh', '-c', 'echo "  Oops  " >&2; exit 3', 'sh'] });
    await assert.rejects(lvm.run('vgs', []), (error: unknown) => {
      assert.ok(error instanceof LvmCommandError);
      assert.equal(error.exitCode, 3);
      assert.equal(error.stderr, 'Oops');
      return true;
    });
  });

  it('kills a command that hangs, with the children it forked', { timeout: 20_000 }, async () => {
    // Like nsenter --pid, the shell forks the real work; the child keeps stdout open.
    const dir = mkdtempSync(join(tmpdir(), 'lvm-timeout-'));
    after(() => rmSync(dir, { recursive: true, force: true }));
    const pidFile = join(dir, 'child.pid');
    const script = `sleep 30 & echo $! > ${pidFile}; wait`;
    const lvm = new LvmCommand({ prefix: ['sh', '-c', script, 'sh'], timeoutMs: 300 });
    await assert.rejects(lvm.run('vgs', []), (error: unknown) => {
      assert.ok(error instanceof LvmCommandError);
      assert.equal(error.exitCode, undefined);
      assert.match(error.message, /^sh -c .* lvm vgs could not run: timed out after 300 ms and was killed$/);
      return true;
    });
    const child = Number(readFileSync(pidFile, 'utf8'));
    await waitUntil(() => !isRunning(child), `forked child ${child} is still running`);
  });

  it('reports a missing lvm binary', async () => {
    const lvm = new LvmCommand({ lvmPath: '/nonexistent/lvm' });
    await assert.rejects(lvm.run('vgs', []), /\/nonexistent\/lvm vgs could not run: .*ENOENT/);
  });
});
