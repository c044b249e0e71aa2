// A network link of limited speed on loopback: a TCP proxy that paces what the server sends on
// each connection, and may delay what passes either way. Loopback moves bytes as fast as the
// CPU copies them, so there the download is CPU-bound; a real S3 or MinIO behind a network
// gives each connection a bandwidth and each request a round trip, and the question is then
// whether we keep up with the link as curl does. The proxy reads ahead of the client, so TCP's
// own window and slow start are not modelled, only the bandwidth and the delay.
import { connect, createServer, type Socket } from 'node:net';
import { type Readable, Transform } from 'node:stream';

export interface PacedLink {
  readonly port: number;
  close(): Promise<void>;
}

/** Passes chunks on no faster than `bytesPerSecond`, each at its slot (bursts of one chunk). */
function pacer(bytesPerSecond: number): Transform {
  const bytesPerMs = bytesPerSecond / 1000;
  let nextSlot = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      const now = performance.now();
      const slot = Math.max(nextSlot, now);
      nextSlot = slot + chunk.length / bytesPerMs;
      const delay = slot - now;
      if (delay >= 1) setTimeout(() => callback(null, chunk), delay);
      else callback(null, chunk);
    },
  });
}

/** Passes every chunk on `ms` after it arrived, in order, without holding up the next ones. */
function delay(ms: number): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      setTimeout(() => this.push(chunk), ms);
      callback();
    },
    flush(callback) {
      setTimeout(callback, ms);
    },
  });
}

/**
 * Listens on 127.0.0.1; each connection reaches `port` there, its answers paced, and what
 * passes either way delayed by half of `roundTripMs`.
 */
export async function startPacedLink(
  port: number,
  bytesPerSecond: number,
  roundTripMs = 0,
): Promise<PacedLink> {
  const oneWay = roundTripMs / 2;
  const delayed = (stream: Readable): Readable => (oneWay > 0 ? stream.pipe(delay(oneWay)) : stream);
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    }
    // The client gone, nothing is left to deliver; the server failing cuts the client off.
    // A server that closes after its answer (Connection: close) does not: the pipe ends the
    // client once the pacer has passed on the answer's last bytes.
    client.on('error', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    delayed(client).pipe(upstream);
    delayed(upstream.pipe(pacer(bytesPerSecond))).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the link has no TCP port');
  return {
    port: address.port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
