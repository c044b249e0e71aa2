// Measured stage rates (bytes per second) per stage, kept in the node's database. The progress
// split between download and conversion comes from their recent averages, as in the old
// service: the mean of the last 20 measurements per stage, with its defaults when none exist.
import { DEFAULT_STAGE_RATES, type StageRates } from '../../pipeline/progress.ts';
import { type StateDatabase, textColumn } from './database.ts';

export type RatedStage = keyof StageRates;

/** Measurements averaged per stage. */
export const RATE_WINDOW = 20;
/** Smaller transfers are dominated by fixed costs (requests, process start) and would skew the mean. */
export const MIN_MEASURED_BYTES = 1024 * 1024;

/** What the image cache needs to record the rate of its downloads. */
export interface RateRecorder {
  record(stage: RatedStage, bytes: number, seconds: number): boolean;
}

export class StageRateStore implements RateRecorder {
  readonly #database: StateDatabase;
  readonly #now: () => number;

  constructor(database: StateDatabase, now: () => number = Date.now) {
    this.#database = database;
    this.#now = now;
  }

  /**
   * Records that `stage` moved `bytes` in `seconds`. Returns false (recording nothing) for a
   * transfer under MIN_MEASURED_BYTES or a duration that is not positive.
   */
  record(stage: RatedStage, bytes: number, seconds: number): boolean {
    if (!(bytes >= MIN_MEASURED_BYTES) || !(seconds > 0) || !Number.isFinite(seconds)) return false;
    const connection = this.#database.connection;
    this.#database.transaction(() => {
      connection
        .prepare(
          'INSERT INTO stage_rates (stage, bytes, seconds, bytes_per_second, recorded_at) VALUES (?, ?, ?, ?, ?)',
        )
        .run(stage, bytes, seconds, bytes / seconds, this.#now());
      // Only the window is ever read; older rows would only grow the file.
      connection
        .prepare(
          'DELETE FROM stage_rates WHERE stage = ? AND id NOT IN (SELECT id FROM stage_rates WHERE stage = ? ORDER BY id DESC LIMIT ?)',
        )
        .run(stage, stage, RATE_WINDOW);
    });
    return true;
  }

  /** The mean of each stage's last RATE_WINDOW measurements; the default where there are none. */
  rates(): StageRates {
    const rows = this.#database.connection
      .prepare(
        `SELECT stage, AVG(bytes_per_second) AS rate FROM (
           SELECT stage, bytes_per_second,
                  ROW_NUMBER() OVER (PARTITION BY stage ORDER BY id DESC) AS position
           FROM stage_rates)
         WHERE position <= ? GROUP BY stage`,
      )
      .all(RATE_WINDOW);
    const rates: StageRates = { ...DEFAULT_STAGE_RATES };
    for (const row of rows) {
      const stage = textColumn(row, 'stage');
      const rate = row.rate;
      if ((stage === 'download' || stage === 'convert') && typeof rate === 'number') rates[stage] = rate;
    }
    return rates;
  }
}
