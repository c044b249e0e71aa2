// The scale scenario: many VolumeProvision objects spread over many node names in the real API
// server, with this node's controller running as the container runs it. It measures how fast
// the controller acknowledges its own objects, what it costs the API server, and that it never
// sees the other nodes' objects.
import { join } from 'node:path';
import { type KubeConfig, type KubernetesObject, Watch } from '@kubernetes/client-node';
import type { VolumeProvision } from '../src/api/v1alpha1.ts';
import { SETTINGS } from '../src/config/config.ts';
import type { KubeControlPlane } from '../test/rig/kube.ts';
import {
  CONTROLLER_NAMESPACE,
  CONTROLLER_SERVICE_ACCOUNT,
  controllerDirs,
  isReady,
  startController,
  volumeProvisions,
} from '../test/support/controller.ts';
import { percentile, round } from './stats.ts';
import { peakRss } from './timing.ts';
import { type OverBudgetJob, overWriteBudget, type SeenStatus } from './write-budget.ts';

export interface ScaleContext {
  admin: KubeConfig;
  cluster: KubeControlPlane;
  /** The kubeconfig of the chart's ServiceAccount, which the controller runs with. */
  kubeconfig: string;
  s3Endpoint: string;
  namespace: string;
  /** This controller's node; the other node names are made up around it. */
  nodeName: string;
  /** An s3:// URL the Secret `minio` in `namespace` can read, and its format. */
  source: { url: string; format: 'qcow2' | 'raw' };
  targetBytes: number;
  workDir: string;
}

export interface ScaleResult {
  objects: number;
  nodes: number;
  jobsOnThisNode: number;
  /** Create (the API server's answer) → first status with a stage (Queued, or later for jobs that start at once). */
  acknowledgeP50Seconds: number;
  acknowledgeP99Seconds: number;
  apiRequestsPerJob: number;
  statusWritesPerJob: number;
  /** Jobs whose status writes exceeded one per stage change plus one per coalescing interval. */
  jobsOverStatusWriteBudget: number;
  /** Those jobs in detail, to tell why: the statuses the watch saw, and each write's answer. */
  overBudgetJobs: OverBudgetJob[];
  peakRssMB: number;
  informerReceived: number;
  /** What a watch with this node's field selector delivered: the most the informer should get. */
  ownWatchEvents: number;
  /** The controller's lists and watches of VolumeProvisions without this node's field selector. */
  unfilteredReads: number;
  otherNodesObjectsTouched: number;
  pass: boolean;
}

const CREATE_CONCURRENCY = 25;
/**
 * The product's default coalescing interval. startController sets 1 s for the tests; the
 * bench's controllers run with the default, as a deployment does.
 */
export const STATUS_INTERVAL_SECONDS = Number(
  SETTINGS.find((setting) => setting.key === 'statusUpdateIntervalSeconds')?.default,
);
if (!(STATUS_INTERVAL_SECONDS > 0)) throw new Error('the configuration has no default status interval');

