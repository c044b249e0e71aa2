// The order objects wait in for a job slot: by creation time, and within one second (the
// resolution of metadata.creationTimestamp) by the order their keys first reached the
// reconciler, which is the watch's event order, i.e. creation order for new objects. The
// order of submission alone is not that: a key is submitted after its finalizer patch comes
// back, and parallel workers' patches come back in any order.
import type { JobRank } from './runner.ts';

export class ArrivalOrder {
  readonly #arrivals = new Map<string, number>();
  #next = 0;

  /** Records `key` on its first call; call it before the reconcile's first await. */
  arrive(key: string): void {
    if (!this.#arrivals.has(key)) this.#arrivals.set(key, this.#next++);
  }

  /** `creationTimestamp` as the object's metadata has it: a string on the wire, whatever the client's type says. */
  rank(key: string, creationTimestamp: Date | string | undefined): JobRank {
    this.arrive(key);
    // An unparsable time ranks first: it cannot be placed, and must not wait forever.
    const created = new Date(creationTimestamp ?? 0).getTime();
    return [Number.isNaN(created) ? 0 : created, this.#arrivals.get(key) ?? 0];
  }

  /** The object is gone: a new one of the same name arrives anew. */
  forget(key: string): void {
    this.#arrivals.delete(key);
  }
}
