// Real periodic probes behind libvirt_volume_provisioner_dependencies_up: can this node reach
// MinIO, run LVM, talk to libvirt, and write its storage? Each probe is a cheap real call to
// the dependency, bounded by a timeout, so the gauge says what a job would find right now.
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import type { Config } from '../config/config.ts';
import { virshPools } from '../storage/libvirt/virsh.ts';
import { LvmCommand } from '../storage/lvm/command.ts';
import type { Dependency } from './metrics.ts';

/** Resolves true when the dependency answers; false (or a rejection) means down. */
export type Probe = () => Promise<boolean>;

const PROBE_TIMEOUT_MS = 10_000;

/** Any HTTP answer below 500 means the server is there (MinIO answers 200 on this path). */
export function httpAnswers(url: string, timeoutMs = PROBE_TIMEOUT_MS): Probe {
  return async () => {
    const response = await fetch(url, { method: 'GET', signal: AbortSignal.timeout(timeoutMs) });
    await response.body?.cancel();
    return response.status < 500;
  };
}

/** The folder exists and this process may write into it. */
export function writableDir(dir: string): Probe {
  return async () => {
    await access(dir, constants.W_OK | constants.X_OK);
    return true;
  };
}

/**
 * The probes for this node's configuration, each through the same interface the pipeline uses
 * for that dependency. `minio` only when an S3 endpoint is configured.
 */
export function dependencyProbes(
  config: Pick<Config, 's3Endpoint' | 'lvmCommandPrefix' | 'libvirtUri' | 'cacheDir'>,
  storage: Probe = writableDir(config.cacheDir),
): Partial<Record<Dependency, Probe>> {
  const lvm = new LvmCommand({
    ...(config.lvmCommandPrefix ? { prefix: config.lvmCommandPrefix.split(' ') } : {}),
    timeoutMs: PROBE_TIMEOUT_MS,
  });
  const libvirt = virshPools({ uri: config.libvirtUri, timeoutMs: PROBE_TIMEOUT_MS });
  return {
    ...(config.s3Endpoint
      ? { minio: httpAnswers(new URL('/minio/health/live', config.s3Endpoint).toString()) }
      : {}),
    lvm: async () => {
      await lvm.run('version', []);
      return true;
    },
    libvirt: async () => {
      await libvirt.ping();
      return true;
    },
    storage,
  };
}

export interface ProbeLoop {
  /** Resolves after the first round, so the gauge is set before the first scrape matters. */
  firstRound: Promise<void>;
  stop(): void;
}

/** Runs every probe now and then every `intervalMs`, reporting each result. */
export function startProbes(
  probes: Partial<Record<Dependency, Probe>>,
  report: (dependency: Dependency, up: boolean) => void,
  intervalMs: number,
): ProbeLoop {
  const round = () =>
    Promise.all(
      Object.entries(probes).map(async ([dependency, probe]) => {
        let up = false;
        try {
          up = await probe();
        } catch {
          up = false;
        }
        report(dependency as Dependency, up);
      }),
    ).then(() => {});
  const firstRound = round();
  const timer = setInterval(() => void round(), intervalMs);
  timer.unref();
  return { firstRound, stop: () => clearInterval(timer) };
}
