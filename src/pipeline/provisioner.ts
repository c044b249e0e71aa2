// The Pipeline the controller drives: source → node cache → inspection → conversion into
// the target → optional libvirt pool refresh. Each external tool sits behind its own small
// interface in storage/; this file only orders the steps and reports progress.
import { join } from 'node:path';
import type { Attributes, Span } from '@opentelemetry/api';
import { parseQuantity } from '../api/quantity.ts';
import type { ImageFormat, ImageSource } from '../api/v1alpha1.ts';
import type { Config, WhileDownloading } from '../config/config.ts';
import { blkdiscardZeroer } from '../storage/block/zero.ts';
import { ImageCache } from '../storage/cache/image-cache.ts';
import {
  createDownloader,
  DEFAULT_SYNC_INTERVAL_BYTES,
  type Downloader,
  type DownloadSource,
  ddPageCache,
  PARTIAL_FILE_PREFIX,
  type PageCache,
  type PartialFile,
  type SourceStat,
  TrailingEviction,
} from '../storage/download/index.ts';
import { type LibvirtPools, virshPools } from '../storage/libvirt/virsh.ts';
import { LvmCommand } from '../storage/lvm/command.ts';
import { LvmVolumeManager } from '../storage/lvm/volumes.ts';
import { inspectImage } from '../storage/qemu-img/inspect.ts';
import { createQemuImg, type QemuImg } from '../storage/qemu-img/qemu-img.ts';
import { rememberingInspections } from '../storage/qemu-img/remembered.ts';
import { type FileCloner, reflinkCloner } from '../storage/reflink/reflink.ts';
import { StateDatabase } from '../storage/state/database.ts';
import { StageRateStore } from '../storage/state/stage-rates.ts';
import { type Logger, redactUrlText } from '../telemetry/logger.ts';
import {
  type ImageOperation,
  imageErrorType,
  noopPipelineMetrics,
  type PipelineMetrics,
  storageErrorType,
} from '../telemetry/metrics.ts';
import { inSpan, recordFailure, startSpan } from '../telemetry/tracing.ts';
import { type Clock, systemClock } from '../util/clock.ts';
import { DEFAULT_STAGE_RATES, ProgressTracker, type StageRates } from './progress.ts';
import { Qcow2TargetMirror } from './qcow2-mirror.ts';
import { RawTargetMirror } from './raw-mirror.ts';
import {
  removeStaleSocketFolders,
  type StreamedConversion,
  StreamingConversion,
} from './streaming-conversion.ts';
import type { TargetMirror } from './target-mirror.ts';
import { FileTargets, LvmTargets, type PreparedTarget, type TargetBackend } from './targets.ts';
import {
  type CacheControl,
  type Pipeline,
  PipelineError,
  type ProvisionOptions,
  type ProvisionRequest,
  type ProvisionResult,
  type SourceCredentials,
} from './types.ts';

/** Where progress gets the stage rates from, and where conversions report theirs. */
export interface StageRateSource {
  rates(): StageRates;
  record(stage: 'convert', bytes: number, seconds: number): unknown;
}

export interface ProvisionerDeps {
  downloader: Downloader;
  cache: ImageCache;
  qemuImg: QemuImg;
  targets: { lvm: TargetBackend; file: TargetBackend };
  libvirt: LibvirtPools;
  /** Clones cached raw images into file targets where the file system shares blocks (reflink). */
  cloner?: FileCloner;
  clock?: Clock;
  /** Measured stage rates: read at the start of each job, fed after each conversion. */
  rates?: StageRateSource;
  metrics?: PipelineMetrics;
  /** How a qcow2 image may reach its target while it downloads (Config); by default auto. */
  convertWhileDownloading?: WhileDownloading;
  /**
   * How often a target's page cache is flushed and evicted, when a raw image is written into it
   * while it downloads or qemu-img converts into a file; by default as often as a download's.
   */
  pageCache?: { syncIntervalBytes: number; pageCache: PageCache };
}

/** Failures of the node's cache folder itself, as opposed to the source or the transfer. */
const STORAGE_REASONS = new Set(['InsufficientCacheSpace', 'CacheWriteFailed']);
const isStorageFailure = (error: unknown): boolean =>
  STORAGE_REASONS.has(String((error as { reason?: unknown } | undefined)?.reason)) ||
  typeof (error as { code?: unknown } | undefined)?.code === 'string';

