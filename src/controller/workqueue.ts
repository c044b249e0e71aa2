// A work queue with controller-runtime's semantics: a key waiting to be processed is queued
// once however often it is added; a key is never handed to two workers at once (an add while
// it is processed queues it again after `done`); failures back off per key, exponentially
// with jitter, until `forget`.
import type { WorkQueueMetrics } from '../telemetry/metrics.ts';
import { type BackoffPolicy, backoffDelay } from '../util/backoff.ts';
import { type Clock, systemClock } from '../util/clock.ts';

export interface WorkQueueOptions {
  backoff?: BackoffPolicy;
  clock?: Clock;
  /** Returns a factor in [0, 1) spreading retries of many keys apart; injectable for tests. */
  random?: () => number;
  /** controller-runtime's workqueue_* metrics; none by default. */
  metrics?: WorkQueueMetrics;
}

export class WorkQueue<K> {
  readonly #queue: K[] = [];
  readonly #dirty = new Set<K>();
  readonly #processing = new Set<K>();
  readonly #waiters: ((key: K | undefined) => void)[] = [];
  readonly #failures = new Map<K, number>();
  readonly #delayed = new Map<K, { at: number; cancel: () => void }>();
  readonly #backoff: BackoffPolicy;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #metrics: WorkQueueMetrics | undefined;
  /** When each queued key was queued, and when each processed key was handed out. */
  readonly #queuedAt = new Map<K, number>();
  readonly #startedAt = new Map<K, number>();
  #shuttingDown = false;

  constructor(options: WorkQueueOptions = {}) {
    this.#backoff = options.backoff ?? { baseMs: 1_000, maxMs: 5 * 60_000 };
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#metrics = options.metrics;
  }

  get length(): number {
    return this.#queue.length;
  }

  add(key: K): void {
    if (this.#shuttingDown || this.#dirty.has(key)) return;
    this.#metrics?.added();
    this.#dirty.add(key);
    if (this.#processing.has(key)) return;
    this.#enqueue(key);
  }

  #enqueue(key: K): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#dirty.delete(key);
      this.#start(key, this.#clock.now());
      waiter(key);
    } else {
      this.#queue.push(key);
      this.#queuedAt.set(key, this.#clock.now());
      this.#metrics?.depth(this.#queue.length);
    }
  }

  #start(key: K, queuedAt: number): void {
    const now = this.#clock.now();
    this.#processing.add(key);
    this.#startedAt.set(key, now);
    this.#metrics?.started((now - queuedAt) / 1000);
  }

  /** Adds the key after `delayMs`; an earlier pending add of the same key wins. */
  addAfter(key: K, delayMs: number): void {
    if (this.#shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = this.#clock.now() + delayMs;
    const pending = this.#delayed.get(key);
    if (pending && pending.at <= at) return;
    pending?.cancel();
    const cancel = this.#clock.schedule(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, delayMs);
    this.#delayed.set(key, { at, cancel });
  }

  /** Re-adds a failed key after its per-key exponential backoff. */
  addRateLimited(key: K): number {
    const failures = (this.#failures.get(key) ?? 0) + 1;
    this.#failures.set(key, failures);
    const delay = backoffDelay(failures, this.#backoff, this.#random);
    this.#metrics?.retried();
    this.addAfter(key, delay);
    return delay;
  }

  /** Clears the key's failure history after a success or a terminal failure. */
  forget(key: K): void {
    this.#failures.delete(key);
  }

  failures(key: K): number {
    return this.#failures.get(key) ?? 0;
  }

  /** The next key to process, or undefined once the queue shuts down. Call `done` after. */
  get(): Promise<K | undefined> {
    const key = this.#queue.shift();
    if (key !== undefined) {
      this.#dirty.delete(key);
      this.#metrics?.depth(this.#queue.length);
      this.#start(key, this.#queuedAt.get(key) ?? this.#clock.now());
      this.#queuedAt.delete(key);
      return Promise.resolve(key);
    }
    if (this.#shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  done(key: K): void {
    this.#processing.delete(key);
    const startedAt = this.#startedAt.get(key);
    this.#startedAt.delete(key);
    if (startedAt !== undefined) this.#metrics?.finished((this.#clock.now() - startedAt) / 1000);
    // An add while the key was processed: it is queued now, and was counted then.
    if (this.#dirty.has(key) && !this.#shuttingDown) this.#enqueue(key);
  }

  /** Stops handing out keys; waiting `get` calls resolve with undefined. */
  shutDown(): void {
    this.#shuttingDown = true;
    for (const { cancel } of this.#delayed.values()) cancel();
    this.#delayed.clear();
    for (const waiter of this.#waiters.splice(0)) waiter(undefined);
  }
}
