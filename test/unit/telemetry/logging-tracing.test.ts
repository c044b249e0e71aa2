// Log lines carry the seed's fields, the active span's IDs, and never a secret; spans nest
// and fail the way the seed's span names promise.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { context, SpanStatusCode, trace } from '@opentelemetry/api';
import { node, tracing } from '@opentelemetry/sdk-node';
import { createLogger, formatTextLine } from '../../../src/telemetry/logger.ts';
import { contextFromTraceparent, inJobSpan, inSpan } from '../../../src/telemetry/tracing.ts';

const exporter = new tracing.InMemorySpanExporter();
let provider: node.NodeTracerProvider;

function collect(format: 'json' | 'text' = 'json', level = 'info') {
  const lines: string[] = [];
  const logger = createLogger({ level, format, destination: { write: (line) => lines.push(line) } });
  return { logger, lines, records: () => lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

before(() => {
  provider = new node.NodeTracerProvider({ spanProcessors: [new tracing.SimpleSpanProcessor(exporter)] });
  provider.register();
});
after(async () => {
  await provider.shutdown();
  trace.disable();
  context.disable();
});

describe('logger', () => {
  it('writes the seed JSON fields, job fields from child bindings, and honours the level', () => {
    const { logger, records } = collect('json', 'info');
    const job = logger.child({ job_id: 'uid-1', correlation_id: 'provision-vm-001' });
    job.debug('not written');
    job.info('Starting image download');
    const [line] = records();
    assert.equal(records().length, 1);
    assert.match(String(line?.timestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(line?.level, 'info');
    assert.equal(line?.component, 'controller');
    assert.equal(line?.message, 'Starting image download');
    assert.equal(line?.job_id, 'uid-1');
    assert.equal(line?.correlation_id, 'provision-vm-001');
  });

  it('strips credentials and query strings from image URLs and redacts secret fields', () => {
    const { logger, lines } = collect();
    logger
      .child({ image_url: 'https://user:hunter2@minio.example.com/images/a.qcow2?X-Amz-Signature=abc' })
      .info({ secretKey: 's3cr3t', credentials: { accessKeyId: 'AKIA', secretKey: 'x' }, token: 'tok' }, 'm');
    const text = lines.join('');
    assert.match(text, /"image_url":"https:\/\/minio\.example\.com\/images\/a\.qcow2"/);
    for (const secret of ['hunter2', 'X-Amz-Signature', 's3cr3t', 'AKIA', '"tok"'])
      assert.ok(!text.includes(secret), `${secret} is not logged`);
  });

  it('prints the seed text line with LOG_FORMAT=text', () => {
    const { logger, lines } = collect('text');
    logger
      .child({ job_id: 'j1', image_url: 'https://minio.example.com/images/u.qcow2' })
      .info('Starting image download');
    assert.match(
      lines[0] ?? '',
      /^\d{4}-\d\d-\d\dT[\d:.]+Z \[INFO\] controller: Starting image download \(job_id=j1, image_url=https:\/\/minio\.example\.com\/images\/u\.qcow2\)\n$/,
    );
    assert.equal(
      formatTextLine('{"timestamp":"t","level":"warn","component":"server","message":"m"}'),
      't [WARN] server: m\n',
    );
  });

  it('adds trace_id and span_id of the active span', async () => {
    const { logger, records } = collect();
    logger.info('outside');
    let ids: { traceId: string; spanId: string } | undefined;
    await inSpan('work', {}, async (span) => {
      ids = span.spanContext();
      await Promise.resolve();
      logger.info('inside');
    });
    const [outside, inside] = records();
    assert.equal(outside?.trace_id, undefined);
    assert.equal(inside?.trace_id, ids?.traceId);
    assert.equal(inside?.span_id, ids?.spanId);
  });
});

describe('spans', () => {
  it('nests child spans under a job span that continues the traceparent of the creator', async () => {
    exporter.reset();
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parent = '00f067aa0ba902b7';
    await inJobSpan('runJob', { 'job.id': 'u1' }, `00-${traceId}-${parent}-01`, () =>
      inSpan('CreateVolume', { 'volume.name': 'v' }, async () => {}),
    );
    const spans = exporter.getFinishedSpans();
    const job = spans.find((span) => span.name === 'runJob');
    const child = spans.find((span) => span.name === 'CreateVolume');
    assert.equal(job?.spanContext().traceId, traceId);
    assert.equal(job?.parentSpanContext?.spanId, parent);
    assert.equal(child?.parentSpanContext?.spanId, job?.spanContext().spanId);
    assert.equal(job?.attributes['job.id'], 'u1');
  });

  it('marks a failing span as an error but an aborted one as not failed', async () => {
    exporter.reset();
    await assert.rejects(
      inSpan('PopulateVolume', {}, async () => Promise.reject(new Error('qemu-img failed'))),
    );
    const abort = Object.assign(new Error('job cancelled'), { name: 'JobAbort' });
    await assert.rejects(inSpan('DownloadImageToPath', {}, async () => Promise.reject(abort)));
    const [failed, aborted] = exporter.getFinishedSpans();
    assert.equal(failed?.status.code, SpanStatusCode.ERROR);
    assert.equal(failed?.status.message, 'qemu-img failed');
    assert.equal(aborted?.status.code, SpanStatusCode.UNSET);
    assert.equal(aborted?.attributes['lvp.aborted'], true);
  });

  it('starts a new trace for a missing or malformed traceparent', () => {
    for (const value of [undefined, 'garbage', `00-${'0'.repeat(32)}-${'1'.repeat(16)}-01`])
      assert.equal(trace.getSpanContext(contextFromTraceparent(value)), undefined, String(value));
  });
});
