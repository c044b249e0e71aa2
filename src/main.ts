// Entry point of the controller pod: load configuration, connect to the API server, start the
// controller, and stop it gracefully on SIGTERM within the configured timeout.
import { KubeConfig } from '@kubernetes/client-node';
import { ConfigError, loadConfig } from './config/config.ts';
import { Controller } from './controller/controller.ts';
import { eventRecorder, secretReader, volumeProvisionApi } from './k8s/api.ts';
import { errorMessage } from './k8s/errors.ts';
import { createPipeline } from './pipeline/provisioner.ts';
import { createLogger } from './telemetry/logger.ts';

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.argv.slice(2), process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`libvirt-volume-provisioner: invalid configuration: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger(config.logLevel);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromDefault();

  const controller = new Controller({
    nodeName: config.nodeName,
    kubeConfig,
    api: volumeProvisionApi(kubeConfig),
    secrets: secretReader(kubeConfig),
    events: eventRecorder(kubeConfig, {
      component: 'libvirt-volume-provisioner',
      host: config.nodeName,
      onError: (error) => logger.warn({ err: errorMessage(error) }, 'could not record an event'),
    }),
    pipeline: await createPipeline(config, logger),
    logger,
    maxConcurrentJobs: config.maxConcurrentJobs,
    statusUpdateIntervalMs: config.statusUpdateIntervalSeconds * 1000,
    workers: config.workers,
  });

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    void controller.stop(config.shutdownTimeoutSeconds * 1000).then(() => {
      logger.info('stopped');
      process.exit(0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  controller.start();
  logger.info(
    { nodeName: config.nodeName, maxConcurrentJobs: config.maxConcurrentJobs },
    'controller started',
  );
}

main().catch((error: unknown) => {
  process.stderr.write(
    `libvirt-volume-provisioner: ${error instanceof Error ? error.stack : String(error)}\n`,
  );
  process.exit(1);
});
