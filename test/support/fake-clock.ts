// A Clock whose time moves only when a test says so.
import type { Clock } from '../../src/util/clock.ts';

export class FakeClock implements Clock {
  #now = 1_000_000;
  #timers: { at: number; callback: () => void; cancelled: boolean }[] = [];

  now(): number {
    return this.#now;
  }

  schedule(callback: () => void, delayMs: number): () => void {
    const timer = { at: this.#now + delayMs, callback, cancelled: false };
    this.#timers.push(timer);
    return () => {
      timer.cancelled = true;
    };
  }

  /** Moves time forward, firing due timers in order. */
  advance(ms: number): void {
    const target = this.#now + ms;
    for (;;) {
      const due = this.#timers
        .filter((timer) => !timer.cancelled && timer.at <= target)
        .sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.#now = due.at;
      due.cancelled = true;
      due.callback();
    }
    this.#now = target;
    this.#timers = this.#timers.filter((timer) => !timer.cancelled);
  }

  get pending(): number {
    return this.#timers.filter((timer) => !timer.cancelled).length;
  }
}
