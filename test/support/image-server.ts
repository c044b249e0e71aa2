// A plain HTTP server on 127.0.0.1 that serves test images at a chosen pace, with Range
// support, so that tests can catch a job in the middle of its download.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ImageServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** Serves `content` at `/path`. */
  put(path: string, content: Buffer): void;
  /** Bytes per second for every transfer from now on; Infinity for full speed. */
  setRate(bytesPerSecond: number): void;
  readonly requests: string[];
  close(): Promise<void>;
}

const CHUNK = 64 * 1024;

export async function startImageServer(): Promise<ImageServer> {
  const files = new Map<string, Buffer>();
  const requests: string[] = [];
  let rate = Number.POSITIVE_INFINITY;
  const server: Server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    requests.push(`${request.method} ${path} ${request.headers.range ?? ''}`.trim());
    const content = files.get(path);
    if (!content) {
      response.writeHead(404).end('not found');
      return;
    }
    const range = /^bytes=(\d+)-(\d*)$/.exec(request.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    const end = range?.[2] ? Number(range[2]) : content.length - 1;
    const headers = { 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes', etag: '"v1"' };
    if (range) {
      response.writeHead(206, {
        ...headers,
        'content-length': end - start + 1,
        'content-range': `bytes ${start}-${end}/${content.length}`,
      });
    } else {
      response.writeHead(200, { ...headers, 'content-length': content.length });
    }
    if (request.method === 'HEAD') {
      response.end();
      return;
    }
    let offset = start;
    const send = () => {
      if (response.destroyed) return;
      if (offset > end) {
        response.end();
        return;
      }
      const next = Math.min(end + 1, offset + CHUNK);
      const ok = response.write(content.subarray(offset, next));
      const delay = Number.isFinite(rate) ? ((next - offset) / rate) * 1000 : 0;
      offset = next;
      if (delay > 0) setTimeout(send, delay);
      else if (ok) setImmediate(send);
      else response.once('drain', send);
    };
    send();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    put: (path, content) => void files.set(path, content),
    setRate: (bytesPerSecond) => {
      rate = bytesPerSecond;
    },
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
