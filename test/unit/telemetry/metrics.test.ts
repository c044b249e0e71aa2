// The registry holds every metric of the monitoring seed with its type and labels, and the
// values mean what the seed says (job statuses apart, a rolling hit ratio, bounded labels).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WorkQueue } from '../../../src/controller/workqueue.ts';
import {
  atCapacity,
  imageErrorType,
  ProvisionerMetrics,
  storageErrorType,
} from '../../../src/telemetry/metrics.ts';
import { FakeClock } from '../../support/fake-clock.ts';
import { SEED_METRICS } from './seed-metrics.ts';

const WORKQUEUE_METRICS = [
  'workqueue_depth',
  'workqueue_adds_total',
  'workqueue_queue_duration_seconds',
  'workqueue_work_duration_seconds',
  'workqueue_retries_total',
];

async function value(metrics: ProvisionerMetrics, name: string, labels: Record<string, string> = {}) {
  const metric = (await metrics.registry.getMetricsAsJSON()).find((candidate) => candidate.name === name);
  const sample = metric?.values.find((candidate) =>
    Object.entries(labels).every(([key, wanted]) => String(candidate.labels[key]) === wanted),
  );
  return sample?.value;
}

function exercise(metrics: ProvisionerMetrics): void {
  metrics.requests.inc({ method: 'GET', endpoint: '/metrics', status: '200' });
  metrics.requestDuration.observe({ method: 'GET', endpoint: '/metrics' }, 0.01);
  metrics.jobFinished('completed', 3);
  metrics.cacheLookup(false);
  metrics.imageDownloaded('qcow2', 1024);
  metrics.imageError('download', 'ChecksumMismatch');
  metrics.storageOperation('acquire');
  metrics.stageCompleted('download', 2, 2048);
  metrics.dependencyUp('storage', true);
}

describe('ProvisionerMetrics', () => {
  it('exposes every seed metric with its type and labels, plus process and workqueue metrics', async () => {
    const metrics = new ProvisionerMetrics();
    exercise(metrics);
    const queue = new WorkQueue<string>({ metrics: metrics.workQueue('volumeprovision') });
    queue.add('a');
    queue.done((await queue.get()) ?? '');
    const json = await metrics.registry.getMetricsAsJSON();
    for (const [name, [type, labels]] of Object.entries(SEED_METRICS)) {
      const metric = json.find((candidate) => candidate.name === name);
      assert.ok(metric, `${name} is registered`);
      assert.equal(metric.type, type, `${name} is a ${type}`);
      const seen = new Set(metric.values.flatMap((sample) => Object.keys(sample.labels)));
      seen.delete('le');
      assert.deepEqual([...seen].sort(), [...labels].sort(), `${name} labels`);
    }
    const text = await metrics.registry.metrics();
    for (const name of [...Object.keys(SEED_METRICS), ...WORKQUEUE_METRICS])
      assert.match(text, new RegExp(`^${name}(_bucket)?[{ ]`, 'm'), `${name} has a sample`);
    assert.match(text, /^process_cpu_user_seconds_total /m);
    assert.match(text, /^nodejs_eventloop_lag_seconds /m);
  });

  it('keeps completed, failed and cancelled jobs apart', async () => {
    const metrics = new ProvisionerMetrics();
    metrics.jobFinished('completed', 1);
    metrics.jobFinished('cancelled', 1);
    metrics.jobFinished('cancelled', 2);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_jobs_total', { status: 'completed' }), 1);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_jobs_total', { status: 'cancelled' }), 2);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_jobs_total', { status: 'failed' }), 0);
  });

  it('computes a rolling hit ratio over the last 100 lookups', async () => {
    const metrics = new ProvisionerMetrics();
    metrics.cacheLookup(true);
    for (let index = 0; index < 3; index += 1) metrics.cacheLookup(false);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_cache_hit_ratio'), 0.25);
    for (let index = 0; index < 100; index += 1) metrics.cacheLookup(true);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_cache_hit_ratio'), 1);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_cache_misses_total'), 3);
  });

  it('reads active jobs and health from the job slots at scrape time; degraded at capacity', async () => {
    const metrics = new ProvisionerMetrics();
    let running = 1;
    metrics.observeJobSlots(() => ({ running, slots: 2 }));
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_health_status'), 1);
    running = 2;
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_active_jobs'), 2);
    assert.equal(await value(metrics, 'libvirt_volume_provisioner_health_status'), 0);
    assert.equal(atCapacity({ running: 2, slots: 2 }), true);
    assert.equal(atCapacity({ running: 1, slots: 2 }), false);
  });

  it('sorts errors into bounded error_type values', () => {
    assert.equal(
      imageErrorType(Object.assign(new Error('x'), { reason: 'ChecksumMismatch' })),
      'ChecksumMismatch',
    );
    assert.equal(imageErrorType(Object.assign(new Error('x'), { code: 'ENOENT' })), 'ENOENT');
    assert.equal(imageErrorType(new Error('https://host/secret?sig=1 failed')), 'Unknown');
    assert.equal(storageErrorType(Object.assign(new Error('x'), { code: 'ENOSPC' })), 'no_space');
    assert.equal(storageErrorType(Object.assign(new Error('x'), { code: 'EROFS' })), 'permission');
    assert.equal(storageErrorType(new Error('x')), 'io');
  });
});

describe('WorkQueue metrics', () => {
  it('counts adds once per key, depth, waiting and working time, and retries', async () => {
    const metrics = new ProvisionerMetrics();
    const clock = new FakeClock();
    const queue = new WorkQueue<string>({ clock, metrics: metrics.workQueue('vp'), random: () => 0 });
    queue.add('a');
    queue.add('a');
    queue.add('b');
    assert.equal(await value(metrics, 'workqueue_depth', { name: 'vp' }), 2);
    clock.advance(1_500);
    const key = await queue.get();
    assert.equal(key, 'a');
    assert.equal(await value(metrics, 'workqueue_depth', { name: 'vp' }), 1);
    clock.advance(250);
    queue.addRateLimited('a');
    queue.done('a');
    assert.equal(await value(metrics, 'workqueue_adds_total', { name: 'vp' }), 2);
    assert.equal(await value(metrics, 'workqueue_retries_total', { name: 'vp' }), 1);
    const text = await metrics.registry.metrics();
    assert.match(text, /^workqueue_queue_duration_seconds_sum\{name="vp"\} 1\.5$/m);
    assert.match(text, /^workqueue_work_duration_seconds_sum\{name="vp"\} 0\.25$/m);
  });
});
