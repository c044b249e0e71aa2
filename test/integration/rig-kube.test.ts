// Proves the rig's real control plane: CRDs, custom objects, watches, RBAC and tokens.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { setTimeout } from 'node:timers/promises';
import {
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type KubernetesObject,
  VersionApi,
  Watch,
} from '@kubernetes/client-node';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { waitUntil } from '../rig/net.ts';
import { versions } from '../rig/tools.ts';
import { makeWorkDir } from '../rig/workdir.ts';

const crd = JSON.parse(readFileSync(new URL('fixtures/smoke-crd.json', import.meta.url), 'utf8'));
const group = 'rig.lvp.dev';
const plural = 'smokes';
const namespace = 'default';

describe('rig: etcd + kube-apiserver', { timeout: 180_000 }, () => {
  let cluster: KubeControlPlane;
  let config: KubeConfig;

  before(async () => {
    cluster = await startKubeControlPlane(makeWorkDir('kube'));
    config = cluster.adminConfig();
  });
  after(async () => {
    await cluster?.stop();
  });

  it('reports the version it was built as', async () => {
    const info = await config.makeApiClient(VersionApi).getCode();
    assert.equal(info.gitVersion, versions.kubernetes);
  });

  it('applies a CRD, then creates, watches and deletes a custom object', async () => {
    const extensions = config.makeApiClient(ApiextensionsV1Api);
    await extensions.createCustomResourceDefinition({ body: crd });
    await waitUntil(
      async () => {
        const current = await extensions.readCustomResourceDefinition({ name: crd.metadata.name });
        return (
          current.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ?? false
        );
      },
      { what: 'CRD Established', timeoutMs: 30_000 },
    );

    // Right after a CRD is established the watch cache may still be initializing and the
    // API server answers a watch with 429, so start watches until one holds.
    let seen: string[] = [];
    let aborter: AbortController | undefined;
    await waitUntil(
      async () => {
        aborter?.abort();
        const events: string[] = [];
        let ended: unknown;
        aborter = await new Watch(config).watch(
          `/apis/${group}/v1/namespaces/${namespace}/${plural}`,
          {},
          (phase: string, object: KubernetesObject) => events.push(`${phase} ${object.metadata?.name}`),
          (error: unknown) => {
            ended = error ?? 'closed';
          },
        );
        await setTimeout(500);
        seen = events;
        if (ended) throw new Error(`watch ended: ${ended}`);
        return true;
      },
      { what: 'a watch on the new resource', timeoutMs: 30_000 },
    );
    try {
      const objects = config.makeApiClient(CustomObjectsApi);
      const body = {
        apiVersion: `${group}/v1`,
        kind: 'Smoke',
        metadata: { name: 'first' },
        spec: { message: 'hi' },
      };
      await objects.createNamespacedCustomObject({ group, version: 'v1', namespace, plural, body });

      await assert.rejects(
        objects.createNamespacedCustomObject({
          group,
          version: 'v1',
          namespace,
          plural,
          body: { ...body, metadata: { name: 'invalid' }, spec: { message: '' } },
        }),
        (error: { code?: number }) => error.code === 422,
        'the API server validates the schema',
      );

      await objects.deleteNamespacedCustomObject({ group, version: 'v1', namespace, plural, name: 'first' });
      await waitUntil(async () => seen.includes('DELETED first'), {
        what: 'watch events for the custom object',
        timeoutMs: 15_000,
      });
      assert.deepEqual(seen, ['ADDED first', 'DELETED first']);
    } finally {
      aborter?.abort();
    }
  });

  it('mints ServiceAccount tokens that carry only the RBAC they were granted', async () => {
    const kubeconfig = await cluster.serviceAccountKubeconfig('rig-smoke', 'limited');
    const { stdout } = await cluster.kubectl(
      ['auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username}'],
      kubeconfig,
    );
    assert.equal(stdout, 'system:serviceaccount:rig-smoke:limited');

    const limitedConfig = new KubeConfig();
    limitedConfig.loadFromFile(kubeconfig);
    const limited = limitedConfig.makeApiClient(CoreV1Api);
    await assert.rejects(
      limited.listNamespacedSecret({ namespace: 'rig-smoke' }),
      (error: { code?: number }) => error.code === 403,
    );
    const admin = config.makeApiClient(CoreV1Api);
    assert.ok(
      (await admin.listNamespacedSecret({ namespace: 'rig-smoke' })).items,
      'the admin token can list Secrets',
    );
  });

  it('survives an API server restart with its data intact', async () => {
    const core = config.makeApiClient(CoreV1Api);
    await core.createNamespacedConfigMap({
      namespace,
      body: { metadata: { name: 'kept' }, data: { k: 'v' } },
    });
    await cluster.stopApiserver();
    await assert.rejects(core.readNamespacedConfigMap({ namespace, name: 'kept' }));
    await cluster.startApiserver();
    const kept = await core.readNamespacedConfigMap({ namespace, name: 'kept' });
    assert.equal(kept.data?.k, 'v');
  });
});
