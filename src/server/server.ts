// The controller's own HTTP(S) server, on its own port: health (/health, /healthz, /livez),
// readiness (/readyz) and Prometheus metrics (/metrics), optionally over TLS with client
// certificates (mTLS) and a bearer-token check on /metrics, as the seed's ServiceMonitor scrapes.
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import express, { type Express, type Request, type Response } from 'express';
import type { Logger } from '../telemetry/logger.ts';
import { atCapacity, type JobSlots, type ProvisionerMetrics } from '../telemetry/metrics.ts';
import { inSpan } from '../telemetry/tracing.ts';
import type { BearerCheck } from './auth.ts';

/** A readiness condition; /readyz is ready when all hold. */
export type ReadinessCheck = () => boolean | Promise<boolean>;

export interface ServerOptions {
  version: string;
  /** When the process started, for `uptime`. */
  startedAt: number;
  metrics: Pick<ProvisionerMetrics, 'registry' | 'requests' | 'requestDuration'>;
  jobSlots(): JobSlots;
  readiness: Record<string, ReadinessCheck>;
  /** Checks `Authorization: Bearer` on /metrics; none means /metrics is open. */
  metricsAuth?: BearerCheck;
  logger: Logger;
  now?: () => number;
}

/** PEM; with `clientCa`, clients must present a certificate signed by it. */
export interface TlsFiles {
  cert: string | Buffer;
  key: string | Buffer;
  clientCa?: string | Buffer;
}

export interface ListenOptions {
  port: number;
  address: string;
  tls?: TlsFiles;
}

export interface RunningServer {
  /** The bound port (useful with port 0). */
  port: number;
  /**
   * Serves new connections with new certificates (a renewal); open connections keep theirs.
   * Throws, keeping the old ones, when the new ones do not fit together (a key that is not the
   * certificate's) or the server was started without TLS.
   */
  setTls(tls: TlsFiles): void;
  close(): Promise<void>;
}

function secureContextOptions(tls: TlsFiles): SecureContextOptions {
  return { cert: tls.cert, key: tls.key, ...(tls.clientCa ? { ca: tls.clientCa } : {}) };
}

const ENDPOINTS = new Set(['/health', '/healthz', '/livez', '/readyz', '/metrics']);
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Label values stay bounded: unknown paths and methods never become series of their own. */
const endpointLabel = (path: string) => (ENDPOINTS.has(path) ? path : 'other');
const methodLabel = (method: string) => (METHODS.has(method) ? method : 'OTHER');

/** Go's time.Duration format, to the second: `3h14m52s`, `14m5s`, `52s`. */
export function formatUptime(milliseconds: number): string {
  const total = Math.max(0, Math.floor(milliseconds / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  if (hours > 0) return `${hours}h${minutes}m${seconds}s`;
  if (minutes > 0) return `${minutes}m${seconds}s`;
  return `${seconds}s`;
}

export function createApp(options: ServerOptions): Express {
  const now = options.now ?? Date.now;
  const { registry, requests, requestDuration } = options.metrics;
  const app = express();
  app.disable('x-powered-by');

  // Every request: one SERVER span (continuing the caller's trace), one count, one duration.
  app.use((req, res, next) => {
    const method = methodLabel(req.method);
    const endpoint = endpointLabel(req.path);
    const stopTimer = requestDuration.startTimer({ method, endpoint });
    const attributes = { 'http.request.method': method, 'http.route': endpoint };
    void inSpan(
      `${method} ${endpoint}`,
      attributes,
      (span) =>
        new Promise<void>((resolve) => {
          res.once('close', () => {
            span.setAttribute('http.response.status_code', res.statusCode);
            if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
            requests.inc({ method, endpoint, status: String(res.statusCode) });
            stopTimer();
            resolve();
          });
          next();
        }),
      { kind: SpanKind.SERVER, parent: propagation.extract(ROOT_CONTEXT, req.headers) },
    );
  });

  const health = (_req: Request, res: Response) => {
    res.json({
      status: atCapacity(options.jobSlots()) ? 'degraded' : 'healthy',
      timestamp: new Date(now()).toISOString().replace(/\.\d{3}Z$/, 'Z'),
      version: options.version,
      uptime: formatUptime(now() - options.startedAt),
    });
  };
  app.get(['/health', '/healthz', '/livez'], health);

  app.get('/readyz', async (_req, res) => {
    const checks: Record<string, boolean> = {};
    for (const [name, check] of Object.entries(options.readiness)) {
      try {
        checks[name] = await check();
      } catch {
        checks[name] = false;
      }
    }
    const ready = Object.values(checks).every(Boolean);
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', checks });
  });

  app.get('/metrics', async (req, res) => {
    if (options.metricsAuth) {
      const header = req.get('authorization') ?? '';
      const token = /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1];
      let result: Awaited<ReturnType<BearerCheck>> = 'unauthenticated';
      if (token) {
        try {
          result = await options.metricsAuth(token);
        } catch (error) {
          options.logger.warn({ err: (error as Error).message }, 'could not check a /metrics bearer token');
          res.status(503).type('text/plain').send('cannot check the bearer token now\n');
          return;
        }
      }
      if (result === 'unauthenticated') {
        res.set('WWW-Authenticate', 'Bearer').status(401).type('text/plain').send('Unauthorized\n');
        return;
      }
      if (result === 'forbidden') {
        res.status(403).type('text/plain').send('Forbidden\n');
        return;
      }
    }
    res.set('Content-Type', registry.contentType).send(await registry.metrics());
  });

  app.use((_req, res) => {
    res.status(404).type('text/plain').send('Not Found\n');
  });
  return app;
}

export async function startServer(options: ServerOptions, listen: ListenOptions): Promise<RunningServer> {
  const app = createApp(options);
  const tls = listen.tls;
  const server: Server | HttpsServer = tls
    ? createHttpsServer(
        {
          ...secureContextOptions(tls),
          ...(tls.clientCa ? { requestCert: true, rejectUnauthorized: true } : {}),
        },
        app,
      )
    : createHttpServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.address, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  return {
    port,
    setTls(next) {
      if (!('setSecureContext' in server)) throw new Error('the server was started without TLS');
      // A client CA cannot appear or vanish here: requestCert is fixed when the server starts.
      if (Boolean(next.clientCa) !== Boolean(tls?.clientCa))
        throw new Error('a client CA can only be added or removed by a restart');
      const options = secureContextOptions(next);
      createSecureContext(options); // throws on a mismatched pair before anything changes
      server.setSecureContext(options);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
