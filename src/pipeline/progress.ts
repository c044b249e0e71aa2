// Turns stage-local progress into the object's overall percent and ETA. A cache miss splits
// 0–100 % between download and conversion in proportion to their expected durations (from
// the measured stage rates); a cache hit gives conversion the whole range, and a raw image
// written into the target while it downloads gives nearly all of it to the download.
// Percentages only rise, so progress never goes backwards when a stage restarts.
import type { Clock } from '../util/clock.ts';
import type { PipelineStage, ProgressReport } from './types.ts';

/** Bytes per second each stage is expected to reach; the old service's defaults. */
export interface StageRates {
  download: number;
  convert: number;
}

export const DEFAULT_STAGE_RATES: StageRates = { download: 100e6, convert: 200e6 };

/**
 * The download's share when it writes the target as it goes: the download is the whole job.
 * The rest stays for a conversion, should the writing stop early and qemu-img take over, so
 * progress still rises through it instead of standing at 100 %.
 */
export const WRITTEN_WHILE_DOWNLOADING_SHARE = 0.95;

export class ProgressTracker {
  readonly #clock: Clock;
  readonly #downloadShare: number;
  readonly #cacheHit: boolean;
  #overall = 0;
  #stage: PipelineStage = 'Initializing';
  #stagePercent = 0;
  #stageStartedAt: number;

  constructor(options: {
    clock: Clock;
    cacheHit: boolean;
    rates: StageRates;
    /** The image is written into the target while it downloads (raw-mirror.ts). */
    writtenWhileDownloading?: boolean;
  }) {
    this.#clock = options.clock;
    this.#cacheHit = options.cacheHit;
    // For the same bytes, the expected time of each stage is inversely proportional to its rate.
    const downloadTime = 1 / options.rates.download;
    const convertTime = 1 / options.rates.convert;
    if (options.cacheHit) this.#downloadShare = 0;
    else if (options.writtenWhileDownloading) this.#downloadShare = WRITTEN_WHILE_DOWNLOADING_SHARE;
    else this.#downloadShare = downloadTime / (downloadTime + convertTime);
    this.#stageStartedAt = options.clock.now();
  }

  /** The report for `stage` at `bytesDone` of `bytesTotal`. */
  report(stage: PipelineStage, bytesDone: number, bytesTotal: number): ProgressReport {
    const now = this.#clock.now();
    if (stage !== this.#stage) {
      this.#stage = stage;
      this.#stagePercent = 0;
      this.#stageStartedAt = now;
    }
    const fraction = bytesTotal > 0 ? Math.min(1, bytesDone / bytesTotal) : 0;
    this.#stagePercent = Math.max(this.#stagePercent, fraction * 100);
    const [start, span] = this.#range(stage);
    this.#overall = Math.max(this.#overall, start + (span * this.#stagePercent) / 100);
    const elapsedSeconds = (now - this.#stageStartedAt) / 1000;
    const report: ProgressReport = {
      stage,
      stagePercent: round(this.#stagePercent),
      overallPercent: round(this.#overall),
      // qemu-img reports a percent, so a stage's bytes can come as a fraction.
      bytesProcessed: Math.round(bytesDone),
      bytesTotal,
      cacheHit: this.#cacheHit,
    };
    // The ETA extrapolates the current stage's measured pace over what is left overall.
    if (this.#stagePercent > 0 && elapsedSeconds > 0 && span > 0) {
      const stageSecondsPerPercent = elapsedSeconds / this.#stagePercent;
      const overallPercentPerStagePercent = span / 100;
      report.etaSeconds = Math.round(
        ((100 - this.#overall) / overallPercentPerStagePercent) * stageSecondsPerPercent,
      );
    }
    return report;
  }

  #range(stage: PipelineStage): [start: number, span: number] {
    const download = this.#downloadShare * 100;
    switch (stage) {
      case 'Initializing':
        return [0, 0];
      case 'Downloading':
        return [0, download];
      case 'Converting':
        return [download, 100 - download];
      case 'Finalizing':
        return [100, 0];
    }
  }
}

const round = (value: number): number => Math.round(value * 100) / 100;