export async function scaleScenario(ctx: ScaleContext, objects: number, nodes: number): Promise<ScaleResult> {
  const nodeNames = Array.from({ length: nodes }, (_, index) =>
    index === 0 ? ctx.nodeName : `${ctx.nodeName}-other-${String(index).padStart(2, '0')}`,
  );
  const controller = await startController({
    kubeconfig: ctx.kubeconfig,
    nodeName: ctx.nodeName,
    dirs: controllerDirs(join(ctx.workDir, 'scale')),
    logFile: join(ctx.workDir, 'scale.log'),
    entry: 'image',
    env: {
      LVP_S3_ENDPOINT: ctx.s3Endpoint,
      LVP_STATUS_UPDATE_INTERVAL_SECONDS: String(STATUS_INTERVAL_SECONDS),
      LOG_LEVEL: 'info',
    },
  });
  const path = `/apis/lvp.dev/v1alpha1/namespaces/${ctx.namespace}/volumeprovisions`;
  const createdAt = new Map<string, number>();
  const acknowledgedAt = new Map<string, number>();
  const readyAt = new Map<string, number>();
  const seen = new Map<string, SeenStatus[]>();
  let ownWatchEvents = 0;
  let watchError: unknown;
  const startWatch = () =>
    new Watch(ctx.admin).watch(
      path,
      { fieldSelector: `spec.nodeName=${ctx.nodeName}` },
      (_phase: string, object: KubernetesObject) => {
        ownWatchEvents += 1;
        const vp = object as VolumeProvision;
        const name = vp.metadata?.name ?? '';
        const stage = vp.status?.stage;
        if (!stage) return;
        const now = performance.now();
        if (!acknowledgedAt.has(name)) acknowledgedAt.set(name, now);
        const queuePosition = vp.status?.queuePosition;
        seen.set(name, [...(seen.get(name) ?? []), queuePosition ? { stage, queuePosition } : { stage }]);
        if (isReady(vp) && !readyAt.has(name)) readyAt.set(name, now);
      },
      (error: unknown) => {
        watchError = error ?? new Error('the watch ended');
      },
    );
  // run.ts has waited until the API server serves these watches (untilWatchable).
  const watch = await startWatch();

  const auditStart = ctx.cluster.auditEvents().length;
  const vps = volumeProvisions(ctx.admin, ctx.namespace);
  const names = Array.from({ length: objects }, (_, index) => `scale-${index}`);
  const nodeOf = (index: number) => nodeNames[index % nodes] as string;
  let next = 0;
  const creator = async () => {
    for (let index = next++; index < objects; index = next++) {
      const name = names[index] as string;
      await vps.create({
        metadata: { name },
        spec: {
          nodeName: nodeOf(index),
          source: { ...ctx.source, secretRef: { name: 'minio' } },
          target: { type: 'file', volumeName: `${name}.img`, size: ctx.targetBytes },
          reclaimPolicy: 'Delete',
        },
      });
      if (nodeOf(index) === ctx.nodeName) createdAt.set(name, performance.now());
    }
  };
  await Promise.all(Array.from({ length: CREATE_CONCURRENCY }, creator));
  const mine = [...createdAt.keys()];
  const deadline = performance.now() + 15 * 60_000;
  while (readyAt.size < mine.length) {
    controller.process.assertRunning();
    if (watchError) throw new Error(`scale: the bench's watch failed: ${String(watchError)}`);
    if (performance.now() > deadline)
      throw new Error(`scale: ${readyAt.size}/${mine.length} Ready after 15 min`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  // Let the last writes and their watch events land before counting.
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  watch.abort();

  const username = `system:serviceaccount:${CONTROLLER_NAMESPACE}:${CONTROLLER_SERVICE_ACCOUNT}`;
  const requests = ctx.cluster
    .auditEvents()
    .slice(auditStart)
    .filter((event) => event.user.username === username);
  const statusWrites = new Map<string, number[]>();
  for (const event of requests) {
    const ref = event.objectRef;
    if (
      event.verb === 'patch' &&
      ref?.resource === 'volumeprovisions' &&
      ref.subresource === 'status' &&
      ref.name
    )
      statusWrites.set(ref.name, [...(statusWrites.get(ref.name) ?? []), event.responseStatus?.code ?? 0]);
  }
  const unfilteredReads = requests.filter(
    (event) =>
      (event.verb === 'list' || event.verb === 'watch') &&
      event.objectRef?.resource === 'volumeprovisions' &&
      !event.requestURI.includes(`fieldSelector=spec.nodeName%3D${encodeURIComponent(ctx.nodeName)}`),
  ).length;
  const overBudget = mine.flatMap((name) => {
    const seconds = ((readyAt.get(name) ?? 0) - (createdAt.get(name) ?? 0)) / 1000;
    const job = { name, seconds, seen: seen.get(name) ?? [], writes: statusWrites.get(name) ?? [] };
    return overWriteBudget(job, STATUS_INTERVAL_SECONDS) ?? [];
  });
  const metrics = await (await fetch(`http://127.0.0.1:${controller.serverPort}/metrics`)).text();
  const informerReceived = [
    ...metrics.matchAll(
      /^libvirt_volume_provisioner_informer_received_objects_total\{resource="volumeprovisions",source="\w+"\} (\d+)$/gm,
    ),
  ].reduce((sum, match) => sum + Number(match[1]), 0);
  const peak = await peakRss(controller.process.pid);
  await controller.process.stop();

  const otherNodesObjectsTouched = (await vps.list()).filter(
    (object) =>
      object.spec.nodeName !== ctx.nodeName &&
      (object.status !== undefined || (object.metadata?.finalizers ?? []).length > 0),
  ).length;

  const acknowledge = mine.map(
    (name) => ((acknowledgedAt.get(name) ?? Number.NaN) - (createdAt.get(name) ?? 0)) / 1000,
  );
  const result = {
    objects,
    nodes,
    jobsOnThisNode: mine.length,
    acknowledgeP50Seconds: round(percentile(acknowledge, 50)),
    acknowledgeP99Seconds: round(percentile(acknowledge, 99)),
    apiRequestsPerJob: round(requests.length / mine.length, 1),
    statusWritesPerJob: round(
      [...statusWrites.values()].reduce((sum, writes) => sum + writes.length, 0) / mine.length,
      1,
    ),
    jobsOverStatusWriteBudget: overBudget.length,
    overBudgetJobs: overBudget,
    peakRssMB: round(peak / 1e6, 1),
    informerReceived,
    ownWatchEvents,
    unfilteredReads,
    otherNodesObjectsTouched,
  };
  return {
    ...result,
    pass:
      result.acknowledgeP99Seconds < 1 &&
      informerReceived <= ownWatchEvents &&
      unfilteredReads === 0 &&
      otherNodesObjectsTouched === 0 &&
      overBudget.length === 0,
  };
}
