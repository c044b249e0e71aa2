// Runs provisioning jobs under a semaphore: at most `slots` at once, the rest waiting in line
// (by rank, else first come, first served) with a visible queue position. Every job gets an
// AbortSignal; the abort reason says whether it was cancelled (the object is being deleted)
// or handed back (shutdown).

export type JobTask = (signal: AbortSignal) => Promise<void>;

/**
 * A job's place in line, compared element by element, lower first: e.g. [created at, arrival].
 * Equal ranks (and the default, none) keep the order of submission.
 */
export type JobRank = readonly number[];

function compareRanks(a: JobRank, b: JobRank): number {
  for (let index = 0; index < Math.max(a.length, b.length); index += 1) {
    const difference = (a[index] ?? 0) - (b[index] ?? 0);
    if (difference !== 0) return difference;
  }
  return 0;
}

/** Why a job's signal was aborted. */
export class JobAbort extends Error {
  readonly kind: 'cancelled' | 'shutdown';

  constructor(kind: 'cancelled' | 'shutdown') {
    super(kind === 'cancelled' ? 'job cancelled' : 'controller shutting down');
    this.name = 'JobAbort';
    this.kind = kind;
  }
}

interface Job {
  key: string;
  task: JobTask;
  rank: JobRank;
  controller: AbortController;
  settled: Promise<void>;
  settle: () => void;
}

export interface JobRunnerObserver {
  /** The waiting keys changed order or membership; position 1 is next. */
  queueChanged?(waiting: readonly string[]): void;
  /** The job for `key` finished, failed or was aborted; `error` is set if its task threw. */
  finished?(key: string, error?: unknown): void;
  /** The set of running jobs changed. */
  activeChanged?(running: number): void;
}

export class JobRunner {
  readonly #slots: number;
  readonly #waiting: Job[] = [];
  readonly #running = new Map<string, Job>();
  readonly #observer: JobRunnerObserver;
  #accepting = true;

  constructor(slots: number, observer: JobRunnerObserver = {}) {
    if (!Number.isInteger(slots) || slots < 1)
      throw new Error(`job slots must be a positive integer, got ${slots}`);
    this.#slots = slots;
    this.#observer = observer;
  }

  get slots(): number {
    return this.#slots;
  }

  get running(): number {
    return this.#running.size;
  }

  /** 0 while running, 1.. while waiting, undefined when the runner does not know the key. */
  positionOf(key: string): number | undefined {
    if (this.#running.has(key)) return 0;
    const index = this.#waiting.findIndex((job) => job.key === key);
    return index === -1 ? undefined : index + 1;
  }

  has(key: string): boolean {
    return this.positionOf(key) !== undefined;
  }

  /**
   * Queues a job for `key` unless one is already waiting or running, behind every waiting job
   * of a lower or equal rank. Returns whether it was queued.
   */
  submit(key: string, task: JobTask, rank: JobRank = []): boolean {
    if (!this.#accepting || this.has(key)) return false;
    let settle = () => {};
    const settled = new Promise<void>((resolve) => {
      settle = resolve;
    });
    const job = { key, task, rank, controller: new AbortController(), settled, settle };
    const before = this.#waiting.findIndex((waiting) => compareRanks(rank, waiting.rank) < 0);
    if (before === -1) this.#waiting.push(job);
    else this.#waiting.splice(before, 0, job);
    this.#startNext();
    // Only now: a job that started at once was never waiting, and must not be shown queued
    // (its object would get a Queued status write just before its Initializing one).
    if (this.#waiting.includes(job)) this.#observer.queueChanged?.(this.#waitingKeys());
    return true;
  }

  /** Aborts the job for `key` and resolves once its task has returned. */
  async cancel(key: string): Promise<void> {
    const index = this.#waiting.findIndex((job) => job.key === key);
    if (index !== -1) {
      const [job] = this.#waiting.splice(index, 1);
      job?.settle();
      this.#observer.queueChanged?.(this.#waitingKeys());
      this.#observer.finished?.(key);
      return;
    }
    const job = this.#running.get(key);
    if (!job) return;
    job.controller.abort(new JobAbort('cancelled'));
    await job.settled;
  }

  /** Stops taking jobs, drops waiting ones and aborts running ones; resolves when all returned. */
  async shutDown(): Promise<void> {
    this.#accepting = false;
    for (const job of this.#waiting.splice(0)) job.settle();
    const running = [...this.#running.values()];
    for (const job of running) job.controller.abort(new JobAbort('shutdown'));
    await Promise.all(running.map((job) => job.settled));
  }

  #waitingKeys(): string[] {
    return this.#waiting.map((job) => job.key);
  }

  #startNext(): void {
    while (this.#accepting && this.#running.size < this.#slots) {
      const job = this.#waiting.shift();
      if (!job) return;
      this.#running.set(job.key, job);
      this.#observer.activeChanged?.(this.#running.size);
      this.#observer.queueChanged?.(this.#waitingKeys());
      void this.#execute(job);
    }
  }

  async #execute(job: Job): Promise<void> {
    let error: unknown;
    try {
      await job.task(job.controller.signal);
    } catch (thrown) {
      error = thrown;
    }
    this.#running.delete(job.key);
    job.settle();
    this.#observer.activeChanged?.(this.#running.size);
    this.#observer.finished?.(job.key, error);
    this.#startNext();
  }
}
