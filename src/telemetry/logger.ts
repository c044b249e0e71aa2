// Structured logs through pino, in the seed's shape: timestamp, level, component, message,
// plus job_id / correlation_id / image_url on job lines and trace_id / span_id whenever a span
// is active. JSON by default; LOG_FORMAT=text prints the seed's one-line text format.
import { isSpanContextValid, trace } from '@opentelemetry/api';
import { pino } from 'pino';
import { redactUrl } from '../storage/download/url.ts';

export type Logger = pino.Logger;
export type LogFormat = 'json' | 'text';
export const LOG_FORMATS: readonly LogFormat[] = ['json', 'text'];

export interface LoggerOptions {
  level: string;
  format?: LogFormat;
  component?: string;
  /** Where lines go; stdout by default. Tests pass a collector. */
  destination?: { write(line: string): void };
}

const REDACTED = '[redacted]';

/** Keeps scheme, host and path; drops user:password, the query (presigned signatures) and fragment. */
export function redactUrlText(text: string): string {
  try {
    return redactUrl(new URL(text));
  } catch {
    return REDACTED;
  }
}

/** The active span's IDs, so that a log line finds its trace. */
function traceFields(): Record<string, string> {
  const context = trace.getActiveSpan()?.spanContext();
  if (!context || !isSpanContextValid(context)) return {};
  return { trace_id: context.traceId, span_id: context.spanId };
}

const SEED_KEYS = new Set(['timestamp', 'level', 'component', 'message']);

/** `2026-01-27T10:30:45.123Z [INFO] provisioner: Starting image download (job_id=..., image_url=...)` */
export function formatTextLine(json: string): string {
  const record = JSON.parse(json) as Record<string, unknown>;
  const fields = Object.entries(record)
    .filter(([key, value]) => !SEED_KEYS.has(key) && value !== undefined)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  const head = `${String(record.timestamp)} [${String(record.level).toUpperCase()}] ${String(record.component)}: ${String(record.message ?? '')}`;
  return `${fields.length > 0 ? `${head} (${fields.join(', ')})` : head}\n`;
}

export function createLogger(options: LoggerOptions): Logger {
  const json = options.destination ?? pino.destination({ dest: 1, sync: true });
  const destination =
    options.format === 'text' ? { write: (line: string) => json.write(formatTextLine(line)) } : json;
  return pino(
    {
      level: options.level,
      base: { component: options.component ?? 'controller' },
      timestamp: () => `,"timestamp":"${new Date().toISOString()}"`,
      messageKey: 'message',
      formatters: { level: (label) => ({ level: label }) },
      mixin: traceFields,
      serializers: { image_url: redactUrlText, url: redactUrlText },
      // Credentials travel in Secrets and requests; never let them reach a log line.
      redact: {
        paths: [
          'credentials',
          '*.credentials',
          'secretKey',
          '*.secretKey',
          'accessKeyId',
          '*.accessKeyId',
          'token',
          '*.token',
          'authorization',
          '*.authorization',
          'headers.authorization',
          'req.headers.authorization',
        ],
        censor: REDACTED,
      },
    },
    destination,
  );
}
