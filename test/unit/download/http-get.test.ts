// httpGet against real sockets on 127.0.0.1: node:http servers for well-formed answers, raw
// TCP servers for the ones node:http would never send.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer as createHttpServer, type RequestListener, type ServerResponse } from 'node:http';
import { type AddressInfo, createServer as createTcpServer, type Server, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { HttpProtocolError, httpGet, MAX_HEAD_BYTES } from '../../../src/storage/download/http-get.ts';

const servers: Server[] = [];
after(() => {
  for (const server of servers) server.close();
});

async function listen(server: Server): Promise<URL> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/disk.img?x-sig=a%2Fb`);
}

const httpServer = (listener: RequestListener) => listen(createHttpServer(listener));

/** A server that writes `pieces` one by one (so they arrive in separate reads) and closes. */
function rawServer(pieces: readonly (string | Buffer)[], { close = true } = {}): Promise<URL> {
  return listen(
    createTcpServer((socket: Socket) => {
      socket.once('data', async () => {
        for (const piece of pieces) {
          await new Promise<void>((resolve) => socket.write(piece, () => resolve()));
          await new Promise((resolve) => setImmediate(resolve));
        }
        if (close) socket.end();
      });
      socket.on('error', () => {});
    }),
  );
}

const get = (
  url: URL,
  options: { headers?: Record<string, string>; signal?: AbortSignal; batchBytes?: number } = {},
) =>
  httpGet(url, {
    headers: options.headers ?? {},
    signal: options.signal ?? new AbortController().signal,
    ...(options.batchBytes ? { batchBytes: options.batchBytes } : {}),
  });

/** Reads a body to its end, keeping each chunk. */
async function chunksOf(body: Readable): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return chunks;
}

/** Reads a body until it fails; returns what arrived before and the error. */
async function readUntilError(body: Readable): Promise<{ received: number; error: unknown }> {
  let received = 0;
  try {
    for await (const chunk of body) received += (chunk as Buffer).length;
  } catch (error) {
    return { received, error };
  }
  assert.fail('the body ended without an error');
}

describe('httpGet', () => {
  it('sends the path, query and headers, and reads a Content-Length body in batches', async () => {
    const content = randomBytes(1024 * 1024 + 7);
    let seen: Record<string, string | undefined> = {};
    const url = await httpServer((req, res) => {
      seen = {
        url: req.url,
        range: req.headers.range,
        connection: req.headers.connection,
        host: req.headers.host,
      };
      res.writeHead(200, { 'content-length': content.length, ETag: '"v1"' });
      res.end(content);
    });
    const response = await get(url, { headers: { range: 'bytes=0-' }, batchBytes: 64 * 1024 });
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers.etag, '"v1"');
    const chunks = await chunksOf(response.body);
    assert.deepEqual(Buffer.concat(chunks), content);
    assert.ok(chunks.every((chunk) => chunk.length <= 64 * 1024));
    assert.deepEqual(seen, {
      url: '/disk.img?x-sig=a%2Fb',
      range: 'bytes=0-',
      connection: undefined,
      host: url.host,
    });
  });

  it('decodes a chunked body that node:http sends', async () => {
    const pieces = [randomBytes(10), randomBytes(100_000), randomBytes(1), randomBytes(300_000)];
    const url = await httpServer(async (_req, res) => {
      res.writeHead(200);
      for (const piece of pieces) {
        await new Promise<void>((resolve) => res.write(piece, () => resolve()));
      }
      res.end();
    });
    const response = await get(url, { batchBytes: 64 * 1024 });
    assert.deepEqual(Buffer.concat(await chunksOf(response.body)), Buffer.concat(pieces));
  });

  it('decodes chunk framing split across reads, with extensions and trailers, one byte at a time', async () => {
    const answer =
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: 1\r\n\r\n';
    const url = await rawServer([...answer]);
    const response = await get(url);
    assert.equal(Buffer.concat(await chunksOf(response.body)).toString(), 'hello, world!!!');
  });

  it('reads a body without a length until the server closes', async () => {
    const url = await rawServer(['HTTP/1.1 200 OK\r\nServer: old\r\n\r\n', 'part one, ', 'part two']);
    const response = await get(url);
    assert.equal(Buffer.concat(await chunksOf(response.body)).toString(), 'part one, part two');
  });

  it('skips an informational answer before the real one', async () => {
    const url = await rawServer([
      'HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\n\r\nabc',
    ]);
    const response = await get(url);
    assert.equal(response.statusCode, 206);
    assert.equal(response.headers.link, undefined);
    assert.equal(Buffer.concat(await chunksOf(response.body)).toString(), 'abc');
  });

  it('keeps every value of a repeated header and ignores bytes past Content-Length', async () => {
    const url = await rawServer([
      'HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 4\r\n\r\nbodyEXTRA',
    ]);
    const response = await get(url);
    assert.deepEqual(response.headers['x-a'], ['1', '2']);
    assert.equal(Buffer.concat(await chunksOf(response.body)).toString(), 'body');
  });

  it('hands over the bytes that arrived, then fails, when the connection closes before Content-Length', async () => {
    const url = await rawServer(['HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n', Buffer.alloc(300, 1)]);
    const response = await get(url, { batchBytes: 64 * 1024 });
    const { received, error } = await readUntilError(response.body);
    assert.equal(received, 300);
    assert.match(String(error), /closed the connection before the end of the body/);
  });

  it('hands over bytes that wait for a batch to fill while the server sends nothing more', async () => {
    const url = await rawServer(['HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n', Buffer.alloc(300, 1)], {
      close: false,
    });
    const response = await get(url);
    const [first] = (await response.body.take(1).toArray()) as Buffer[];
    assert.equal(first?.length, 300);
    response.discard();
  });

  for (const [what, answer, message] of [
    ['a status line that is not HTTP/1.x', 'SSH-2.0-OpenSSH\r\n\r\n', /not an HTTP\/1\.1 status line/],
    [
      'both Transfer-Encoding and Content-Length',
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n',
      /both Transfer-Encoding and Content-Length/,
    ],
    [
      'a Transfer-Encoding other than chunked',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n',
      /unsupported Transfer-Encoding/,
    ],
    ['an invalid Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n', /invalid Content-Length/],
    [
      'a folded header line',
      'HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\n\r\n',
      /malformed response header line/,
    ],
    [
      'a head longer than the limit',
      `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(MAX_HEAD_BYTES)}\r\n\r\n`,
      /longer than/,
    ],
  ] as const) {
    it(`refuses ${what}`, async () => {
      const url = await rawServer([answer]);
      await assert.rejects(
        get(url),
        (error: unknown) => error instanceof HttpProtocolError && message.test(error.message),
      );
    });
  }

  it('fails the body on an invalid chunk size', async () => {
    const url = await rawServer(['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n']);
    const response = await get(url);
    const { error } = await readUntilError(response.body);
    assert.ok(error instanceof HttpProtocolError && /invalid chunk size/.test(error.message), String(error));
  });

  it('fails the body on a chunk longer than its size', async () => {
    const url = await rawServer([
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n',
    ]);
    const response = await get(url);
    const { error } = await readUntilError(response.body);
    assert.ok(
      error instanceof HttpProtocolError && /longer than its size/.test(error.message),
      String(error),
    );
  });

  it('fails when the server closes before a complete head', async () => {
    const url = await rawServer(['HTTP/1.1 200 OK\r\nContent-Le']);
    await assert.rejects(get(url), /before a complete response head/);
  });

  it('refuses a URL that is not http(s) before connecting anywhere', async () => {
    await assert.rejects(get(new URL('file:///etc/shadow')), /not an http\(s\) URL: file:/);
  });

  it('refuses a request header that would split the request', async () => {
    const url = await rawServer([]);
    await assert.rejects(get(url, { headers: { range: 'bytes=0-\r\nX-Evil: 1' } }), TypeError);
  });

  it('rejects with the reason when aborted before the answer, and fails the body when aborted during it', async () => {
    const silent = await rawServer([], { close: false });
    const early = new AbortController();
    const pending = get(silent, { signal: early.signal });
    early.abort(new Error('job cancelled'));
    await assert.rejects(pending, /job cancelled/);

    const slow = await rawServer(['HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc'], { close: false });
    const late = new AbortController();
    const response = await get(slow, { signal: late.signal });
    late.abort(new Error('job deleted'));
    const { error } = await readUntilError(response.body);
    assert.match(String(error), /job deleted/);
  });

  describe('kept-alive connections', () => {
    /** A node:http server that counts the connections it accepted. */
    async function countingServer(answer: (res: ServerResponse, request: number) => void) {
      let connections = 0;
      let requests = 0;
      const server = createHttpServer((_req, res) => answer(res, ++requests));
      server.on('connection', () => connections++);
      const url = await listen(server);
      return { url, connections: () => connections };
    }
    const body = Buffer.from('0123456789');

    it('carry the next request to the same server once an answer of known length was read', async () => {
      const { url, connections } = await countingServer((res) => res.end(body));
      for (let request = 0; request < 3; request++) {
        const response = await get(url);
        assert.deepEqual(Buffer.concat(await chunksOf(response.body)), body);
      }
      assert.equal(connections(), 1);
    });

    it('are not kept after an answer without a length, with Connection: close, or not read to its end', async () => {
      for (const answer of [
        (res: ServerResponse) => res.write(body, () => res.end()), // chunked: no length
        (res: ServerResponse) =>
          res.writeHead(200, { 'content-length': body.length, connection: 'close' }).end(body),
      ]) {
        const { url, connections } = await countingServer(answer);
        for (let request = 0; request < 2; request++) await chunksOf((await get(url)).body);
        assert.equal(connections(), 2);
      }
      // The second half comes later, so that the body is discarded before it is complete.
      const { url, connections } = await countingServer((res) => {
        res.writeHead(200, { 'content-length': 2 * body.length }).write(body);
        setTimeout(() => res.end(body), 50);
      });
      (await get(url)).discard();
      (await get(url)).body.destroy();
      await chunksOf((await get(url)).body);
      assert.equal(connections(), 3);
    });

    it('send the request again on a new connection when the server closed the kept-alive one', async () => {
      const answer = `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
      let connections = 0;
      // Answers the first request on each connection; a second one finds it closed.
      const url = await listen(
        createTcpServer((socket: Socket) => {
          connections++;
          let requests = 0;
          socket.on('data', () => {
            if (++requests === 1) socket.write(answer);
            else socket.destroy();
          });
          socket.on('error', () => {});
        }),
      );
      for (let request = 0; request < 2; request++) {
        const response = await get(url);
        assert.deepEqual(Buffer.concat(await chunksOf(response.body)), body);
      }
      assert.equal(connections, 2);
    });
  });
});
