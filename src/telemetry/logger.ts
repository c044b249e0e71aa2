// Structured JSON logs through pino. Every line carries `component`; job-scoped loggers add
// job_id and correlation_id (see docs/configuration.md for the fields).
import { pino } from 'pino';

export type Logger = pino.Logger;

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { component: 'controller' },
    timestamp: pino.stdTimeFunctions.isoTime,
    messageKey: 'message',
    formatters: { level: (label) => ({ level: label }) },
    // Credentials travel in Secrets and requests; never let them reach a log line.
    redact: {
      paths: ['credentials', '*.credentials', 'secretKey', '*.secretKey', 'authorization'],
      censor: '[redacted]',
    },
  });
}
