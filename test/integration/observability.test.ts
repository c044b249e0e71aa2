// Observability of the real controller process: a real Prometheus scrapes it over mTLS with
// a bearer token (as the seed's ServiceMonitor does) after a provision, a cache hit, a failed
// and a cancelled job; promtool checks the exposition; a real OTLP/gRPC receiver gets the
// spans of one provision, in the trace of the traceparent annotation its creator set, with
// the trace_id its log lines carry. The controller is the bundle the image runs (dist/).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { CoreV1Api } from '@kubernetes/client-node';
import { TRACEPARENT_ANNOTATION, type VolumeProvision } from '../../src/api/v1alpha1.ts';
import { makeClientCertificate, makeServerCertificate, type ServerCertificate } from '../rig/certs.ts';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { waitUntil } from '../rig/net.ts';
import { type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from '../rig/otlp.ts';
import { systemTool } from '../rig/tools.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import {
  alertRules,
  comparedSeries,
  type Dashboard,
  prometheusQueries,
  withVariables,
} from '../support/chart/monitoring.ts';
import { CHART_DIR, PROMETHEUS_OPERATOR_APIS, parseObjects, renderChart } from '../support/chart/render.ts';
import {
  type ControllerProcess,
  controllerDirs,
  controllerKubeconfig,
  installCrds,
  isReady,
  startController,
  volumeProvisions,
} from '../support/controller.ts';
import { type ImageServer, startImageServer } from '../support/image-server.ts';
import { makeTestImage } from '../support/images.ts';
import { SEED_METRICS } from '../unit/telemetry/seed-metrics.ts';
import { type PrometheusServer, startPrometheus } from './fixtures/observability/prometheus.ts';

const run = promisify(execFile);
const NAMESPACE = 'observed';
const NODE = 'hv-o';
const TOKEN = 'scrape-token-0123456789';
const CREATOR_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CREATOR_SPAN = '00f067aa0ba902b7';

interface TlsResponse {
  status: number;
  body: string;
}

function httpsGet(
  url: string,
  options: { ca: Buffer; cert?: Buffer; key?: Buffer; token?: string },
): Promise<TlsResponse> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        ca: options.ca,
        ...(options.cert ? { cert: options.cert } : {}),
        ...(options.key ? { key: options.key } : {}),
        headers: options.token ? { authorization: `Bearer ${options.token}` } : {},
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          body += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.once('error', reject);
    req.end();
  });
}

