// Runs the real controller (node src/main.ts, or the image's bundle in dist/) against the
// rig's API server, as a separate process so that tests can SIGKILL and restart it, with the
// RBAC the chart grants.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { execa } from 'execa';
import yaml from 'js-yaml';
import { GROUP, VERSION, VOLUME_PROVISION, type VolumeProvision } from '../../src/api/v1alpha1.ts';
import type { KubeControlPlane } from '../rig/kube.ts';
import { freePort, waitUntil } from '../rig/net.ts';
import { ManagedProcess } from '../rig/processes.ts';
import { projectRoot } from '../rig/tools.ts';
import { MANIFESTS_FILE, parseObjects } from './chart/render.ts';

export const CONTROLLER_NAMESPACE = 'lvp-system';
export const CONTROLLER_SERVICE_ACCOUNT = 'libvirt-volume-provisioner';

/** Applies crds/ and waits until the API server serves them. */
export async function installCrds(cluster: KubeControlPlane): Promise<void> {
  await cluster.kubectl(['apply', '--server-side', '-f', join(projectRoot, 'crds')]);
  await cluster.kubectl([
    'wait',
    '--for=condition=Established',
    '--timeout=60s',
    '-f',
    join(projectRoot, 'crds'),
  ]);
}

/** The kinds of manifests/ that make up the controller's identity and permissions. */
const RBAC_KINDS = new Set(['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding']);

/**
 * Grants exactly the RBAC the chart renders (by default manifests/, the chart with its
 * defaults; or `rendered`, a `helm template` output) and returns a kubeconfig holding a token
 * of the chart's ServiceAccount.
 */
