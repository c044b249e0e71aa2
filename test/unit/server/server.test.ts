// The Express server: health shape and the degraded threshold, readiness, bearer tokens on
// /metrics (static and Kubernetes review), and request metrics with bounded labels.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { kubernetesTokenCheck, type ReviewApi, staticTokenCheck } from '../../../src/server/auth.ts';
import { formatUptime, type RunningServer, startServer } from '../../../src/server/server.ts';
import { ProvisionerMetrics } from '../../../src/telemetry/metrics.ts';

describe('server', () => {
  let server: RunningServer;
  let base: string;
  let running = 0;
  let informerSynced = false;
  const metrics = new ProvisionerMetrics();

  before(async () => {
    server = await startServer(
      {
        version: 'v0.1.0',
        startedAt: Date.parse('2026-04-28T05:45:08Z'),
        now: () => Date.parse('2026-04-28T09:00:00Z'),
        metrics,
        jobSlots: () => ({ running, slots: 2 }),
        readiness: { informer: () => informerSynced, storage: async () => true },
        metricsAuth: staticTokenCheck('s3cret-token\n'),
        logger: pino({ level: 'silent' }),
      },
      { port: 0, address: '127.0.0.1' },
    );
    base = `http://127.0.0.1:${server.port}`;
  });
  after(() => server.close());

  it('answers /health, /healthz and /livez with status, timestamp, version and uptime', async () => {
    for (const path of ['/health', '/healthz', '/livez']) {
      const response = await fetch(`${base}${path}`);
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), {
        status: 'healthy',
        timestamp: '2026-04-28T09:00:00Z',
        version: 'v0.1.0',
        uptime: '3h14m52s',
      });
    }
  });

  it('is degraded, still with HTTP 200, exactly when all job slots are busy', async () => {
    running = 1;
    assert.equal(((await (await fetch(`${base}/health`)).json()) as { status: string }).status, 'healthy');
    running = 2;
    const response = await fetch(`${base}/healthz`);
    assert.equal(response.status, 200);
    assert.equal(((await response.json()) as { status: string }).status, 'degraded');
    running = 0;
  });

  it('is ready only when every readiness check holds', async () => {
    informerSynced = false;
    const notReady = await fetch(`${base}/readyz`);
    assert.equal(notReady.status, 503);
    assert.deepEqual(await notReady.json(), {
      status: 'not ready',
      checks: { informer: false, storage: true },
    });
    informerSynced = true;
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
  });

  it('serves /metrics only with the right bearer token', async () => {
    assert.equal((await fetch(`${base}/metrics`)).status, 401);
    const wrong = await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer nope' } });
    assert.equal(wrong.status, 401);
    const right = await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer s3cret-token' } });
    assert.equal(right.status, 200);
    assert.match(right.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await right.text();
    assert.match(
      text,
      /^libvirt_volume_provisioner_requests_total\{method="GET",endpoint="\/health",status="200"\} \d+$/m,
    );
    assert.match(
      text,
      /^libvirt_volume_provisioner_requests_total\{method="GET",endpoint="\/metrics",status="401"\} 2$/m,
    );
  });

  it('never turns an unknown path into a label of its own', async () => {
    assert.equal((await fetch(`${base}/objects/vm-123?token=x`)).status, 404);
    const text = await metrics.registry.metrics();
    assert.match(text, /endpoint="other",status="404"/);
    assert.ok(!text.includes('vm-123'));
  });

  it('formats uptime like Go durations', () => {
    assert.equal(formatUptime(52_400), '52s');
    assert.equal(formatUptime(14 * 60_000 + 5_000), '14m5s');
    assert.equal(formatUptime(3 * 3_600_000 + 7_000), '3h0m7s');
  });
});

describe('kubernetesTokenCheck', () => {
  const users: Record<string, string> = { good: 'system:serviceaccount:monitoring:prometheus', other: 'bob' };
  let reviews = 0;
  const api: ReviewApi = {
    authenticate: async (token) => {
      reviews += 1;
      const username = users[token];
      return username ? { username, groups: ['system:authenticated'] } : undefined;
    },
    authorize: async (user, verb, path) =>
      user.username.includes('prometheus') && verb === 'get' && path === '/metrics',
  };

  it('allows an authorized ServiceAccount, forbids others, rejects unknown tokens, and caches', async () => {
    let now = 0;
    const check = kubernetesTokenCheck(api, { path: '/metrics', ttlMs: 60_000, now: () => now });
    assert.equal(await check('good'), 'allowed');
    assert.equal(await check('other'), 'forbidden');
    assert.equal(await check('bad'), 'unauthenticated');
    assert.equal(await check('good'), 'allowed');
    assert.equal(reviews, 3, 'a cached decision asks no API server');
    now = 61_000;
    await check('good');
    assert.equal(reviews, 4, 'the decision expires');
  });
});
