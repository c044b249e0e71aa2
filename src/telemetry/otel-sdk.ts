// The OpenTelemetry SDK parts tracing.ts starts, in a module of their own: tracing.ts imports
// this one only when tracing is on, and the bundle (scripts/build.ts) keeps it in a separate
// chunk, so a controller without tracing never loads the SDK. Static imports here also give
// the bundle's CommonJS interop the named exports a dynamic import of the SDK would lose.
export { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
export { NodeSDK, tracing } from '@opentelemetry/sdk-node';
