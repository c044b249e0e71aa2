// The bench's CPU meter must count what a tracked process's descendants spent, including those
// that have exited and been reaped, and nothing for a process it does not track.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { CpuMeter } from '../../../bench/cpu.ts';

/**
 * A shell whose grandchild burns CPU and exits (reaped by the child shell, itself reaped by
 * the tracked one); it prints "done" once they are gone, and then waits to be killed.
 */
function burnInGrandchild() {
  const burn = 'let x = 0; for (let i = 0; i < 2e8; i++) x ^= i; if (x === 1) console.log(x);';
  const shell = spawn('sh', ['-c', `sh -c '"$NODE_BIN" -e "${burn}"'; echo done; exec sleep 60`], {
    env: { ...process.env, NODE_BIN: process.execPath },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const done = once(shell.stdout, 'data');
  return { shell, done };
}

describe('CpuMeter', () => {
  it('counts the CPU of exited, reaped descendants of a tracked process', async () => {
    const meter = new CpuMeter();
    const { shell, done } = burnInGrandchild();
    assert.ok(shell.pid);
    meter.track('burner', shell.pid);
    meter.track('gone', 2 ** 22 + 1); // above pid_max's default: never a live process
    const end = meter.start();
    try {
      await done;
      const usage = end();
      const burner = usage.processSeconds.burner ?? 0;
      // 200 million loop iterations take well over 0.05 CPU-seconds anywhere.
      assert.ok(burner >= 0.05, `burner counted ${burner} CPU-s`);
      // The machine ran the burner too (one tick of slack for the two snapshots' rounding).
      assert.ok(usage.machineSeconds >= burner - 0.01, `machine ${usage.machineSeconds} < burner ${burner}`);
      assert.equal(usage.processSeconds.gone, 0);
      assert.ok(meter.cores >= 1);
    } finally {
      shell.kill();
    }
  });
});