export async function controllerKubeconfig(
  cluster: KubeControlPlane,
  rendered = readFileSync(MANIFESTS_FILE, 'utf8'),
): Promise<string> {
  const rbac = parseObjects(rendered).filter((object) => RBAC_KINDS.has(object.kind));
  const account = rbac.find(
    (object) =>
      object.kind === 'ServiceAccount' &&
      object.metadata.name === CONTROLLER_SERVICE_ACCOUNT &&
      object.metadata.namespace === CONTROLLER_NAMESPACE,
  );
  if (!account) {
    throw new Error(
      `the rendered chart must hold the ServiceAccount ${CONTROLLER_NAMESPACE}/${CONTROLLER_SERVICE_ACCOUNT}`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), 'lvp-rbac-'));
  try {
    const file = join(dir, 'rbac.yaml');
    // `helm template` renders no Namespace (manifests/ adds one): the release's must exist.
    const namespace = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: CONTROLLER_NAMESPACE } };
    const objects = rbac.some((object) => object.kind === 'Namespace') ? rbac : [namespace, ...rbac];
    writeFileSync(file, objects.map((object) => yaml.dump(object)).join('---\n'));
    await cluster.kubectl(['apply', '-f', file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return cluster.serviceAccountKubeconfig(CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT);
}

export interface ControllerDirs {
  cacheDir: string;
  stateDir: string;
  fileTargetDir: string;
}

export function controllerDirs(workDir: string): ControllerDirs {
  const dirs = {
    cacheDir: join(workDir, 'cache'),
    stateDir: join(workDir, 'state'),
    fileTargetDir: join(workDir, 'images'),
  };
  for (const dir of Object.values(dirs)) mkdirSync(dir, { recursive: true });
  return dirs;
}

export interface ControllerProcess {
  process: ManagedProcess;
  /** The port its health, readiness and metrics server listens on, at 127.0.0.1. */
  serverPort: number;
  /** The JSON log lines written so far. */
  logs(): Record<string, unknown>[];
}

/**
 * How the container image starts the controller: the Dockerfile's ENTRYPOINT, which runs the
 * bundled dist/main.js (`npm run build`) with the image's V8 flags, and the runtime stage's
 * ENV (one `ENV KEY=value ...` line, as the Dockerfile writes it).
 */
export function imageEntrypoint(): { args: string[]; env: Record<string, string> } {
  const dockerfile = readFileSync(join(projectRoot, 'Dockerfile'), 'utf8');
  const runtimeStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
  const lines = runtimeStage.split('\n');
  const entrypoint = lines.find((text) => text.startsWith('ENTRYPOINT '));
  const command = entrypoint ? (JSON.parse(entrypoint.slice('ENTRYPOINT '.length)) as unknown) : undefined;
  if (!Array.isArray(command) || command[0] !== 'node' || !command.every((arg) => typeof arg === 'string')) {
    throw new Error('the Dockerfile has no exec-form ENTRYPOINT ["node", ...]');
  }
  const env: Record<string, string> = {};
  for (const line of lines.filter((text) => text.startsWith('ENV '))) {
    for (const pair of line.slice('ENV '.length).trim().split(/\s+/)) {
      const match = /^([A-Z_][A-Z0-9_]*)=(\S+)$/.exec(pair);
      if (!match?.[1] || match[2] === undefined) throw new Error(`cannot read the Dockerfile's ${line}`);
      env[match[1]] = match[2];
    }
  }
  return { args: command.slice(1), env };
}

let imageBundle: Promise<unknown> | undefined;

/** `npm run build`'s bundling step (esbuild only; the test command checks types already). */
function buildImageBundle(): Promise<unknown> {
  imageBundle ??= execa(
    join(projectRoot, 'node_modules/.bin/node'),
    [join(projectRoot, 'scripts/build.ts')],
    {
      cwd: projectRoot,
    },
  );
  return imageBundle;
}

export async function startController(options: {
  kubeconfig: string;
  nodeName: string;
  dirs: ControllerDirs;
  logFile: string;
  /**
   * Unless set here, the server listens on 127.0.0.1 only, at a free port (LVP_SERVER_PORT),
   * so that a controller never collides with another's, nor with `npm run local`'s.
   */
  env?: Record<string, string>;
  /**
   * `image` bundles src/ into dist/ (once per test process, so never a stale bundle) and runs
   * it as the container does (see imageEntrypoint); default: src/main.ts.
   */
  entry?: 'source' | 'image';
  /** Runs the controller through another command (the bench's memory cgroup); PID kept. */
  wrap?: (command: string, args: readonly string[]) => { command: string; args: string[] };
}): Promise<ControllerProcess> {
  if (options.entry === 'image') await buildImageBundle();
  const image = options.entry === 'image' ? imageEntrypoint() : undefined;
  const node = join(projectRoot, 'node_modules/.bin/node');
  const nodeArgs = image ? image.args : [join(projectRoot, 'src/main.ts')];
  const serverPort = Number(options.env?.LVP_SERVER_PORT ?? (await freePort()));
  const process_ = new ManagedProcess({
    name: 'controller',
    ...(options.wrap ? options.wrap(node, nodeArgs) : { command: node, args: nodeArgs }),
    cwd: projectRoot,
    env: {
      ...image?.env,
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      KUBECONFIG: options.kubeconfig,
      NODE_NAME: options.nodeName,
      LVP_CACHE_DIR: options.dirs.cacheDir,
      LVP_STATE_DIR: options.dirs.stateDir,
      LVP_FILE_TARGET_DIR: options.dirs.fileTargetDir,
      LVP_STATUS_UPDATE_INTERVAL_SECONDS: '1',
      LOG_LEVEL: 'debug',
      LVP_SERVER_ADDRESS: '127.0.0.1',
      LVP_SERVER_PORT: String(serverPort),
      ...options.env,
    },
    logFile: options.logFile,
  });
  const logs = () =>
    readFileSync(options.logFile, 'utf8')
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  await waitUntil(async () => logs().some((line) => line.message === 'controller started'), {
    what: 'controller start-up',
    timeoutMs: 30_000,
    process: process_,
  });
  return { process: process_, serverPort, logs };
}

/** Typed access to VolumeProvision objects for tests. */
export function volumeProvisions(config: KubeConfig, namespace: string) {
  const api = config.makeApiClient(CustomObjectsApi);
  const resource = { group: GROUP, version: VERSION, plural: VOLUME_PROVISION.plural, namespace };
  return {
    create: async (body: Omit<VolumeProvision, 'apiVersion' | 'kind'>) =>
      (await api.createNamespacedCustomObject({
        ...resource,
        body: { apiVersion: `${GROUP}/${VERSION}`, kind: VOLUME_PROVISION.kind, ...body },
      })) as VolumeProvision,
    get: async (name: string) =>
      (await api.getNamespacedCustomObject({ ...resource, name })) as VolumeProvision,
    list: async () =>
      ((await api.listNamespacedCustomObject(resource)) as { items: VolumeProvision[] }).items,
    delete: (name: string) => api.deleteNamespacedCustomObject({ ...resource, name }),
    /** Polls until `predicate` holds for the object; returns it. */
    async waitFor(
      name: string,
      what: string,
      predicate: (object: VolumeProvision) => boolean,
      timeoutMs = 60_000,
    ) {
      let latest: VolumeProvision | undefined;
      await waitUntil(
        async () => {
          latest = (await api.getNamespacedCustomObject({ ...resource, name })) as VolumeProvision;
          return predicate(latest);
        },
        { what: `${namespace}/${name}: ${what}`, timeoutMs, intervalMs: 100 },
      ).catch((error: unknown) => {
        throw new Error(`${(error as Error).message}\nlast status: ${JSON.stringify(latest?.status)}`);
      });
      return latest as VolumeProvision;
    },
    async waitGone(name: string, timeoutMs = 30_000) {
      await waitUntil(
        async () => {
          try {
            await api.getNamespacedCustomObject({ ...resource, name });
            return false;
          } catch (error) {
            return (error as { code?: number }).code === 404;
          }
        },
        { what: `${namespace}/${name} to be deleted`, timeoutMs, intervalMs: 100 },
      );
    },
  };
}

export const isReady = (object: VolumeProvision): boolean =>
  object.status?.conditions?.some((condition) => condition.type === 'Ready' && condition.status === 'True') ??
  false;
