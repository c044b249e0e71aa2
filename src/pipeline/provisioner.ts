// The Pipeline the controller drives: source → node cache → inspection → conversion into
// the target → optional libvirt pool refresh. Each external tool sits behind its own small
// interface in storage/; this file only orders the steps and reports progress.
import { parseQuantity } from '../api/quantity.ts';
import type { Config } from '../config/config.ts';
import { ImageCache } from '../storage/cache/image-cache.ts';
import { createDownloader, type Downloader } from '../storage/download/index.ts';
import { type LibvirtPools, virshPools } from '../storage/libvirt/virsh.ts';
import { LvmCommand } from '../storage/lvm/command.ts';
import { LvmVolumeManager } from '../storage/lvm/volumes.ts';
import { inspectImage } from '../storage/qemu-img/inspect.ts';
import { createQemuImg, type QemuImg } from '../storage/qemu-img/qemu-img.ts';
import type { Logger } from '../telemetry/logger.ts';
import { type Clock, systemClock } from '../util/clock.ts';
import { DEFAULT_STAGE_RATES, ProgressTracker, type StageRates } from './progress.ts';
import { FileTargets, LvmTargets, type TargetBackend } from './targets.ts';
import {
  type Pipeline,
  PipelineError,
  type ProvisionOptions,
  type ProvisionRequest,
  type ProvisionResult,
} from './types.ts';

export interface ProvisionerDeps {
  downloader: Downloader;
  cache: ImageCache;
  qemuImg: QemuImg;
  targets: { lvm: TargetBackend; file: TargetBackend };
  libvirt: LibvirtPools;
  clock?: Clock;
  rates?: StageRates;
}

export class Provisioner implements Pipeline {
  readonly #deps: ProvisionerDeps;

  constructor(deps: ProvisionerDeps) {
    this.#deps = deps;
  }

  async provision(request: ProvisionRequest, options: ProvisionOptions): Promise<ProvisionResult> {
    const { spec } = request;
    const { signal, onProgress } = options;
    const clock = this.#deps.clock ?? systemClock;
    const rates = this.#deps.rates ?? DEFAULT_STAGE_RATES;
    let tracker = new ProgressTracker({ clock, cacheHit: false, rates });
    onProgress(tracker.report('Initializing', 0, 0));

    const sizeBytes = targetSize(spec.target.size);
    const source = {
      url: spec.source.url,
      ...(request.credentials ? { credentials: request.credentials } : {}),
      ...(spec.source.checksum ? { checksum: spec.source.checksum } : {}),
    };
    const stat = await this.#deps.downloader.stat(source, signal);
    const entry = await this.#deps.cache.acquire(source, stat, {
      signal,
      onProgress: (done, total) => onProgress(tracker.report('Downloading', done, total)),
    });
    if (entry.hit) tracker = new ProgressTracker({ clock, cacheHit: true, rates });
    signal.throwIfAborted();

    const info = await inspectImage(this.#deps.qemuImg, entry.path, spec.source.format, sizeBytes);
    const backend = this.#deps.targets[spec.target.type];
    const preparation = await backend.prepare(request.uid, spec, sizeBytes);
    if (preparation.complete) {
      // Written and committed before a restart: nothing left but the final steps.
      onProgress(tracker.report('Finalizing', 0, 0));
      await this.#refreshPool(spec.target.libvirtPool);
      return { devicePath: preparation.devicePath, virtualSize: info.virtualSize, cacheHit: entry.hit };
    }
    const { target } = preparation;
    onProgress(tracker.report('Converting', 0, info.virtualSize));
    try {
      await this.#deps.qemuImg.convert({
        source: entry.path,
        sourceFormat: spec.source.format,
        target: target.writePath,
        targetIsBlockDevice: target.isBlockDevice,
        signal,
        onProgress: (percent) =>
          onProgress(tracker.report('Converting', (percent / 100) * info.virtualSize, info.virtualSize)),
      });
    } catch (error) {
      await target.discard();
      throw error;
    }
    onProgress(tracker.report('Finalizing', 0, 0));
    await target.commit();
    await this.#refreshPool(spec.target.libvirtPool);
    return { devicePath: target.devicePath, virtualSize: info.virtualSize, cacheHit: entry.hit };
  }

  async release(request: Pick<ProvisionRequest, 'uid' | 'spec'>): Promise<void> {
    await this.#deps.targets[request.spec.target.type].release(request.uid, request.spec);
    await this.#refreshPool(request.spec.target.libvirtPool);
  }

  async #refreshPool(pool: string | undefined): Promise<void> {
    if (pool) await this.#deps.libvirt.refresh(pool);
  }
}

function targetSize(size: string | number): number {
  try {
    return parseQuantity(size);
  } catch (error) {
    throw new PipelineError('InvalidTargetSize', (error as Error).message, { terminal: true });
  }
}

/** The production pipeline for this node, from the controller's configuration. */
export async function createPipeline(config: Config, logger: Logger): Promise<Pipeline> {
  const downloader = createDownloader(
    config.s3Endpoint ? { s3Endpoint: { url: config.s3Endpoint, region: config.s3Region } } : {},
  );
  const cache = new ImageCache(config.cacheDir, downloader);
  const { removed } = await cache.open();
  if (removed.length > 0) logger.info({ removed }, 'removed partial files a previous run left in the cache');
  return new Provisioner({
    downloader,
    cache,
    qemuImg: createQemuImg(),
    targets: {
      file: new FileTargets({ dir: config.fileTargetDir, stateDir: config.stateDir }),
      lvm: new LvmTargets({
        volumes: new LvmVolumeManager(
          new LvmCommand(config.lvmCommandPrefix ? { prefix: config.lvmCommandPrefix.split(' ') } : {}),
        ),
        defaultVolumeGroup: config.defaultVolumeGroup,
      }),
    },
    libvirt: virshPools({ uri: config.libvirtUri }),
  });
}
