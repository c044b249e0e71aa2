// The bench's paced link must pass every byte through unchanged, both ways, and let go of its
// connections when closed; how fast it paces is the bench's business, not a test's.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startPacedLink } from '../../../bench/link.ts';

describe('startPacedLink', () => {
  const payload = randomBytes(3 * 1024 * 1024 + 17);
  let server: Server;
  let port: number;

  before(async () => {
    // Echoes the request's body length and serves the payload.
    server = createServer((request, response) => {
      let received = 0;
      request.on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
      request.on('end', () => {
        response.setHeader('x-received', String(received));
        response.end(payload);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  for (const roundTripMs of [0, 20]) {
    it(`passes requests and answers through unchanged (round trip ${roundTripMs} ms)`, async () => {
      const link = await startPacedLink(port, 500e6, roundTripMs);
      try {
        for (const body of ['', 'x'.repeat(100_000)]) {
          const response = await fetch(`http://127.0.0.1:${link.port}/`, { method: 'POST', body });
          assert.equal(response.headers.get('x-received'), String(body.length));
          assert.ok(Buffer.from(await response.arrayBuffer()).equals(payload));
        }
      } finally {
        await link.close();
      }
    });

    it(`delivers the whole answer of a server that closes after it (round trip ${roundTripMs} ms)`, async () => {
      const link = await startPacedLink(port, 50e6, roundTripMs);
      try {
        // At 50 MB/s the server has sent everything and closed long before the client has it.
        const response = await fetch(`http://127.0.0.1:${link.port}/`, { headers: { connection: 'close' } });
        assert.ok(Buffer.from(await response.arrayBuffer()).equals(payload));
      } finally {
        await link.close();
      }
    });
  }

  it('ends its connections when closed, and refuses new ones', async () => {
    const link = await startPacedLink(port, 1e6);
    // At 1 MB/s the 3 MiB answer is still on its way when the link closes.
    const response = await fetch(`http://127.0.0.1:${link.port}/`);
    const body = response.arrayBuffer();
    await link.close();
    await assert.rejects(body);
    await assert.rejects(fetch(`http://127.0.0.1:${link.port}/`));
  });
});
