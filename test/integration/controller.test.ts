// The controller against a real kube-apiserver, real MinIO and real qemu-img, running as its
// own process with only the RBAC the chart grants. Targets are files (LVM is covered in
// lvm.test.ts), and a throttled HTTP server lets tests catch jobs in mid-download.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CoreV1Api, CustomObjectsApi, type KubeConfig, Watch } from '@kubernetes/client-node';
import type { CachedImage, VolumeProvision } from '../../src/api/v1alpha1.ts';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { waitUntil } from '../rig/net.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import {
  CONTROLLER_SERVICE_ACCOUNT,
  type ControllerDirs,
  type ControllerProcess,
  controllerDirs,
  controllerKubeconfig,
  installCrds,
  isReady,
  startController,
  volumeProvisions,
} from '../support/controller.ts';
import { type ImageServer, startImageServer } from '../support/image-server.ts';
import { makeTestImage, sha256, type TestImage } from '../support/images.ts';

const NAMESPACE = 'vms';
const NODE = 'hv-a';
const ACTIVE_STAGES = new Set(['Initializing', 'Downloading', 'Converting', 'Finalizing']);

describe('controller on a real API server', { timeout: 600_000 }, () => {
  let cluster: KubeControlPlane;
  let minio: MinioServer;
  let images: ImageServer;
  let admin: KubeConfig;
  let kubeconfig: string;
  let workDir: string;
  let dirs: ControllerDirs;
  let image: TestImage;
  let controller: ControllerProcess;
  let vps: ReturnType<typeof volumeProvisions>;
  let logCount = 0;

  const start = async () => {
    logCount += 1;
    controller = await startController({
      kubeconfig,
      nodeName: NODE,
      dirs,
      logFile: join(workDir, `controller-${logCount}.log`),
      env: { LVP_S3_ENDPOINT: minio.endpoint },
    });
  };

  const spec = (name: string, url: string, extra: Partial<VolumeProvision['spec']> = {}) => ({
    metadata: { name },
    spec: {
      nodeName: NODE,
      // Only S3 sources carry credentials: with them, an http URL would be read as S3 too.
      source: {
        url,
        format: 'qcow2' as const,
        ...(url.startsWith('s3://') ? { secretRef: { name: 'minio' } } : {}),
      },
      target: { type: 'file' as const, volumeName: `${name}.img`, size: '64Mi' },
      reclaimPolicy: 'Delete' as const,
      ...extra,
    },
  });

  before(async () => {
    workDir = makeWorkDir('controller');
    [cluster, minio, images] = await Promise.all([
      startKubeControlPlane(join(workDir, 'kube')),
      startMinio(join(workDir, 'minio')),
      startImageServer(),
    ]);
    admin = cluster.adminConfig();
    await installCrds(cluster);
    kubeconfig = await controllerKubeconfig(cluster);
    const core = admin.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
    await core.createNamespacedSecret({
      namespace: NAMESPACE,
      body: {
        metadata: { name: 'minio' },
        stringData: { accessKeyId: minio.accessKey, secretKey: minio.secretKey },
      },
    });
    image = await makeTestImage(workDir, 'disk', 32);
    const qcow2 = readFileSync(image.qcow2Path);
    await minio.client().makeBucket('images');
    await minio.client().putObject('images', 'disk.qcow2', qcow2, qcow2.length);
    for (let index = 0; index < 8; index += 1) images.put(`/slow-${index}.qcow2`, qcow2);
    images.put('/taken.qcow2', qcow2);
    dirs = controllerDirs(join(workDir, 'node'));
    vps = volumeProvisions(admin, NAMESPACE);
    await start();
  });

  after(async () => {
    await controller?.process.stop();
    await images?.close();
    await minio?.stop();
    await cluster?.stop();
  });

  it('provisions an S3 image into a file and reports Ready with its status fields', async () => {
    await vps.create(spec('first', 's3://images/disk.qcow2'));
    const { stdout: waited } = await cluster.kubectl([
      'wait',
      '--for=condition=Ready',
      '--timeout=60s',
      '-n',
      NAMESPACE,
      'vp/first',
    ]);
    assert.match(waited, /condition met/);
    const done = await vps.get('first');
    const status = done.status ?? {};
    assert.equal(status.stage, 'Completed');
    assert.equal(status.devicePath, join(dirs.fileTargetDir, 'first.img'));
    assert.equal(status.virtualSize, image.sizeBytes);
    assert.equal(status.cacheHit, false);
    assert.equal(status.attempts, 1);
    assert.equal(status.observedGeneration, done.metadata?.generation);
    assert.equal(status.progress?.overallPercent, 100);
    assert.ok(status.startTime && status.completionTime && status.startTime <= status.completionTime);
    assert.deepEqual(done.metadata?.finalizers, ['lvp.dev/cleanup']);

    const written = readFileSync(join(dirs.fileTargetDir, 'first.img'));
    assert.equal(written.length, 64 * 1024 * 1024, 'the file has the requested size');
    assert.equal(sha256(written.subarray(0, image.sizeBytes)), image.rawSha256, 'content equals the image');

    const { stdout: table } = await cluster.kubectl(['get', 'vp', '-n', NAMESPACE, 'first']);
    assert.match(table, /NAME\s+NODE\s+STAGE\s+PROGRESS\s+READY\s+AGE/);
    assert.match(table, /first\s+hv-a\s+Completed\s+100\s+True/);

    const { stdout: events } = await cluster.kubectl([
      'get',
      'events',
      '-n',
      NAMESPACE,
      '--field-selector',
      'involvedObject.name=first',
      '-o',
      'jsonpath={.items[*].reason}',
    ]);
    assert.match(events, /Provisioned/);
  });

  it('serves a second object from the node cache', async () => {
    await vps.create(spec('second', 's3://images/disk.qcow2'));
    const done = await vps.waitFor('second', 'Ready', isReady);
    assert.equal(done.status?.cacheHit, true);
    assert.equal(readdirSync(dirs.cacheDir).filter((name) => name.endsWith('.img')).length, 1);
  });

  it('refuses a volume name that another object holds before downloading its image', async () => {
    await vps.create(
      spec('taken', `${images.url}/taken.qcow2`, {
        target: { type: 'file', volumeName: 'first.img', size: '64Mi' },
      }),
    );
    const refused = await vps.waitFor('taken', 'Ready=False for VolumeConflict', (object) =>
      (object.status?.conditions ?? []).some(
        (condition) => condition.type === 'Ready' && condition.reason === 'VolumeConflict',
      ),
    );
    assert.equal(refused.status?.stage, 'Failed');
    assert.match(
      refused.status?.message ?? '',
      /first\.img belongs to another VolumeProvision .*; choose another target\.volumeName/,
    );
    // The stat reads one byte; the image itself is never fetched.
    const fetched = images.requests.filter((line) => line.startsWith('GET /taken.qcow2'));
    assert.deepEqual(fetched, ['GET /taken.qcow2 bytes=0-0']);
    await vps.delete('taken');
    await vps.waitGone('taken');
    const kept = readFileSync(join(dirs.fileTargetDir, 'first.img'));
    assert.equal(sha256(kept.subarray(0, image.sizeBytes)), image.rawSha256, "first's volume is untouched");
  });

  it('runs at most 2 jobs at once and starts the others in FIFO order with queue positions', async () => {
    images.setRate(24 * 1024 * 1024);
    const names = ['q0', 'q1', 'q2', 'q3', 'q4'];
    const seen = new Map<string, Set<string>>();
    const positions = new Map<string, Set<number>>();
    const latest = new Map<string, VolumeProvision>();
    let maxActive = 0;
    let watchError: unknown;
    // What the watch saw, in order, for the assertion messages: a failure here must explain itself.
    const timeline: string[] = [];
    // A watch sees every status write, however short a stage lasts; polling could miss one.
    const watch = await new Watch(cluster.adminConfig()).watch(
      `/apis/lvp.dev/v1alpha1/namespaces/${NAMESPACE}/volumeprovisions`,
      {},
      (_phase: string, object: VolumeProvision) => {
        const name = object.metadata?.name ?? '';
        if (!names.includes(name)) return;
        latest.set(name, object);
        timeline.push(`${name}:${object.status?.stage ?? '-'}:${object.status?.queuePosition ?? ''}`);
        const active = [...latest.values()].filter((vp) => ACTIVE_STAGES.has(vp.status?.stage ?? '')).length;
        maxActive = Math.max(maxActive, active);
        if (object.status?.stage)
          (seen.get(name) ?? seen.set(name, new Set()).get(name))?.add(object.status.stage);
        if (object.status?.queuePosition) {
          (positions.get(name) ?? positions.set(name, new Set()).get(name))?.add(object.status.queuePosition);
        }
      },
      (error: unknown) => {
        watchError = error ?? new Error('the watch ended');
      },
    );
    try {
      for (const [index, name] of names.entries())
        await vps.create(spec(name, `${images.url}/slow-${index}.qcow2`));
      await waitUntil(
        async () => {
          if (watchError) throw watchError;
          return names.every((name) => {
            const object = latest.get(name);
            return object !== undefined && isReady(object);
          });
        },
        { what: '5 objects Ready', timeoutMs: 120_000 },
      );
    } finally {
      watch.abort();
    }
    images.setRate(Number.POSITIVE_INFINITY);
    const seenInOrder = `; the watch saw ${timeline.join(' ')}`;
    assert.ok(maxActive <= 2, `never more than 2 running (saw ${maxActive})${seenInOrder}`);
    assert.equal(maxActive, 2, `both slots were used${seenInOrder}`);
    // Which three wait depends on whose finalizer patch came back first (parallel workers):
    // the order is guaranteed among waiting jobs, and that is what is checked.
    const waited = names.filter((name) => seen.get(name)?.has('Queued'));
    assert.equal(waited.length, 3, `three of the five waited for a slot${seenInOrder}`);
    // Positions are written coalesced, so a short-lived one may not show; none is out of range.
    for (const name of waited) {
      const seenPositions = [...(positions.get(name) ?? [])];
      assert.ok(seenPositions.length > 0, `${name} showed a queue position${seenInOrder}`);
      for (const position of seenPositions)
        assert.ok(position >= 1 && position <= 3, `${name} at position ${position}${seenInOrder}`);
    }
    const objects = await Promise.all(names.map((name) => vps.get(name)));
    const startOf = (name: string) => objects[names.indexOf(name)]?.status?.startTime ?? '';
    const finalStatuses = JSON.stringify(
      objects.map(({ metadata, status }) => [metadata?.name, status?.startTime, status?.queuePosition]),
    );
    const waitedStarts = waited.map(startOf);
    assert.deepEqual(
      [...waitedStarts].sort(),
      waitedStarts,
      `the waiting jobs started in creation order: ${finalStatuses}${seenInOrder}`,
    );
    const ranAtOnce = names.filter((name) => !waited.includes(name)).map(startOf);
    assert.ok(
      ranAtOnce.every((start) => waitedStarts.every((waitedStart) => start < waitedStart)),
      `the two that did not wait started first: ${finalStatuses}${seenInOrder}`,
    );
    assert.ok(
      objects.every((object) => object.status?.queuePosition === undefined),
      `no queue position once done: ${finalStatuses}`,
    );
  });

  it('never receives or touches an object meant for another node', async () => {
    await vps.create(spec('elsewhere', 's3://images/disk.qcow2', { nodeName: 'hv-b' }));
    await vps.create(spec('marker', 's3://images/disk.qcow2'));
    await vps.waitFor('marker', 'Ready', isReady);
    const other = await vps.get('elsewhere');
    assert.equal(other.metadata?.finalizers, undefined);
    assert.equal(other.status, undefined);
    const username = `system:serviceaccount:lvp-system:${CONTROLLER_SERVICE_ACCOUNT}`;
    const collectionReads = cluster
      .auditEvents()
      .filter((event) => event.user.username === username && event.objectRef?.resource === 'volumeprovisions')
      .filter((event) => event.verb === 'list' || event.verb === 'watch');
    assert.ok(collectionReads.length > 0);
    for (const event of collectionReads) {
      assert.match(
        event.requestURI,
        /fieldSelector=spec\.nodeName%3Dhv-a/,
        `${event.verb} is filtered by node`,
      );
    }
    assert.ok(!controller.logs().some((line) => JSON.stringify(line).includes('elsewhere')), 'never logged');
  });

  it('cancels a running job on delete, cleans up and removes the finalizer', async () => {
    images.setRate(2 * 1024 * 1024);
    await vps.create(spec('doomed', `${images.url}/slow-5.qcow2`));
    await vps.waitFor('doomed', 'downloading', (object) => object.status?.stage === 'Downloading');
    await vps.delete('doomed');
    await vps.waitGone('doomed', 10_000);
    images.setRate(Number.POSITIVE_INFINITY);
    assert.ok(!existsSync(join(dirs.fileTargetDir, 'doomed.img')));
    assert.deepEqual(
      readdirSync(dirs.fileTargetDir).filter((name) => name.includes('doomed')),
      [],
    );
    await waitUntil(async () => !readdirSync(dirs.cacheDir).some((name) => name.startsWith('.partial-')), {
      what: 'the partial download to be removed',
      timeoutMs: 10_000,
    });
    const lines = controller.logs().filter((line) => line.key === `${NAMESPACE}/doomed`);
    assert.ok(lines.some((line) => line.message === 'job stopped' && line.reason === 'cancelled'));
    assert.ok(!lines.some((line) => line.message === 'job failed'), 'a cancelled job is not a failed job');
  });

  it('finishes a job after the controller is SIGKILLed in the middle of it, with nothing duplicated or leaked', async () => {
    images.setRate(2 * 1024 * 1024);
    await vps.create(spec('survivor', `${images.url}/slow-6.qcow2`));
    await vps.waitFor('survivor', 'downloading', (object) => object.status?.stage === 'Downloading');
    controller.process.signal('SIGKILL');
    await controller.process.exited;
    images.setRate(Number.POSITIVE_INFINITY);
    await start();
    const done = await vps.waitFor('survivor', 'Ready', isReady);
    assert.equal(done.status?.attempts, 2);
    assert.deepEqual(
      readdirSync(dirs.fileTargetDir).filter((name) => name.includes('survivor')),
      ['survivor.img'],
    );
    assert.ok(
      !readdirSync(dirs.cacheDir).some((name) => name.startsWith('.partial-')),
      'no partial download left',
    );
    const written = readFileSync(join(dirs.fileTargetDir, 'survivor.img'));
    assert.equal(sha256(written.subarray(0, image.sizeBytes)), image.rawSha256);
    const { stdout } = await cluster.kubectl([
      'get',
      'events',
      '-n',
      NAMESPACE,
      '--field-selector',
      'involvedObject.name=survivor,reason=Provisioned',
      '-o',
      'name',
    ]);
    assert.equal(stdout.trim().split('\n').length, 1, 'provisioned once');
  });

  it('hands a running job back on SIGTERM, exits in time, and resumes it on the next start', async () => {
    images.setRate(2 * 1024 * 1024);
    await vps.create(spec('handover', `${images.url}/slow-7.qcow2`));
    await vps.waitFor('handover', 'downloading', (object) => object.status?.stage === 'Downloading');
    const stoppedAt = Date.now();
    controller.process.signal('SIGTERM');
    await controller.process.exited;
    const seconds = (Date.now() - stoppedAt) / 1000;
    assert.deepEqual(controller.process.exitStatus, { code: 0, signal: null }, 'a clean exit');
    assert.ok(seconds < 20, `exited within the shutdown timeout (${seconds}s)`);
    const lines = controller.logs().filter((line) => line.key === `${NAMESPACE}/handover`);
    assert.ok(lines.some((line) => line.message === 'job stopped' && line.reason === 'shutdown'));
    const handedBack = await vps.get('handover');
    assert.equal(
      handedBack.status?.stage,
      'Downloading',
      'the status is left for the next start, not Failed',
    );
    images.setRate(Number.POSITIVE_INFINITY);
    await start();
    const done = await vps.waitFor('handover', 'Ready', isReady);
    assert.equal(done.status?.attempts, 2);
  });

  it('recovers its watch after the API server restarts, without redoing finished work', async () => {
    await cluster.stopApiserver();
    await cluster.startApiserver();
    await vps.create(spec('after-restart', 's3://images/disk.qcow2'));
    await vps.waitFor('after-restart', 'Ready', isReady, 90_000);
    const first = await vps.get('first');
    assert.equal(first.status?.attempts, 1, 'finished work was not redone');
  });

  it('pre-warms the cache from a CachedImage, serves provisions from it, and evicts it on delete', async () => {
    // Its own content: the cache stores files by content, shared by every URL that has it.
    const qcow2 = readFileSync((await makeTestImage(workDir, 'prewarm', 8)).qcow2Path);
    await minio.client().putObject('images', 'prewarm.qcow2', qcow2, qcow2.length);
    const cachedImages = {
      group: 'lvp.dev',
      version: 'v1alpha1',
      namespace: NAMESPACE,
      plural: 'cachedimages',
    };
    const objects = admin.makeApiClient(CustomObjectsApi);
    await objects.createNamespacedCustomObject({
      ...cachedImages,
      body: {
        apiVersion: 'lvp.dev/v1alpha1',
        kind: 'CachedImage',
        metadata: { name: 'base' },
        spec: {
          nodeName: NODE,
          source: { url: 's3://images/prewarm.qcow2', format: 'qcow2', secretRef: { name: 'minio' } },
        },
      },
    });
    let cached: CachedImage | undefined;
    await waitUntil(
      async () => {
        cached = (await objects.getNamespacedCustomObject({ ...cachedImages, name: 'base' })) as CachedImage;
        return cached.status?.phase === 'Cached';
      },
      { what: 'CachedImage base to be Cached', timeoutMs: 60_000, intervalMs: 100 },
    );
    assert.equal(cached?.status?.sizeBytes, qcow2.length);
    assert.equal(cached?.status?.sha256, sha256(qcow2));
    const { stdout } = await cluster.kubectl(['get', 'lvpci', '-n', NAMESPACE, 'base']);
    assert.match(stdout, /base\s+hv-a\s+Cached/);

    await vps.create(spec('from-prewarm', 's3://images/prewarm.qcow2'));
    const done = await vps.waitFor('from-prewarm', 'Ready', isReady);
    assert.equal(done.status?.cacheHit, true, 'the provision found the pre-warmed image');

    const cacheFile = join(dirs.cacheDir, `${sha256(qcow2)}.img`);
    assert.ok(existsSync(cacheFile));
    await objects.deleteNamespacedCustomObject({ ...cachedImages, name: 'base' });
    await waitUntil(
      async () => {
        try {
          await objects.getNamespacedCustomObject({ ...cachedImages, name: 'base' });
          return false;
        } catch (error) {
          return (error as { code?: number }).code === 404;
        }
      },
      { what: 'CachedImage base to be deleted', timeoutMs: 30_000, intervalMs: 100 },
    );
    await waitUntil(async () => !existsSync(cacheFile), {
      what: 'the cache entry to be evicted',
      timeoutMs: 10_000,
    });
  });

  it('keeps its API requests for one job within budget', async () => {
    const username = `system:serviceaccount:lvp-system:${CONTROLLER_SERVICE_ACCOUNT}`;
    await vps.create(spec('budget', 's3://images/disk.qcow2'));
    const done = await vps.waitFor('budget', 'Ready', isReady);
    const seconds =
      (Date.parse(done.status?.completionTime ?? '') - Date.parse(done.status?.startTime ?? '')) / 1000;
    const requests = cluster
      .auditEvents()
      .filter(
        (event) =>
          event.user.username === username && event.objectRef?.name === 'budget' && event.verb !== 'watch',
      );
    const statusWrites = requests.filter((event) => event.objectRef?.subresource === 'status').length;
    // Stage changes: Initializing, Converting, Finalizing, Completed (a cache hit skips Downloading).
    const budget = 5 + Math.ceil(seconds / 1);
    assert.ok(statusWrites <= budget, `status writes ${statusWrites} <= ${budget}`);
    assert.ok(statusWrites >= 3, 'each stage change was written');
    const finalizerWrites = requests.filter(
      (event) => event.verb === 'patch' && !event.objectRef?.subresource,
    ).length;
    assert.equal(finalizerWrites, 1, 'one finalizer patch');
  });

  // Last, over everything the tests above made it do: a status the CRD's schema refuses (a
  // fraction of a byte, say) would leave the object's status stuck while the job runs on.
  it('never had a status write refused as invalid by the API server', () => {
    const username = `system:serviceaccount:lvp-system:${CONTROLLER_SERVICE_ACCOUNT}`;
    const statusWrites = cluster
      .auditEvents()
      .filter((event) => event.user.username === username && event.objectRef?.subresource === 'status');
    assert.ok(statusWrites.length > 20, `the tests made status writes (${statusWrites.length})`);
    const refused = statusWrites.filter((event) => event.responseStatus?.code === 422);
    assert.deepEqual(
      refused.map((event) => event.requestURI),
      [],
    );
  });
});
