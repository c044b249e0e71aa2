// Writes VolumeProvision status as merge patches to /status, never flooding the API server:
// nothing is sent when the wanted status equals what was written; progress is coalesced to at
// most one patch per object per interval; a stage change (an "immediate" update) goes out at
// once. Writes of one object are serialised, so patches never overtake each other.
import type { KubernetesObject } from '@kubernetes/client-node';
import { mergePatch } from '../controller/status.ts';
import { type Clock, systemClock } from '../util/clock.ts';

export interface ObjectRef {
  namespace: string;
  name: string;
  uid: string;
}

export function refOf(object: KubernetesObject): ObjectRef {
  const { namespace = '', name = '', uid = '' } = object.metadata ?? {};
  return { namespace, name, uid };
}

export interface StatusApi {
  /** Applies a merge patch to the object's status subresource. */
  patchStatus(ref: ObjectRef, patch: object): Promise<void>;
}

export interface StatusWriterOptions {
  intervalMs: number;
  clock?: Clock;
  onError?(ref: ObjectRef, error: unknown): void;
}

interface Entry<S> {
  ref: ObjectRef;
  written: S | undefined;
  wanted: S;
  lastWriteAt: number;
  /** Writes started and not yet settled; their time of landing is not known yet. */
  writesInFlight: number;
  cancelTimer: (() => void) | undefined;
  chain: Promise<void>;
}

/** S is the kind's status type (VolumeProvisionStatus, CachedImageStatus). */
export class StatusWriter<S extends object> {
  readonly #api: StatusApi;
  readonly #options: StatusWriterOptions;
  readonly #clock: Clock;
  readonly #entries = new Map<string, Entry<S>>();

  constructor(api: StatusApi, options: StatusWriterOptions) {
    this.#api = api;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
  }

  /** The status most recently wanted for `uid`, written or not yet. */
  current(uid: string): S | undefined {
    return this.#entries.get(uid)?.wanted;
  }

  /** Records what the API server already holds, so an unchanged status is not written again. */
  observe(ref: ObjectRef, status: S | undefined): void {
    if (this.#entries.has(ref.uid)) return;
    this.#entries.set(ref.uid, {
      ref,
      written: status,
      wanted: status ?? ({} as S),
      lastWriteAt: Number.NEGATIVE_INFINITY,
      writesInFlight: 0,
      cancelTimer: undefined,
      chain: Promise.resolve(),
    });
  }

  /**
   * Sets the wanted status. With `immediate`, writes now and resolves once written; otherwise
   * the write happens when the object's coalescing interval allows.
   */
  async set(ref: ObjectRef, wanted: S, options: { immediate: boolean }): Promise<void> {
    this.observe(ref, undefined);
    const entry = this.#entries.get(ref.uid) as Entry<S>;
    entry.wanted = wanted;
    if (!mergePatch(entry.written, wanted)) return;
    const now = this.#clock.now();
    // A write still on its way counts as made now, so the next one waits a full interval.
    const lastWriteAt = entry.writesInFlight > 0 ? now : entry.lastWriteAt;
    const wait = lastWriteAt + this.#options.intervalMs - now;
    if (options.immediate || wait <= 0) {
      await this.#write(entry);
    } else if (!entry.cancelTimer) {
      entry.cancelTimer = this.#clock.schedule(() => {
        entry.cancelTimer = undefined;
        void this.#write(entry);
      }, wait);
    }
  }

  /** Drops all state for `uid` and any pending write: the object is gone or being deleted. */
  forget(uid: string): void {
    this.#entries.get(uid)?.cancelTimer?.();
    this.#entries.delete(uid);
  }

  /** Writes everything pending now; used at shutdown. */
  async flushAll(): Promise<void> {
    await Promise.all([...this.#entries.values()].map((entry) => this.#write(entry)));
  }

  #write(entry: Entry<S>): Promise<void> {
    entry.cancelTimer?.();
    entry.cancelTimer = undefined;
    entry.writesInFlight += 1;
    entry.chain = entry.chain.then(async () => {
      try {
        await this.#patchWanted(entry);
      } finally {
        entry.writesInFlight -= 1;
      }
    });
    return entry.chain;
  }

  async #patchWanted(entry: Entry<S>): Promise<void> {
    if (this.#entries.get(entry.ref.uid) !== entry) return;
    const wanted = entry.wanted;
    const patch = mergePatch(entry.written, wanted);
    if (!patch) return;
    try {
      // metadata.uid makes the patch conditional: it never lands on a recreated namesake.
      await this.#api.patchStatus(entry.ref, { metadata: { uid: entry.ref.uid }, status: patch });
      entry.written = wanted;
      entry.lastWriteAt = this.#clock.now();
    } catch (error) {
      this.#options.onError?.(entry.ref, error);
      if (!entry.cancelTimer && this.#entries.get(entry.ref.uid) === entry) {
        entry.cancelTimer = this.#clock.schedule(() => {
          entry.cancelTimer = undefined;
          void this.#write(entry);
        }, this.#options.intervalMs);
      }
    }
  }
}