export class Provisioner implements Pipeline, CacheControl {
  readonly #deps: ProvisionerDeps;
  readonly #pageCache: { syncIntervalBytes: number; pageCache: PageCache };

  constructor(deps: ProvisionerDeps) {
    this.#deps = deps;
    this.#pageCache = deps.pageCache ?? {
      syncIntervalBytes: DEFAULT_SYNC_INTERVAL_BYTES,
      pageCache: ddPageCache(),
    };
  }

  async provision(request: ProvisionRequest, options: ProvisionOptions): Promise<ProvisionResult> {
    const { spec } = request;
    const { signal, onProgress } = options;
    const clock = this.#deps.clock ?? systemClock;
    const metrics = this.#deps.metrics ?? noopPipelineMetrics;
    /** Counts a failure of one image step, unless the job was stopped on purpose. */
    const imageStep = async <T>(operation: ImageOperation, step: () => Promise<T>): Promise<T> => {
      try {
        return await step();
      } catch (error) {
        if (!signal.aborted) metrics.imageError(operation, imageErrorType(error));
        throw error;
      }
    };
    const rates = this.#deps.rates?.rates() ?? DEFAULT_STAGE_RATES;
    let tracker = new ProgressTracker({ clock, cacheHit: false, rates });
    onProgress(tracker.report('Initializing', 0, 0));

    const sizeBytes = targetSize(spec.target.size);
    const source = {
      url: spec.source.url,
      ...(request.credentials ? { credentials: request.credentials } : {}),
      ...(spec.source.checksum ? { checksum: spec.source.checksum } : {}),
    };
    const backend = this.#deps.targets[spec.target.type];
    // Checked alongside the stat, before a byte is downloaded: a volume that can never be
    // written (its name taken, no volume group) fails the job now, not after the download.
    // A raw image into a file is cloned from the cache where the file system can (reflink):
    // then nothing is written into the target while downloading, and nothing converted after.
    const [stat, , cloning] = await Promise.all([
      imageStep('stat', () => this.#deps.downloader.stat(source, signal)),
      backend.check(request.uid, spec, sizeBytes),
      spec.source.format === 'raw' && spec.target.type === 'file'
        ? (this.#deps.cloner?.supported() ?? false)
        : false,
    ]);
    // A lookup is a miss as soon as bytes flow, whether or not the download then succeeds.
    let looked = false;
    const lookup = (hit: boolean) => {
      if (!looked) metrics.cacheLookup(hit);
      looked = true;
    };
    const volume = volumeAttributes(request.uid, spec, sizeBytes);
    const prepare = () => inSpan('CreateVolume', volume, () => backend.prepare(request.uid, spec, sizeBytes));
    // Written into the target while it downloads (see target-mirror.ts), so its target is
    // prepared first: a raw image that fits, and a qcow2 image into a file. Nothing reaches the
    // target before the header check.
    const whileDownloading = this.#deps.convertWhileDownloading ?? 'auto';
    const mirrorable =
      spec.source.format === 'raw'
        ? stat.sizeBytes <= sizeBytes && !cloning
        : whileDownloading === 'auto' && spec.target.type === 'file';
    const early = mirrorable ? await prepare() : undefined;
    const mirror =
      early && !early.complete
        ? this.#mirror(spec.source.format, early.target, stat, sizeBytes, options)
        : undefined;
    /** qemu-img into the target; a file target's pages are flushed and evicted as it goes. */
    const convertInto = async (
      target: PreparedTarget,
      convertSource: { path: string; isExport: boolean },
      virtualSize: number,
      onBytes: (bytes: number) => void,
    ) => {
      // qemu-img flushes a file target as it writes, but leaves its pages cached (qemu-img.ts).
      const eviction = target.isBlockDevice
        ? undefined
        : new TrailingEviction(
            this.#pageCache.pageCache,
            target.writePath,
            this.#pageCache.syncIntervalBytes,
          );
      try {
        await this.#deps.qemuImg.convert({
          source: convertSource.path,
          sourceFormat: spec.source.format,
          sourceIsExport: convertSource.isExport,
          target: target.writePath,
          targetIsBlockDevice: target.isBlockDevice,
          signal,
          onProgress: (percent) => {
            const bytes = (percent / 100) * virtualSize;
            eviction?.progressed(bytes);
            onBytes(bytes);
          },
        });
        await eviction?.finish();
      } catch (error) {
        await eviction?.idle();
        await target.discard();
        throw error;
      }
    };
    // A qcow2 image is converted while it downloads when the network is the limit (see
    // streaming-conversion.ts). Its progress shows once the download is done.
    let downloaded = false;
    let streamedBytes: { done: number; total: number } | undefined;
    const streaming =
      spec.source.format === 'qcow2' && !early && whileDownloading !== 'never'
        ? new StreamingConversion({
            qemuImg: this.#deps.qemuImg,
            imageBytes: stat.sizeBytes,
            targetSizeBytes: sizeBytes,
            convertRate: rates.convert,
            clock,
            signal,
            prepare,
            convert: (target, exportUrl, info) =>
              convertInto(target, { path: exportUrl, isExport: true }, info.virtualSize, (done) => {
                streamedBytes = { done, total: info.virtualSize };
                if (downloaded) onProgress(tracker.report('Converting', done, info.virtualSize));
              }),
            onStart: (downloadRate) => {
              options.logger?.info(
                {
                  download_bytes_per_second: Math.round(downloadRate),
                  convert_bytes_per_second: rates.convert,
                },
                'converting the image while it downloads',
              );
              tracker = new ProgressTracker({ clock, cacheHit: false, rates, writtenWhileDownloading: true });
            },
            onGiveUp: (reason) =>
              options.logger?.info({ reason }, 'stopped converting the image while it downloads'),
          })
        : undefined;
    let streamed: StreamedConversion | undefined;
    const discardEarly = async () => {
      if (early && !early.complete) await early.target.discard();
      await streamed?.target.discard();
    };
    const downloadStart = clock.now();
    let entry: Awaited<ReturnType<ImageCache['acquire']>>;
    let mirrored: boolean;
    const joined = new JoinedDownloadSpan(source);
    try {
      entry = await this.#deps.cache.acquire(source, stat, {
        signal,
        onProgress: (done, total) => {
          lookup(false);
          const seconds = (clock.now() - downloadStart) / 1000;
          if (seconds > 0) metrics.stageThroughput('download', done / seconds);
          onProgress(tracker.report('Downloading', done, total));
        },
        ...(mirror ? { mirror } : {}),
        ...(streaming ? { onWritten: (partial: PartialFile) => streaming.written(partial) } : {}),
        onDownload: (own) => {
          // This job's own download writes the target, or is all a clone needs: it is the
          // whole job, not a share.
          if (own && (mirror || cloning))
            tracker = new ProgressTracker({ clock, cacheHit: false, rates, writtenWhileDownloading: true });
          joined.onDownload(own);
        },
      });
      joined.succeeded(entry);
      mirrored = (await mirror?.finish(entry.path)) ?? false;
      downloaded = true;
      if (streamedBytes) onProgress(tracker.report('Converting', streamedBytes.done, streamedBytes.total));
      streamed = await streaming?.finish(true);
    } catch (error) {
      joined.failed(error);
      await mirror?.finish();
      await streaming?.finish(false);
      await discardEarly();
      if (!signal.aborted && isStorageFailure(error))
        metrics.storageOperation('acquire', storageErrorType(error));
      else if (!signal.aborted) metrics.imageError('download', imageErrorType(error));
      throw error;
    }
    // The lease keeps the image from eviction until it has been written into the target.
    try {
      metrics.storageOperation('acquire');
      lookup(entry.hit);
      if (entry.hit) tracker = new ProgressTracker({ clock, cacheHit: true, rates });
      else {
        metrics.imageDownloaded(spec.source.format, entry.sizeBytes);
        metrics.stageCompleted('download', (clock.now() - downloadStart) / 1000, entry.sizeBytes);
      }
      signal.throwIfAborted();

      const info = await imageStep('inspect', () =>
        inspectImage(this.#deps.qemuImg, entry.path, spec.source.format, sizeBytes),
      ).catch(async (error: unknown) => {
        await discardEarly();
        throw error;
      });
      const preparation =
        early ?? (streamed ? { complete: false as const, target: streamed.target } : await prepare());
      if (preparation.complete) {
        // Written and committed before a restart: nothing left but the final steps.
        onProgress(tracker.report('Finalizing', 0, 0));
        await this.#refreshPool(spec.target.libvirtPool);
        return { devicePath: preparation.devicePath, virtualSize: info.virtualSize, cacheHit: entry.hit };
      }
      const { target } = preparation;
      const populate = { ...volume, 'volume.device_path': target.devicePath, 'image.path': entry.path };
      const cloner = cloning ? this.#deps.cloner : undefined;
      const cloned =
        cloner !== undefined &&
        (await imageStep('convert', () => cloner.clone(entry.path, target.writePath)).catch(
          async (error: unknown) => {
            await target.discard();
            throw error;
          },
        ));
      if (cloned)
        options.logger?.info({ target: target.devicePath }, 'cloned the cached image into the target');
      if (mirrored || streamed || cloned) {
        onProgress(tracker.report('Finalizing', 0, 0));
        const how = cloned ? { 'volume.cloned': true } : { 'volume.written_while_downloading': true };
        await inSpan('PopulateVolume', { ...populate, ...how }, () => target.commit(info.virtualSize));
        await this.#refreshPool(spec.target.libvirtPool);
        return { devicePath: target.devicePath, virtualSize: info.virtualSize, cacheHit: entry.hit };
      }
      onProgress(tracker.report('Converting', 0, info.virtualSize));
      await inSpan('PopulateVolume', populate, async () => {
        const convertStart = clock.now();
        await imageStep('convert', () =>
          convertInto(target, { path: entry.path, isExport: false }, info.virtualSize, (bytes) => {
            const seconds = (clock.now() - convertStart) / 1000;
            if (seconds > 0) metrics.stageThroughput('convert', bytes / seconds);
            onProgress(tracker.report('Converting', bytes, info.virtualSize));
          }),
        );
        const convertSeconds = (clock.now() - convertStart) / 1000;
        metrics.stageCompleted('convert', convertSeconds, info.virtualSize);
        this.#deps.rates?.record('convert', info.virtualSize, convertSeconds);
        onProgress(tracker.report('Finalizing', 0, 0));
        await target.commit(info.virtualSize);
      });
      await this.#refreshPool(spec.target.libvirtPool);
      return { devicePath: target.devicePath, virtualSize: info.virtualSize, cacheHit: entry.hit };
    } finally {
      entry.release();
    }
  }

  #mirror(
    format: ImageFormat,
    target: PreparedTarget,
    stat: SourceStat,
    targetBytes: number,
    { signal, logger }: ProvisionOptions,
  ): TargetMirror {
    const options = {
      path: target.writePath,
      isBlockDevice: target.isBlockDevice,
      imageBytes: stat.sizeBytes,
      signal,
      ...this.#pageCache,
      onDetach: (reason: string) =>
        logger?.info({ reason }, `stopped writing the ${format} image while downloading`),
    };
    return format === 'raw'
      ? new RawTargetMirror(options)
      : new Qcow2TargetMirror({ ...options, targetBytes });
  }

  async release(request: Pick<ProvisionRequest, 'uid' | 'spec'>): Promise<void> {
    const { uid, spec } = request;
    await inSpan('DeleteVolume', volumeAttributes(uid, spec), () =>
      this.#deps.targets[spec.target.type].release(uid, spec),
    );
    await this.#refreshPool(spec.target.libvirtPool);
  }

  /** CacheControl for the CachedImage kind: stat the source, then pre-warm the node cache. */
  async prewarm(source: ImageSource, credentials: SourceCredentials | undefined, signal: AbortSignal) {
    const download = {
      url: source.url,
      ...(credentials ? { credentials } : {}),
      ...(source.checksum ? { checksum: source.checksum } : {}),
    };
    const stat = await this.#deps.downloader.stat(download, signal);
    const joined = new JoinedDownloadSpan(download);
    try {
      const entry = await this.#deps.cache.prewarm(download, stat, signal, (own) => joined.onDownload(own));
      joined.succeeded(entry);
      return entry;
    } catch (error) {
      joined.failed(error);
      throw error;
    }
  }

  evict(url: string): Promise<boolean> {
    return this.#deps.cache.evict(url);
  }

  async #refreshPool(pool: string | undefined): Promise<void> {
    if (pool) await this.#deps.libvirt.refresh(pool);
  }
}

