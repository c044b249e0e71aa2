// OpenTelemetry traces over OTLP/gRPC, on only when OTEL_EXPORTER_OTLP_ENDPOINT is set. Code
// creates spans through @opentelemetry/api, which is a no-op until startTracing registers
// the SDK, so unit tests and a controller without an endpoint pay nothing: the SDK and the
// gRPC exporter (about 70 MB of resident memory) are only imported when tracing is on.
// Span names are the seed's: runJob / runCacheJob (jobs), DownloadImageToPath (image
// download), CreateVolume / PopulateVolume / DeleteVolume (volumes); see docs/observability.md.
import {
  type Attributes,
  type Context,
  context,
  isSpanContextValid,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';

export const TRACER_NAME = 'libvirt-volume-provisioner';

export interface TracingOptions {
  /** OTLP/gRPC endpoint, e.g. http://otel-collector:4317; tracing stays off without it. */
  endpoint: string | undefined;
  serviceName: string;
  serviceVersion: string;
}

export interface Tracing {
  /** Exports what is still buffered, then stops. */
  shutdown(): Promise<void>;
}

export async function startTracing(options: TracingOptions): Promise<Tracing | undefined> {
  if (!options.endpoint) return undefined;
  const { OTLPTraceExporter, NodeSDK, tracing } = await import('./otel-sdk.ts');
  const sdk = new NodeSDK({
    serviceName: options.serviceName,
    spanProcessors: [new tracing.BatchSpanProcessor(new OTLPTraceExporter({ url: options.endpoint }))],
    instrumentations: [],
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}

const tracer = () => trace.getTracer(TRACER_NAME);

/** A job stopped on purpose (deletion, shutdown) is not a failed span. */
function isAbort(error: unknown): boolean {
  const name = (error as { name?: unknown } | undefined)?.name;
  return name === 'JobAbort' || name === 'AbortError';
}

/** Marks the span failed with the error, or aborted when the job was stopped on purpose. */
export function recordFailure(span: Span, error: unknown): void {
  if (isAbort(error)) {
    span.setAttribute('lvp.aborted', true);
    return;
  }
  const message = error instanceof Error ? error.message : String(error);
  span.recordException(error instanceof Error ? error : new Error(message));
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

export interface SpanOptions {
  kind?: SpanKind;
  /** The parent; the active context by default. */
  parent?: Context;
}

/** Runs `fn` in a new active span that ends when `fn` settles and fails when it throws. */
export function inSpan<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span) => Promise<T>,
  options: SpanOptions = {},
): Promise<T> {
  return tracer().startActiveSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, attributes },
    options.parent ?? context.active(),
    async (span) => {
      try {
        return await fn(span);
      } catch (error) {
        recordFailure(span, error);
        throw error;
      } finally {
        span.end();
      }
    },
  );
}

/** Starts a child of the active span that the caller ends: for a wait that is not one call. */
export function startSpan(name: string, attributes: Attributes): Span {
  return tracer().startSpan(name, { kind: SpanKind.INTERNAL, attributes }, context.active());
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/**
 * The context a job's span starts in: a child of whoever created the object when it carries a
 * W3C `traceparent` (TRACEPARENT_ANNOTATION), else a new trace.
 */
export function contextFromTraceparent(traceparent: string | undefined): Context {
  const match = traceparent ? TRACEPARENT.exec(traceparent.trim()) : null;
  if (!match?.[1] || !match[2] || !match[3]) return ROOT_CONTEXT;
  const spanContext = {
    traceId: match[1],
    spanId: match[2],
    traceFlags: Number.parseInt(match[3], 16),
    isRemote: true,
  };
  return isSpanContextValid(spanContext) ? trace.setSpanContext(ROOT_CONTEXT, spanContext) : ROOT_CONTEXT;
}

/** A job's root span: `runJob` for a VolumeProvision, `runCacheJob` for a CachedImage pre-warm. */
export function inJobSpan<T>(
  name: 'runJob' | 'runCacheJob',
  attributes: Attributes,
  traceparent: string | undefined,
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  return inSpan(name, attributes, fn, { parent: contextFromTraceparent(traceparent) });
}

/**
 * A CLIENT span around one Kubernetes API request (`k8s PATCH volumeprovisions/status`). Long
 * watches are left out on purpose: a span that lasts as long as the process tells nothing.
 */
export function inKubernetesSpan<T>(
  method: 'GET' | 'LIST' | 'CREATE' | 'PATCH',
  resource: string,
  namespace: string | undefined,
  call: () => Promise<T>,
): Promise<T> {
  const attributes = {
    'k8s.request.verb': method.toLowerCase(),
    'k8s.resource': resource,
    ...(namespace ? { 'k8s.namespace.name': namespace } : {}),
  };
  return inSpan(`k8s ${method} ${resource}`, attributes, call, { kind: SpanKind.CLIENT });
}
