// A real OTLP/gRPC trace receiver (scripts/rig/install-otlp-receiver.sh) that writes every span
// it receives as one JSON line, so tests can check what the controller exported.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, waitUntil } from './net.ts';
import { ManagedProcess } from './processes.ts';
import { otlpReceiverTool } from './tools.ts';

/** One span as the receiver writes it; IDs are lowercase hex. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** Empty for a root span. */
  parentSpanId: string;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client. */
  kind: number;
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  statusCode: number;
  statusMessage: string;
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
}

export interface OtlpReceiver {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT. */
  endpoint: string;
  spans(): ReceivedSpan[];
  stop(): Promise<void>;
}

export async function startOtlpReceiver(workDir: string): Promise<OtlpReceiver> {
  const port = await freePort();
  const out = join(workDir, 'spans.jsonl');
  const logFile = join(workDir, 'otlp-receiver.log');
  const process_ = new ManagedProcess({
    name: 'otlp-receiver',
    command: otlpReceiverTool(),
    args: ['-listen', `127.0.0.1:${port}`, '-out', out],
    logFile,
  });
  await waitUntil(async () => readFileSync(logFile, 'utf8').includes('listening'), {
    what: 'otlp-receiver',
    timeoutMs: 10_000,
    process: process_,
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    spans: () =>
      existsSync(out)
        ? readFileSync(out, 'utf8')
            .split('\n')
            .filter((line) => line !== '')
            .map((line) => JSON.parse(line) as ReceivedSpan)
        : [],
    stop: () => process_.stop(),
  };
}
