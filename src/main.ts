// Entry point of the controller pod: load configuration, connect to the API server, start the
// controller, and stop it gracefully on SIGTERM within the configured timeout.
import { readFileSync } from 'node:fs';
import type { KubeConfig } from '@kubernetes/client-node';
import { CACHED_IMAGE, type CachedImage } from './api/v1alpha1.ts';
import { type Config, ConfigError, loadConfig } from './config/config.ts';
import { Controller } from './controller/controller.ts';
import { customObjectApi, eventRecorder, secretReader, volumeProvisionApi } from './k8s/api.ts';
import { errorMessage } from './k8s/errors.ts';
import { PooledKubeConfig } from './k8s/kube-config.ts';
import { createPipeline } from './pipeline/provisioner.ts';
import { type BearerCheck, kubernetesReviewApi, kubernetesTokenCheck } from './server/auth.ts';
import { readTlsFiles, reloadingTokenCheck, reloadServerTls } from './server/credentials.ts';
import type { FileReloader } from './server/file-reloader.ts';
import { startServer } from './server/server.ts';
import { dependencyProbes, startProbes, writableDir } from './telemetry/dependencies.ts';
import { createLogger, type Logger } from './telemetry/logger.ts';
import { ProvisionerMetrics } from './telemetry/metrics.ts';
import { startTracing } from './telemetry/tracing.ts';

/** `v` + package.json's version, as /health reports it. */
function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return `v${pkg.version}`;
}

function metricsAuth(
  config: Config,
  kubeConfig: KubeConfig,
  logger: Logger,
): { check?: BearerCheck; reloader?: FileReloader } {
  if (config.metricsAuth === 'token' && config.metricsTokenFile)
    return reloadingTokenCheck(config.metricsTokenFile, logger);
  if (config.metricsAuth === 'kubernetes')
    return { check: kubernetesTokenCheck(kubernetesReviewApi(kubeConfig), { path: '/metrics' }) };
  return {};
}

async function main(): Promise<void> {
  const startedAt = Date.now();
  let config: Config;
  try {
    config = loadConfig(process.argv.slice(2), process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`libvirt-volume-provisioner: invalid configuration: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  const serviceVersion = version();
  const tracing = await startTracing({
    endpoint: config.otlpEndpoint,
    serviceName: config.otelServiceName,
    serviceVersion,
  });
  const metrics = new ProvisionerMetrics();
  const kubeConfig = new PooledKubeConfig();
  kubeConfig.loadFromDefault();

  const eventOptions = {
    component: 'libvirt-volume-provisioner',
    host: config.nodeName,
    onError: (error: unknown) => logger.warn({ err: errorMessage(error) }, 'could not record an event'),
  };
  const controller = new Controller({
    nodeName: config.nodeName,
    kubeConfig,
    api: volumeProvisionApi(kubeConfig),
    secrets: secretReader(kubeConfig),
    cachedImageApi: customObjectApi<CachedImage>(kubeConfig, CACHED_IMAGE.plural),
    events: eventRecorder(kubeConfig, eventOptions),
    cachedImageEvents: eventRecorder<CachedImage>(kubeConfig, eventOptions),
    pipeline: await createPipeline(config, logger, metrics),
    logger,
    maxConcurrentJobs: config.maxConcurrentJobs,
    statusUpdateIntervalMs: config.statusUpdateIntervalSeconds * 1000,
    workers: config.workers,
    metrics: {
      jobs: metrics,
      // Queues are named after the kind in lower case, as controller-runtime names them.
      kind: ({ kind, plural }) => ({
        queue: metrics.workQueue(kind.toLowerCase()),
        informer: metrics.informer(plural),
      }),
    },
  });
  const jobSlots = () => ({ running: controller.runner.running, slots: controller.runner.slots });
  metrics.observeJobSlots(jobSlots);
  // The state database is already open here (createPipeline exits the process otherwise), so
  // storage stays ready while the cache folder stays writable.
  const storageReady = writableDir(config.cacheDir);
  const probes = startProbes(
    dependencyProbes(config, storageReady),
    (dependency, up) => metrics.dependencyUp(dependency, up),
    config.dependencyProbeIntervalSeconds * 1000,
  );
  const tlsPaths =
    config.tlsCertFile && config.tlsKeyFile
      ? {
          cert: config.tlsCertFile,
          key: config.tlsKeyFile,
          ...(config.tlsClientCaFile ? { clientCa: config.tlsClientCaFile } : {}),
        }
      : undefined;
  const tls = tlsPaths ? readTlsFiles(tlsPaths) : undefined;
  const auth = metricsAuth(config, kubeConfig, logger);
  const server = await startServer(
    {
      version: serviceVersion,
      startedAt,
      metrics,
      jobSlots,
      readiness: { informer: () => controller.hasSynced, storage: storageReady },
      ...(auth.check ? { metricsAuth: auth.check } : {}),
      logger,
    },
    { port: config.serverPort, address: config.serverAddress, ...(tls ? { tls } : {}) },
  );
  const reloaders = [
    ...(auth.reloader ? [auth.reloader] : []),
    ...(tlsPaths && tls ? [reloadServerTls(server, tlsPaths, tls, logger)] : []),
  ];

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    probes.stop();
    for (const reloader of reloaders) reloader.stop();
    void controller
      .stop(config.shutdownTimeoutSeconds * 1000)
      .then(() => Promise.all([server.close(), tracing?.shutdown()]))
      .then(() => {
        logger.info('stopped');
        process.exit(0);
      });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  controller.start();
  logger.info(
    {
      nodeName: config.nodeName,
      maxConcurrentJobs: config.maxConcurrentJobs,
      serverPort: server.port,
      tls: tls !== undefined,
      tracing: tracing !== undefined,
    },
    'controller started',
  );
}

main().catch((error: unknown) => {
  process.stderr.write(
    `libvirt-volume-provisioner: ${error instanceof Error ? error.stack : String(error)}\n`,
  );
  process.exit(1);
});
