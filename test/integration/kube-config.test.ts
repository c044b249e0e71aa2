// PooledKubeConfig against the real API server: API requests share kept-alive connections, a
// rotated certificate authority gets a new one, and watches still work over the pool.
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CoreV1Api, KubeConfig, Watch } from '@kubernetes/client-node';
import { PooledKubeConfig } from '../../src/k8s/kube-config.ts';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { waitUntil } from '../rig/net.ts';
import { makeWorkDir } from '../rig/workdir.ts';

/** Counts the connections undici opens to `port` while `body` runs. */
async function connectionsOpened(port: string, body: () => Promise<void>): Promise<number> {
  let opened = 0;
  const onConnected = (message: unknown) => {
    const params = (message as { connectParams?: { port?: string } }).connectParams;
    if (params?.port === port) opened += 1;
  };
  subscribe('undici:client:connected', onConnected);
  try {
    await body();
  } finally {
    unsubscribe('undici:client:connected', onConnected);
  }
  return opened;
}

describe('PooledKubeConfig', { timeout: 180_000 }, () => {
  let cluster: KubeControlPlane;
  let workDir: string;
  let port: string;
  /** A copy of the rig's kubeconfig whose CA file the test may rewrite. */
  let kubeconfigPath: string;
  let caPath: string;

  before(async () => {
    workDir = makeWorkDir('kube-config');
    cluster = await startKubeControlPlane(join(workDir, 'kube'));
    const original = JSON.parse(readFileSync(cluster.kubeconfigPath, 'utf8'));
    caPath = join(workDir, 'ca.crt');
    copyFileSync(original.clusters[0].cluster['certificate-authority'], caPath);
    original.clusters[0].cluster['certificate-authority'] = caPath;
    kubeconfigPath = join(workDir, 'kubeconfig');
    writeFileSync(kubeconfigPath, JSON.stringify(original));
    port = new URL(original.clusters[0].cluster.server).port;
  });
  after(async () => {
    await cluster?.stop();
  });

  const load = <T extends KubeConfig>(config: T): T => {
    config.loadFromFile(kubeconfigPath);
    return config;
  };
  const readNamespaces = (config: KubeConfig, times: number) => async () => {
    const core = config.makeApiClient(CoreV1Api);
    for (let i = 0; i < times; i++) await core.readNamespace({ name: 'default' });
  };

  it('opens one connection for requests in turn, where the library alone opens one each', async () => {
    assert.equal(await connectionsOpened(port, readNamespaces(load(new PooledKubeConfig()), 10)), 1);
    // Why PooledKubeConfig exists; once this fails, the library pools by itself.
    assert.equal(await connectionsOpened(port, readNamespaces(load(new KubeConfig()), 10)), 10);
  });

  it('keeps the connections that requests at once opened for the next ones', async () => {
    const config = load(new PooledKubeConfig());
    const core = config.makeApiClient(CoreV1Api);
    const together = async () => {
      await Promise.all([1, 2, 3].map(() => core.readNamespace({ name: 'default' })));
    };
    const first = await connectionsOpened(port, together);
    assert.ok(first >= 1 && first <= 3, `${first} connections for 3 requests`);
    assert.equal(await connectionsOpened(port, together), 0);
  });

  it('connects anew once the CA file changes, and requests still succeed', async () => {
    const config = load(new PooledKubeConfig());
    assert.equal(await connectionsOpened(port, readNamespaces(config, 3)), 1);
    // The same certificate in new bytes, as a rotation that keeps the old CA in the bundle.
    writeFileSync(caPath, `${readFileSync(caPath, 'utf8')}\n`);
    assert.equal(await connectionsOpened(port, readNamespaces(config, 3)), 1);
  });

  it('leaves users of an exec credential plugin unpooled', async () => {
    // The plugin could return a client certificate, which only the library would see.
    const kubeconfig = JSON.parse(readFileSync(kubeconfigPath, 'utf8'));
    const plugin = join(workDir, 'credential-plugin.sh');
    const credential = {
      apiVersion: 'client.authentication.k8s.io/v1',
      kind: 'ExecCredential',
      status: { token: kubeconfig.users[0].user.token },
    };
    writeFileSync(plugin, `#!/bin/sh\necho '${JSON.stringify(credential)}'\n`, { mode: 0o755 });
    kubeconfig.users[0].user = {
      exec: { apiVersion: 'client.authentication.k8s.io/v1', command: plugin, interactiveMode: 'Never' },
    };
    const config = new PooledKubeConfig();
    config.loadFromString(JSON.stringify(kubeconfig));
    assert.equal(await connectionsOpened(port, readNamespaces(config, 3)), 3);
  });

  it('serves a watch and requests beside it', async () => {
    const config = load(new PooledKubeConfig());
    const seen: string[] = [];
    const watch = await new Watch(config).watch(
      '/api/v1/namespaces',
      {},
      (phase, object) => seen.push(`${phase} ${object.metadata?.name}`),
      () => {},
    );
    try {
      const core = config.makeApiClient(CoreV1Api);
      await core.createNamespace({ body: { metadata: { name: 'pooled' } } });
      await waitUntil(async () => seen.includes('ADDED pooled'), {
        what: 'the watch event',
        timeoutMs: 10_000,
      });
      await core.deleteNamespace({ name: 'pooled' });
    } finally {
      watch.abort();
    }
  });
});
