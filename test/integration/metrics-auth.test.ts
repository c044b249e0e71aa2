// Secure metrics with the chart's RBAC on the rig's real API server: the controller checks a
// scraper's bearer token with a TokenReview and its right to GET /metrics with a
// SubjectAccessReview, as controller-runtime's secure metrics do. The chart's metrics-reader
// ServiceAccount may scrape; the controller's own ServiceAccount may not.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { parseObjects, renderChart } from '../support/chart/render.ts';
import {
  CONTROLLER_NAMESPACE,
  CONTROLLER_SERVICE_ACCOUNT,
  type ControllerProcess,
  controllerDirs,
  controllerKubeconfig,
  installCrds,
  startController,
} from '../support/controller.ts';

const READER = 'libvirt-volume-provisioner-metrics-reader';

/** The bearer token in a kubeconfig the rig wrote for a ServiceAccount. */
const tokenOf = (kubeconfigPath: string): string =>
  (JSON.parse(readFileSync(kubeconfigPath, 'utf8')) as { users: { user: { token: string } }[] }).users[0]
    ?.user.token ?? '';

describe('secure metrics through TokenReview and SubjectAccessReview (real API server)', {
  timeout: 240_000,
}, () => {
  let cluster: KubeControlPlane;
  let controller: ControllerProcess | undefined;
  let base: string;
  let readerToken: string;
  let controllerToken: string;

  before(async () => {
    const workDir = makeWorkDir('metrics-auth');
    cluster = await startKubeControlPlane(join(workDir, 'kube'));
    await installCrds(cluster);
    const rendered = await renderChart({ set: { 'server.metricsAuth.mode': 'kubernetes' } });
    assert.ok(
      parseObjects(rendered).some(
        (object) => object.kind === 'ServiceAccount' && object.metadata.name === READER,
      ),
      'the chart renders a metrics-reader ServiceAccount',
    );
    const kubeconfig = await controllerKubeconfig(cluster, rendered);
    controllerToken = tokenOf(kubeconfig);
    readerToken = tokenOf(await cluster.serviceAccountKubeconfig(CONTROLLER_NAMESPACE, READER));
    controller = await startController({
      kubeconfig,
      nodeName: 'hv-auth',
      dirs: controllerDirs(join(workDir, 'node')),
      logFile: join(workDir, 'controller.log'),
      env: { LVP_METRICS_AUTH: 'kubernetes' },
    });
    base = `http://127.0.0.1:${controller.serverPort}`;
  });
  after(async () => {
    await controller?.process.stop();
    await cluster?.stop();
  });

  const scrape = (token?: string) =>
    fetch(`${base}/metrics`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });

  it("lets the chart's metrics-reader scrape", async () => {
    const response = await scrape(readerToken);
    assert.equal(response.status, 200);
    assert.match(await response.text(), /^libvirt_volume_provisioner_health_status 1$/m);
  });

  it('refuses an authenticated ServiceAccount without the right to GET /metrics (403)', async () => {
    assert.equal((await scrape(controllerToken)).status, 403);
  });

  it('refuses a token the API server does not know, and no token at all (401)', async () => {
    const forged = await scrape(`${readerToken.slice(0, -8)}AAAAAAAA`);
    assert.equal(forged.status, 401);
    assert.equal(forged.headers.get('www-authenticate'), 'Bearer');
    assert.equal((await scrape()).status, 401);
  });

  it('keeps health endpoints open, and asked the API server with the RBAC the chart grants', async () => {
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    const username = `system:serviceaccount:${CONTROLLER_NAMESPACE}:${CONTROLLER_SERVICE_ACCOUNT}`;
    const reviews = cluster
      .auditEvents()
      .filter((event) => event.user.username === username && event.verb === 'create')
      .map((event) => `${event.objectRef?.resource} ${event.responseStatus?.code}`);
    assert.ok(reviews.includes('tokenreviews 201'), JSON.stringify(reviews));
    assert.ok(reviews.includes('subjectaccessreviews 201'), JSON.stringify(reviews));
  });
});
