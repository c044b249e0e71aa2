// libvirt behind one small interface: the provisioner only asks a storage pool to refresh,
// so a new volume shows up in `virsh vol-list` at once; the dependency probe asks whether
// libvirt answers at all.
import { execa } from 'execa';
import { PipelineError } from '../../pipeline/types.ts';

export interface LibvirtPools {
  refresh(pool: string): Promise<void>;
  /** Resolves when libvirt answers on the connection URI; rejects with its reason otherwise. */
  ping(): Promise<void>;
}

export function virshPools(options: { uri: string; binary?: string; timeoutMs?: number }): LibvirtPools {
  /** Runs virsh on the configured connection; resolves to its error text, or undefined on success. */
  const virsh = async (args: readonly string[], timeoutMs: number): Promise<string | undefined> => {
    const result = await execa(options.binary ?? 'virsh', ['--connect', options.uri, ...args], {
      env: { LC_ALL: 'C' },
      reject: false,
      timeout: timeoutMs,
      stdin: 'ignore',
    });
    if (result.exitCode === 0) return undefined;
    return String(result.stderr || result.stdout || result.message || `exit code ${result.exitCode}`)
      .trim()
      .slice(0, 500);
  };
  return {
    async refresh(pool) {
      const failure = await virsh(['pool-refresh', '--pool', pool], options.timeoutMs ?? 60_000);
      if (failure === undefined) return;
      // Not terminal: libvirtd may be restarting, or the pool may be defined later.
      throw new PipelineError(
        'LibvirtPoolRefreshFailed',
        `could not refresh libvirt pool "${pool}" at ${options.uri}: ${failure}`,
        { terminal: false },
      );
    },
    async ping() {
      const failure = await virsh(['uri'], options.timeoutMs ?? 10_000);
      if (failure !== undefined) throw new Error(`libvirt at ${options.uri} does not answer: ${failure}`);
    },
  };
}
