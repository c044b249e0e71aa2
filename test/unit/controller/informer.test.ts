// The informer's recovery paths against a scripted HTTP server that speaks the list/watch
// protocol. The real API server covers the same paths in test/integration/controller.test.ts.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { Informer, type ObjectList } from '../../../src/controller/informer.ts';
import { waitUntil } from '../../rig/net.ts';

const object = (name: string, resourceVersion: string): KubernetesObject => ({
  metadata: { namespace: 'ns', name, resourceVersion },
});

/** Each watch request takes the next script: events to send, then how the stream ends. */
type WatchScript = { events: { type: string; object: unknown }[]; end: 'close' | 'hang' };

describe('Informer', () => {
  let server: Server;
  let config: KubeConfig;
  const watchScripts: WatchScript[] = [];
  const watchQueries: URLSearchParams[] = [];

  before(async () => {
    server = createServer((request, response) => {
      const url = new URL(request.url ?? '/', 'http://localhost');
      watchQueries.push(url.searchParams);
      const script = watchScripts.shift() ?? { events: [], end: 'hang' };
      response.writeHead(200, { 'content-type': 'application/json' });
      response.flushHeaders();
      for (const event of script.events) response.write(`${JSON.stringify(event)}\n`);
      if (script.end === 'close') response.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    config = new KubeConfig();
    config.loadFromOptions({
      // client-node allows plain HTTP only with skipTLSVerify.
      clusters: [
        {
          name: 'fake',
          server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
          skipTLSVerify: true,
        },
      ],
      users: [{ name: 'fake' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'fake' }],
      currentContext: 'fake',
    });
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  it('relists after 410 Gone and reports objects deleted meanwhile', async () => {
    const lists: ObjectList<KubernetesObject>[] = [
      { items: [object('a', '1'), object('b', '2')], metadata: { resourceVersion: '2' } },
      { items: [object('a', '1')], metadata: { resourceVersion: '9' } },
    ];
    let listCalls = 0;
    watchScripts.push({
      events: [{ type: 'ERROR', object: { kind: 'Status', code: 410, message: 'too old' } }],
      end: 'hang',
    });
    const events: string[] = [];
    const informer = new Informer<KubernetesObject>({
      kubeConfig: config,
      path: '/apis/x/v1/things',
      fieldSelector: 'spec.nodeName=n1',
      list: async (fieldSelector) => {
        assert.equal(fieldSelector, 'spec.nodeName=n1');
        listCalls += 1;
        return lists.shift() ?? { items: [object('a', '1')], metadata: { resourceVersion: '9' } };
      },
      handlers: {
        add: (o) => events.push(`add ${o.metadata?.name}`),
        update: (_p, o) => events.push(`update ${o.metadata?.name}`),
        delete: (o) => events.push(`delete ${o.metadata?.name}`),
      },
      watchTimeoutSeconds: 60,
    });
    informer.start();
    await waitUntil(async () => events.includes('delete b'), { what: 'the delete of b', timeoutMs: 5_000 });
    await informer.stop();
    assert.equal(listCalls, 2, 'one relist after the 410');
    assert.deepEqual(events, ['add a', 'add b', 'delete b']);
    assert.ok(informer.hasSynced);
    assert.equal(informer.get('ns/b'), undefined);
    const lastWatch = watchQueries.at(-1);
    assert.equal(lastWatch?.get('resourceVersion'), '9', 'the watch resumes from the relist');
    assert.equal(lastWatch?.get('fieldSelector'), 'spec.nodeName=n1');
    assert.equal(lastWatch?.get('allowWatchBookmarks'), 'true');
  });

  it('keeps retrying a failing list with backoff until it succeeds', async () => {
    let attempts = 0;
    const errors: number[] = [];
    const informer = new Informer<KubernetesObject>({
      kubeConfig: config,
      path: '/apis/x/v1/things',
      list: async () => {
        attempts += 1;
        if (attempts < 3) throw Object.assign(new Error('connection refused'), { code: 'ECONNREFUSED' });
        return { items: [object('c', '3')], metadata: { resourceVersion: '3' } };
      },
      handlers: { add: () => {}, update: () => {}, delete: () => {} },
      onError: (_error, retryInMs) => errors.push(retryInMs),
      backoff: { baseMs: 10, maxMs: 40 },
    });
    informer.start();
    await waitUntil(async () => informer.hasSynced, { what: 'the informer to sync', timeoutMs: 5_000 });
    await informer.stop();
    assert.equal(attempts, 3);
    assert.equal(errors.length, 2);
    assert.ok(
      errors.every((delay) => delay >= 5 && delay <= 40),
      `backoff delays ${errors}`,
    );
    assert.ok(informer.get('ns/c'));
  });

  it('resumes from the last resourceVersion, bookmarks included, and counts what it received', async () => {
    watchScripts.push({
      events: [
        { type: 'ADDED', object: object('d', '11') },
        { type: 'BOOKMARK', object: { metadata: { resourceVersion: '15' } } },
      ],
      end: 'close',
    });
    const before = watchQueries.length;
    const received: string[] = [];
    const informer = new Informer<KubernetesObject>({
      kubeConfig: config,
      path: '/apis/x/v1/things',
      list: async () => ({ items: [object('e', '10')], metadata: { resourceVersion: '10' } }),
      handlers: { add: () => {}, update: () => {}, delete: () => {} },
      metrics: { received: (source, objects) => received.push(`${source} ${objects}`) },
    });
    informer.start();
    await waitUntil(async () => watchQueries.length >= before + 2, {
      what: 'a second watch',
      timeoutMs: 5_000,
    });
    await informer.stop();
    assert.equal(watchQueries[before]?.get('resourceVersion'), '10');
    assert.equal(
      watchQueries[before + 1]?.get('resourceVersion'),
      '15',
      'resumed after the bookmark, without a relist',
    );
    assert.ok(informer.get('ns/d'));
    assert.deepEqual(received, ['list 1', 'watch 1'], 'the list item and the ADDED event, no bookmark');
  });
});
