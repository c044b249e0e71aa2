// A real Kubernetes control plane for tests: etcd plus kube-apiserver on loopback, the way
// envtest runs them (no kubelet, no controllers). It has an admin token user and can mint
// ServiceAccount tokens, so code can also be tested with only the RBAC it is granted.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { makeServerCertificate } from './certs.ts';
import { freePort, httpStatus, waitUntil } from './net.ts';
import { ManagedProcess } from './processes.ts';
import { goTool, systemTool } from './tools.ts';

const run = promisify(execFile);

export interface KubeControlPlane {
  readonly server: string;
  readonly caFile: string;
  /** Kubeconfig of a `system:masters` token user. */
  readonly kubeconfigPath: string;
  readonly workDir: string;
  adminConfig(): KubeConfig;
  /** A kubeconfig that authenticates as the ServiceAccount, which is created if missing. */
  serviceAccountKubeconfig(namespace: string, name: string): Promise<string>;
  /** Requests the API server has served so far, from its audit log (level Metadata). */
  auditEvents(): AuditEvent[];
  /** Runs the rig's kubectl against this cluster as admin (or with `kubeconfig`). */
  kubectl(args: readonly string[], kubeconfig?: string): Promise<{ stdout: string; stderr: string }>;
  stopApiserver(): Promise<void>;
  startApiserver(): Promise<void>;
  stop(): Promise<void>;
}

export interface AuditEvent {
  verb: string;
  requestURI: string;
  user: { username: string };
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string };
  responseStatus?: { code?: number };
}

function kubeconfigJson(server: string, caFile: string, user: string, token: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'rig', cluster: { server, 'certificate-authority': caFile } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: 'rig', context: { cluster: 'rig', user } }],
    'current-context': 'rig',
  });
}

export async function startKubeControlPlane(workDir: string): Promise<KubeControlPlane> {
  mkdirSync(workDir, { recursive: true });
  const certs = await makeServerCertificate(workDir, {
    commonName: 'kube-apiserver',
    dnsNames: ['kubernetes.default.svc'],
  });
  const saKey = join(workDir, 'sa.key');
  await run(systemTool('openssl'), ['genrsa', '-out', saKey, '2048']);
  const adminToken = randomBytes(24).toString('hex');
  const tokenFile = join(workDir, 'tokens.csv');
  writeFileSync(tokenFile, `${adminToken},rig-admin,rig-admin,"system:masters"\n`, { mode: 0o600 });

  const etcdClientPort = await freePort();
  const etcdPeerPort = await freePort();
  const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
  const etcd = new ManagedProcess({
    name: 'etcd',
    command: goTool('etcd'),
    args: [
      '--name=rig',
      `--data-dir=${join(workDir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
      `--initial-cluster=rig=http://127.0.0.1:${etcdPeerPort}`,
      '--unsafe-no-fsync',
      '--log-level=warn',
    ],
    logFile: join(workDir, 'etcd.log'),
  });
  await waitUntil(async () => (await httpStatus(`${etcdUrl}/health`)) === 200, {
    what: 'etcd',
    timeoutMs: 30_000,
    process: etcd,
  });

  const port = await freePort();
  const server = `https://127.0.0.1:${port}`;
  const kubeconfigPath = join(workDir, 'admin.kubeconfig');
  writeFileSync(kubeconfigPath, kubeconfigJson(server, certs.ca, 'rig-admin', adminToken), { mode: 0o600 });
  const auditLog = join(workDir, 'audit.log');
  writeFileSync(
    join(workDir, 'audit-policy.json'),
    JSON.stringify({
      apiVersion: 'audit.k8s.io/v1',
      kind: 'Policy',
      omitStages: ['RequestReceived'],
      rules: [{ level: 'Metadata' }],
    }),
  );
  const apiserverArgs = [
    `--audit-policy-file=${join(workDir, 'audit-policy.json')}`,
    `--audit-log-path=${auditLog}`,
    '--audit-log-mode=blocking',
    `--etcd-servers=${etcdUrl}`,
    '--bind-address=127.0.0.1',
    '--advertise-address=127.0.0.1',
    `--secure-port=${port}`,
    `--cert-dir=${workDir}`,
    `--tls-cert-file=${certs.cert}`,
    `--tls-private-key-file=${certs.key}`,
    '--service-cluster-ip-range=10.0.0.0/24',
    '--service-account-issuer=https://kubernetes.default.svc',
    `--service-account-key-file=${saKey}`,
    `--service-account-signing-key-file=${saKey}`,
    '--authorization-mode=RBAC',
    `--token-auth-file=${tokenFile}`,
    '--disable-admission-plugins=ServiceAccount',
    '--allow-privileged=true',
  ];

  let apiserver: ManagedProcess | undefined;
  const adminConfig = (): KubeConfig => {
    const config = new KubeConfig();
    config.loadFromFile(kubeconfigPath);
    return config;
  };

  const startApiserver = async (): Promise<void> => {
    if (apiserver?.running) return;
    const started = new ManagedProcess({
      name: 'kube-apiserver',
      command: goTool('kube-apiserver'),
      args: apiserverArgs,
      logFile: join(workDir, 'kube-apiserver.log'),
    });
    apiserver = started;
    const ca = readFileSync(certs.ca);
    await waitUntil(
      async () =>
        (await httpStatus(`${server}/readyz`, { ca, headers: { authorization: `Bearer ${adminToken}` } })) ===
        200,
      { what: 'kube-apiserver', timeoutMs: 90_000, intervalMs: 250, process: started },
    );
  };

  const stopApiserver = async (): Promise<void> => {
    await apiserver?.stop();
  };

  const kubectl = async (args: readonly string[], kubeconfig = kubeconfigPath) =>
    run(goTool('kubectl'), [...args], {
      env: { ...process.env, KUBECONFIG: kubeconfig },
      maxBuffer: 64 << 20,
    });

  const serviceAccountKubeconfig = async (namespace: string, name: string): Promise<string> => {
    const core = adminConfig().makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } }).catch(ignoreConflict);
    await core
      .createNamespacedServiceAccount({ namespace, body: { metadata: { name } } })
      .catch(ignoreConflict);
    const request = await core.createNamespacedServiceAccountToken({
      name,
      namespace,
      body: { spec: { audiences: ['https://kubernetes.default.svc'], expirationSeconds: 24 * 3600 } },
    });
    const token = request.status?.token;
    if (!token) throw new Error(`TokenRequest for ${namespace}/${name} returned no token`);
    const path = join(workDir, `sa-${namespace}-${name}.kubeconfig`);
    writeFileSync(
      path,
      kubeconfigJson(server, certs.ca, `system:serviceaccount:${namespace}:${name}`, token),
      {
        mode: 0o600,
      },
    );
    return path;
  };

  try {
    await startApiserver();
  } catch (error) {
    await apiserver?.stop();
    await etcd.stop();
    throw error;
  }

  const auditEvents = (): AuditEvent[] => {
    let text = '';
    try {
      text = readFileSync(auditLog, 'utf8');
    } catch {
      return [];
    }
    return text
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as AuditEvent);
  };

  return {
    server,
    caFile: certs.ca,
    auditEvents,
    kubeconfigPath,
    workDir,
    adminConfig,
    serviceAccountKubeconfig,
    kubectl,
    stopApiserver,
    startApiserver,
    async stop() {
      await stopApiserver();
      await etcd.stop();
    },
  };
}

function ignoreConflict(error: unknown): void {
  if (typeof error === 'object' && error !== null && 'code' in error && error.code === 409) return;
  throw error;
}
