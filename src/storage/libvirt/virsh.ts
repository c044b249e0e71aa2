// libvirt behind one small interface: the provisioner only asks a storage pool to refresh,
// so a new volume shows up in `virsh vol-list` at once.
import { execa } from 'execa';
import { PipelineError } from '../../pipeline/types.ts';

export interface LibvirtPools {
  refresh(pool: string): Promise<void>;
}

export function virshPools(options: { uri: string; binary?: string; timeoutMs?: number }): LibvirtPools {
  return {
    async refresh(pool) {
      const result = await execa(
        options.binary ?? 'virsh',
        ['--connect', options.uri, 'pool-refresh', '--pool', pool],
        {
          env: { LC_ALL: 'C' },
          reject: false,
          timeout: options.timeoutMs ?? 60_000,
        },
      );
      if (result.exitCode === 0) return;
      const detail = String(
        result.stderr || result.stdout || result.message || `exit code ${result.exitCode}`,
      )
        .trim()
        .slice(0, 500);
      // Not terminal: libvirtd may be restarting, or the pool may be defined later.
      throw new PipelineError(
        'LibvirtPoolRefreshFailed',
        `could not refresh libvirt pool "${pool}" at ${options.uri}: ${detail}`,
        { terminal: false },
      );
    },
  };
}
