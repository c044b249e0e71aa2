// Timing of whole commands and of VolumeProvision objects through the real controller.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { type KubeConfig, type KubernetesObject, Watch } from '@kubernetes/client-node';
import type { VolumeProvision } from '../src/api/v1alpha1.ts';

const run = promisify(execFile);

/** Seconds a command takes, from spawn to exit. */
export async function timeCommand(command: string, args: readonly string[]): Promise<number> {
  const started = performance.now();
  await run(command, [...args], { maxBuffer: 16 << 20 });
  return (performance.now() - started) / 1000;
}

/**
 * Resolves with the object once `predicate` holds, observed through a watch (no polling),
 * the time it was seen, and when each stage was first seen (every stage change is its own
 * status write, so the watch sees each one); rejects if the object reaches stage Failed.
 */
export function watchUntil(
  config: KubeConfig,
  namespace: string,
  name: string,
  predicate: (object: VolumeProvision) => boolean,
  timeoutMs: number,
): Promise<{ object: VolumeProvision; at: number; stagesAt: ReadonlyMap<string, number> }> {
  return new Promise((resolve, reject) => {
    let controller: AbortController | undefined;
    const stagesAt = new Map<string, number>();
    const timer = setTimeout(
      () => finish(new Error(`${namespace}/${name} not done after ${timeoutMs} ms`)),
      timeoutMs,
    );
    const finish = (error?: Error, object?: VolumeProvision) => {
      clearTimeout(timer);
      controller?.abort();
      if (error) reject(error);
      else resolve({ object: object as VolumeProvision, at: performance.now(), stagesAt });
    };
    void new Watch(config)
      .watch(
        `/apis/lvp.dev/v1alpha1/namespaces/${namespace}/volumeprovisions`,
        { fieldSelector: `metadata.name=${name}` },
        (_phase: string, object: KubernetesObject) => {
          const vp = object as VolumeProvision;
          const stage = vp.status?.stage;
          if (stage !== undefined && !stagesAt.has(stage)) stagesAt.set(stage, performance.now());
          if (stage === 'Failed') finish(new Error(`${name} failed: ${vp.status?.message}`));
          else if (predicate(vp)) finish(undefined, vp);
        },
        (error: unknown) => {
          if (error) finish(error instanceof Error ? error : new Error(String(error)));
        },
      )
      .then((started) => {
        controller = started;
      }, finish);
  });
}

/**
 * Waits until the API server serves watches of VolumeProvisions in `namespace`: for a while
 * after a CRD is established it answers them with 429, and a measured watch must not be late.
 */
export async function untilWatchable(
  config: KubeConfig,
  namespace: string,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      const started = await new Watch(config).watch(
        `/apis/lvp.dev/v1alpha1/namespaces/${namespace}/volumeprovisions`,
        {},
        () => {},
        () => {},
      );
      started.abort();
      return;
    } catch (error) {
      const status = (error as { statusCode?: unknown }).statusCode;
      if (status !== 429 || performance.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

/** The peak resident set size of a process so far (VmHWM), in bytes. */
export const peakRss = (pid: number) => statusBytes(pid, 'VmHWM');
/** The resident set size of a process now (VmRSS), in bytes. */
export const residentRss = (pid: number) => statusBytes(pid, 'VmRSS');

async function statusBytes(pid: number, field: 'VmHWM' | 'VmRSS'): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
  if (!match?.[1]) throw new Error(`no ${field} for pid ${pid}`);
  return Number(match[1]) * 1024;
}