/** The seed's "volume metadata" on CreateVolume, PopulateVolume and DeleteVolume. */
function volumeAttributes(uid: string, spec: ProvisionRequest['spec'], sizeBytes?: number) {
  return {
    'job.id': uid,
    'volume.name': spec.target.volumeName,
    'volume.type': spec.target.type,
    ...(spec.target.volumeGroup ? { 'volume.group': spec.target.volumeGroup } : {}),
    ...(sizeBytes === undefined ? {} : { 'volume.size_bytes': sizeBytes }),
  };
}

function downloadAttributes(source: DownloadSource, shared: boolean): Attributes {
  return { 'image.url': redactUrlText(source.url), 'image.download_shared': shared };
}

/**
 * A job's own download has its span (tracedDownloader). A job that joins another job's
 * download gets one here, in its own trace, for as long as it waits.
 */
class JoinedDownloadSpan {
  readonly #source: DownloadSource;
  #span: Span | undefined;

  constructor(source: DownloadSource) {
    this.#source = source;
  }

  /** The cache's answer on a miss: the download is this job's own, or joined. */
  onDownload(own: boolean): void {
    if (!own) this.#span = startSpan('DownloadImageToPath', downloadAttributes(this.#source, true));
  }

  succeeded(entry: { sizeBytes: number; path?: string }): void {
    this.#span?.setAttributes({
      ...(entry.path ? { 'image.destination_path': entry.path } : {}),
      'image.size_bytes': entry.sizeBytes,
    });
    this.#span?.end();
  }

  failed(error: unknown): void {
    // Not once it ended: a later step of the same try block may be what failed.
    if (!this.#span?.isRecording()) return;
    recordFailure(this.#span, error);
    this.#span.end();
  }
}

/** Every real download becomes a DownloadImageToPath span, child of the job waiting for it. */
export function tracedDownloader(downloader: Downloader): Downloader {
  return {
    stat: (source, signal) => downloader.stat(source, signal),
    download: (source: DownloadSource, options) =>
      inSpan(
        'DownloadImageToPath',
        { ...downloadAttributes(source, false), 'image.destination_path': options.destinationPath },
        async (span) => {
          const result = await downloader.download(source, options);
          span.setAttribute('image.size_bytes', result.sizeBytes);
          span.setAttribute('image.download_connections', result.connections);
          return result;
        },
      ),
  };
}

function targetSize(size: string | number): number {
  try {
    return parseQuantity(size);
  } catch (error) {
    throw new PipelineError('InvalidTargetSize', (error as Error).message, { terminal: true });
  }
}

/** The production pipeline for this node, from the controller's configuration. */
export async function createPipeline(
  config: Config,
  logger: Logger,
  metrics: PipelineMetrics = noopPipelineMetrics,
): Promise<Pipeline & CacheControl> {
  // One for downloads and the targets written while downloading or converting: a missing dd
  // is logged once.
  const pageCache = ddPageCache((message) => logger.warn(message));
  const downloader = tracedDownloader(
    createDownloader({
      pageCache,
      connections: config.downloadConnections,
      ...(config.s3Endpoint ? { s3Endpoint: { url: config.s3Endpoint, region: config.s3Region } } : {}),
    }),
  );
  const database = StateDatabase.open(join(config.stateDir, 'provisioner.db'));
  const rates = new StageRateStore(database);
  const cache = new ImageCache({
    dir: config.cacheDir,
    database,
    downloader,
    rates,
    logger,
    ...(config.cacheMaxBytes === undefined ? {} : { maxBytes: config.cacheMaxBytes }),
    ...(config.cacheMaxAgeHours === undefined ? {} : { maxAgeMs: config.cacheMaxAgeHours * 3_600_000 }),
  });
  const report = await cache.open();
  const staleSockets = await removeStaleSocketFolders();
  if (staleSockets.length > 0)
    logger.info(
      { folders: staleSockets },
      'removed NBD socket folders that conversions left before a restart',
    );
  if (report.removedFiles.length > 0 || report.removedEntries.length > 0) {
    logger.info(
      report,
      'cleaned up the node cache: partial downloads, orphan files, expired or missing entries',
    );
  }
  return new Provisioner({
    rates,
    metrics,
    convertWhileDownloading: config.convertWhileDownloading,
    downloader,
    pageCache: { syncIntervalBytes: DEFAULT_SYNC_INTERVAL_BYTES, pageCache },
    cache,
    qemuImg: rememberingInspections(createQemuImg()),
    targets: {
      file: new FileTargets({ dir: config.fileTargetDir, stateDir: config.stateDir }),
      lvm: new LvmTargets({
        zeroer: blkdiscardZeroer(),
        volumes: new LvmVolumeManager(
          new LvmCommand(config.lvmCommandPrefix ? { prefix: config.lvmCommandPrefix.split(' ') } : {}),
        ),
        defaultVolumeGroup: config.defaultVolumeGroup,
      }),
    },
    libvirt: virshPools({ uri: config.libvirtUri }),
    cloner: reflinkCloner(config.cacheDir, config.fileTargetDir, PARTIAL_FILE_PREFIX),
  });
}