describe('observability of the real controller', { timeout: 600_000 }, () => {
  let cluster: KubeControlPlane;
  let minio: MinioServer;
  let images: ImageServer;
  let otlp: OtlpReceiver;
  let prometheus: PrometheusServer;
  let controller: ControllerProcess;
  let certs: ServerCertificate;
  let client: { cert: Buffer; key: Buffer; ca: Buffer };
  let base: string;
  let vps: ReturnType<typeof volumeProvisions>;
  let firstUid = '';

  const spec = (name: string, url: string, extra: Partial<VolumeProvision['spec']['source']> = {}) => ({
    nodeName: NODE,
    source: {
      url,
      format: 'qcow2' as const,
      ...(url.startsWith('s3://') ? { secretRef: { name: 'minio' } } : {}),
      ...extra,
    },
    target: { type: 'file' as const, volumeName: `${name}.img`, size: '64Mi' },
    reclaimPolicy: 'Delete' as const,
  });

  before(async () => {
    const workDir = makeWorkDir('observability');
    [cluster, minio, images, otlp] = await Promise.all([
      startKubeControlPlane(join(workDir, 'kube')),
      startMinio(join(workDir, 'minio')),
      startImageServer(),
      startOtlpReceiver(workDir),
    ]);
    await installCrds(cluster);
    const kubeconfig = await controllerKubeconfig(cluster);
    const core = cluster.adminConfig().makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
    await core.createNamespacedSecret({
      namespace: NAMESPACE,
      body: {
        metadata: { name: 'minio' },
        stringData: { accessKeyId: minio.accessKey, secretKey: minio.secretKey },
      },
    });
    const image = await makeTestImage(workDir, 'disk', 32);
    const qcow2 = readFileSync(image.qcow2Path);
    await minio.client().makeBucket('images');
    await minio.client().putObject('images', 'disk.qcow2', qcow2, qcow2.length);
    await minio.client().putObject('images', 'other.qcow2', qcow2, qcow2.length);
    images.put('/slow.qcow2', qcow2);

    certs = await makeServerCertificate(workDir, { commonName: 'libvirt-volume-provisioner' });
    const clientFiles = await makeClientCertificate(workDir, 'prometheus');
    client = {
      cert: readFileSync(clientFiles.cert),
      key: readFileSync(clientFiles.key),
      ca: readFileSync(certs.ca),
    };
    const tokenFile = join(workDir, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`);
    controller = await startController({
      kubeconfig,
      nodeName: NODE,
      dirs: controllerDirs(join(workDir, 'node')),
      logFile: join(workDir, 'controller.log'),
      // The shipped bundle, so that every signal here (traces from the SDK's lazily loaded
      // chunk included) is proven on what the image runs.
      entry: 'image',
      env: {
        LVP_S3_ENDPOINT: minio.endpoint,
        LVP_TLS_CERT_FILE: certs.cert,
        LVP_TLS_KEY_FILE: certs.key,
        LVP_TLS_CLIENT_CA_FILE: certs.ca,
        LVP_METRICS_AUTH: 'token',
        LVP_METRICS_TOKEN_FILE: tokenFile,
        // No libvirtd runs here: the probe must report libvirt down.
        LVP_LIBVIRT_URI: 'qemu+unix:///system?socket=/nonexistent/libvirt-sock',
        LVP_DEPENDENCY_PROBE_INTERVAL_SECONDS: '1',
        OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
        OTEL_SERVICE_NAME: 'lvp-observability-test',
        OTEL_BSP_SCHEDULE_DELAY: '200',
      },
    });
    base = `https://127.0.0.1:${controller.serverPort}`;
    prometheus = await startPrometheus(join(workDir), {
      address: `127.0.0.1:${controller.serverPort}`,
      caFile: certs.ca,
      certFile: clientFiles.cert,
      keyFile: clientFiles.key,
      tokenFile,
      labels: { node: NODE },
    });
    vps = volumeProvisions(cluster.adminConfig(), NAMESPACE);
  });

  after(async () => {
    await controller?.process.stop();
    await prometheus?.stop();
    await otlp?.stop();
    await images?.close();
    await minio?.stop();
    await cluster?.stop();
  });

  it('serves health over mTLS only, and /metrics only with the bearer token', async () => {
    const health = await httpsGet(`${base}/health`, client);
    assert.equal(health.status, 200);
    const body = JSON.parse(health.body) as Record<string, string>;
    assert.equal(body.status, 'healthy');
    assert.match(body.version ?? '', /^v\d+\.\d+\.\d+/);
    assert.match(body.uptime ?? '', /^(\d+h)?(\d+m)?\d+s$/);
    await assert.rejects(httpsGet(`${base}/health`, { ca: client.ca }), 'no client certificate, no TLS');
    assert.equal((await httpsGet(`${base}/metrics`, client)).status, 401);
    assert.equal((await httpsGet(`${base}/metrics`, { ...client, token: 'wrong' })).status, 401);
    await waitUntil(async () => (await httpsGet(`${base}/readyz`, client)).status === 200, {
      what: '/readyz',
      timeoutMs: 30_000,
    });
  });

  it('provisions, hits the cache, fails and cancels jobs', async () => {
    const first = await vps.create({
      metadata: {
        name: 'first',
        annotations: { [TRACEPARENT_ANNOTATION]: `00-${CREATOR_TRACE}-${CREATOR_SPAN}-01` },
      },
      spec: spec('first', 's3://images/disk.qcow2'),
    });
    firstUid = first.metadata?.uid ?? '';
    await vps.waitFor('first', 'Ready', isReady);
    await vps.create({ metadata: { name: 'second' }, spec: spec('second', 's3://images/disk.qcow2') });
    assert.equal((await vps.waitFor('second', 'Ready', isReady)).status?.cacheHit, true);
    await vps.create({
      metadata: { name: 'broken' },
      spec: spec('broken', 's3://images/other.qcow2', { checksum: `sha256:${'0'.repeat(64)}` }),
    });
    const broken = await vps.waitFor('broken', 'Failed', (object) => object.status?.stage === 'Failed');
    assert.match(JSON.stringify(broken.status?.conditions), /ChecksumMismatch/);
    images.setRate(1024 * 1024);
    await vps.create({ metadata: { name: 'doomed' }, spec: spec('doomed', `${images.url}/slow.qcow2`) });
    await vps.waitFor('doomed', 'Downloading', (object) => object.status?.stage === 'Downloading');
    await vps.delete('doomed');
    await vps.waitGone('doomed');
    images.setRate(Number.POSITIVE_INFINITY);
  });

  it('lets Prometheus scrape every seed metric with the right values', async () => {
    const one = async (expression: string) => {
      const samples = await prometheus.query(expression);
      const context =
        samples.length === 1 ? '' : JSON.stringify(await prometheus.query(expression.replace(/\{.*$/, '')));
      assert.equal(
        samples.length,
        1,
        `${expression}: one sample, got ${JSON.stringify(samples)}; all: ${context}`,
      );
      return samples[0]?.value;
    };
    // A scrape is counted once its response is sent, so only a later scrape shows it.
    await waitUntil(
      async () =>
        (await prometheus.query('libvirt_volume_provisioner_jobs_total{status="cancelled"} == 1')).length ===
          1 &&
        (
          await prometheus.query(
            'libvirt_volume_provisioner_requests_total{endpoint="/metrics",status="200"}',
          )
        ).length === 1,
      { what: 'Prometheus to scrape the cancelled job', timeoutMs: 20_000, intervalMs: 500 },
    );
    for (const name of Object.keys(SEED_METRICS)) {
      const series = await prometheus.query(`{__name__=~"${name}(_bucket|_count|_sum)?"}`);
      assert.ok(series.length > 0, `Prometheus has ${name}`);
    }
    const p = 'libvirt_volume_provisioner_';
    assert.equal(await one(`${p}jobs_total{status="completed"}`), 2);
    assert.equal(await one(`${p}jobs_total{status="failed"}`), 1);
    assert.equal(await one(`${p}jobs_total{status="cancelled"}`), 1);
    assert.equal(await one(`${p}job_duration_seconds_count{status="completed"}`), 2);
    assert.equal(await one(`${p}cache_hits_total`), 1);
    assert.equal(await one(`${p}cache_misses_total`), 3);
    assert.equal(await one(`${p}cache_hit_ratio`), 0.25);
    assert.equal(await one(`${p}images_downloaded_total`), 1);
    assert.equal(await one(`${p}image_download_size_bytes_count{image_type="qcow2"}`), 1);
    assert.equal(await one(`${p}image_errors_total{operation="download",error_type="ChecksumMismatch"}`), 1);
    assert.equal(await one(`${p}storage_operations_total{operation="acquire",result="success"}`), 2);
    assert.equal(await one(`sum(${p}storage_errors_total)`), 0);
    assert.equal(await one(`${p}stage_duration_seconds_count{stage="download"}`), 1);
    // Only the hit converts: the miss decoded its qcow2 image into the file as it downloaded.
    assert.equal(await one(`${p}stage_duration_seconds_count{stage="convert"}`), 1);
    assert.ok(((await one(`${p}stage_throughput_bytes_per_second{stage="convert"}`)) ?? 0) > 0);
    assert.equal(await one(`${p}active_jobs`), 0);
    assert.equal(await one(`${p}health_status`), 1);
    assert.equal(await one(`${p}dependencies_up{dependency="minio"}`), 1);
    assert.equal(await one(`${p}dependencies_up{dependency="storage"}`), 1);
    assert.equal(await one(`${p}dependencies_up{dependency="libvirt"}`), 0);
    assert.equal((await prometheus.query(`${p}dependencies_up{dependency="lvm"}`)).length, 1);
    assert.ok(((await one(`${p}requests_total{method="GET",endpoint="/metrics",status="200"}`)) ?? 0) > 0);
    assert.ok(((await one(`${p}request_duration_seconds_count{method="GET",endpoint="/metrics"}`)) ?? 0) > 0);
    assert.ok(((await one('workqueue_adds_total{name="volumeprovision"}')) ?? 0) > 0);
    assert.equal(await one('workqueue_depth{name="volumeprovision"}'), 0);
    for (const name of [
      'workqueue_queue_duration_seconds_count',
      'workqueue_work_duration_seconds_count',
      'workqueue_retries_total',
    ])
      assert.equal((await prometheus.query(`${name}{name="volumeprovision"}`)).length, 1, name);
    assert.equal((await prometheus.query('process_cpu_user_seconds_total')).length, 1);
    assert.equal((await prometheus.query('nodejs_heap_size_used_bytes')).length, 1);
    const labels = await prometheus.query(`{__name__=~"${p}.*"}`);
    const values = labels.flatMap(({ metric: { __name__: _name, ...rest } }) => Object.values(rest));
    for (const name of ['first', 'second', 'broken', 'doomed', firstUid])
      assert.ok(!values.some((value) => value.includes(name)), `no label holds ${name}`);
  });

  /**
   * Whether a query may return nothing here: only one that selects failed requests (5xx),
   * when none failed. The only 5xx these tests cause is a 503 from /readyz polled before the
   * informer synced, which depends on timing.
   */
  const mayBeEmpty = async (expr: string) =>
    expr.includes('status=~"5.."') &&
    (await prometheus.query('libvirt_volume_provisioner_requests_total{status=~"5.."}')).length === 0;

  // The jobs above include a failure, a cancellation and a cache hit, so no panel may be empty
  // (but see mayBeEmpty): one that is names a label value or metric the controller does not
  // export, which a parse check cannot tell.
  it("gives every Prometheus panel of the chart's dashboard data to show", async () => {
    const board = JSON.parse(
      readFileSync(join(CHART_DIR, 'dashboards/libvirt-volume-provisioner.json'), 'utf8'),
    ) as Dashboard;
    // The dashboard's variables, as Grafana fills them from label_values().
    const [job] = await prometheus.labelValues('job', 'libvirt_volume_provisioner_health_status');
    assert.ok(job, 'the job variable has a value');
    const nodes = await prometheus.labelValues(
      'node',
      `libvirt_volume_provisioner_health_status{job=~"${job}"}`,
    );
    assert.deepEqual(nodes, [NODE], 'the node variable offers the scraped node');
    const queries = prometheusQueries(board);
    assert.ok(queries.length > 20, `${queries.length} queries`);
    const empty: string[] = [];
    for (const { panel, expr } of queries) {
      const samples = await prometheus.query(withVariables(expr, { job, node: NODE }));
      if (samples.length === 0 && !(await mayBeEmpty(expr))) empty.push(`${panel}: ${expr}`);
    }
    assert.deepEqual(empty, [], 'queries that return no series');
  });

  // An alert whose selector names a label value the controller never exports can never fire,
  // and promtool's rule tests, fed series written by hand, cannot tell.
  it("evaluates every alert of the chart on the real controller's series", async () => {
    const rules = alertRules(parseObjects(await renderChart({ apiVersions: [...PROMETHEUS_OPERATOR_APIS] })));
    assert.ok(rules.length >= 7, `${rules.length} alerts`);
    const empty: string[] = [];
    for (const rule of rules) {
      const samples = await prometheus.query(comparedSeries(rule.expr));
      if (samples.length === 0 && !(await mayBeEmpty(rule.expr))) empty.push(`${rule.alert}: ${rule.expr}`);
    }
    assert.deepEqual(empty, [], 'alerts that select no series');
  });

  it('passes promtool check metrics', async () => {
    const metrics = await httpsGet(`${base}/metrics`, { ...client, token: TOKEN });
    assert.equal(metrics.status, 200);
    const file = join(makeWorkDir('promtool'), 'metrics.txt');
    writeFileSync(file, metrics.body);
    const { stdout, stderr } = await run('sh', [
      '-c',
      `"${systemTool('promtool')}" check metrics < "${file}"`,
    ]);
    assert.equal(`${stdout}${stderr}`.trim(), '', 'promtool reports no problem');
  });

  it('exports the spans of one provision to a real OTLP receiver, linked to its creator and its logs', async () => {
    let trace: ReceivedSpan[] = [];
    await waitUntil(
      async () => {
        trace = otlp.spans().filter((span) => span.traceId === CREATOR_TRACE);
        return ['runJob', 'DownloadImageToPath', 'CreateVolume', 'PopulateVolume'].every((name) =>
          trace.some((span) => span.name === name),
        );
      },
      { what: 'the provision spans', timeoutMs: 15_000, intervalMs: 250 },
    );
    const byName = (name: string) => trace.find((span) => span.name === name);
    const job = byName('runJob');
    assert.equal(job?.parentSpanId, CREATOR_SPAN, 'runJob continues the traceparent annotation');
    assert.equal(job?.attributes['job.id'], firstUid);
    assert.equal(job?.attributes['job.status'], 'completed');
    assert.equal(job?.resource['service.name'], 'lvp-observability-test');
    const download = byName('DownloadImageToPath');
    assert.equal(download?.attributes['image.url'], 's3://images/disk.qcow2');
    assert.ok(String(download?.attributes['image.destination_path']).length > 0);
    for (const name of ['DownloadImageToPath', 'CreateVolume', 'PopulateVolume'])
      assert.equal(byName(name)?.parentSpanId, job?.spanId, `${name} is a child of runJob`);
    assert.equal(byName('CreateVolume')?.attributes['volume.name'], 'first.img');
    assert.ok(
      trace.some((span) => span.name === 'k8s PATCH volumeprovisions/status' && span.kind === 3),
      'Kubernetes API calls of the job are CLIENT spans in its trace',
    );
    const jobLines = controller.logs().filter((line) => line.job_id === firstUid);
    assert.ok(jobLines.length > 0);
    for (const line of jobLines)
      assert.equal(line.trace_id, CREATOR_TRACE, `${line.message} carries the trace`);

    const spans = otlp.spans();
    const failed = spans.find((span) => span.name === 'runJob' && span.attributes['job.status'] === 'failed');
    assert.equal(failed?.statusCode, 2, 'a failed job is an error span');
    const cancelled = spans.find(
      (span) => span.name === 'runJob' && span.attributes['job.status'] === 'cancelled',
    );
    assert.equal(cancelled?.statusCode, 0, 'a cancelled job is not an error');
    assert.ok(
      spans.some((span) => span.name === 'DeleteVolume'),
      'the deletion released the volume in a span',
    );
    assert.ok(
      spans.some((span) => span.name === 'GET /metrics' && span.kind === 2),
      'HTTP server spans',
    );
    assert.ok(!spans.some((span) => /watch/i.test(span.name)), 'no span for long watches');
  });

  // Last: its jobs would change the counts the Prometheus test checks.
  it('reports degraded health exactly while both job slots are busy, and healthy again after', async () => {
    const healthStatus = async () =>
      (JSON.parse((await httpsGet(`${base}/health`, client)).body) as { status: string }).status;
    const healthy = async () => (await healthStatus()) === 'healthy';
    const downloading = (object: VolumeProvision) => object.status?.stage === 'Downloading';
    images.setRate(128 * 1024);
    try {
      await vps.create({ metadata: { name: 'busy-a' }, spec: spec('busy-a', `${images.url}/slow.qcow2`) });
      await vps.waitFor('busy-a', 'Downloading', downloading);
      assert.equal(await healthStatus(), 'healthy', 'one of two slots busy');

      await vps.create({ metadata: { name: 'busy-b' }, spec: spec('busy-b', `${images.url}/slow.qcow2`) });
      await vps.waitFor('busy-b', 'Downloading', downloading);
      const busy = await httpsGet(`${base}/health`, client);
      assert.equal(busy.status, 200, 'degraded is still HTTP 200');
      assert.equal((JSON.parse(busy.body) as { status: string }).status, 'degraded');

      await vps.delete('busy-b');
      await vps.waitGone('busy-b');
      await waitUntil(healthy, { what: 'healthy with one slot free', timeoutMs: 10_000 });
      await vps.delete('busy-a');
      await vps.waitGone('busy-a');
      await waitUntil(healthy, { what: 'healthy with both slots free', timeoutMs: 10_000 });
    } finally {
      images.setRate(Number.POSITIVE_INFINITY);
    }
  });
});
