// A list-watch cache in the manner of client-go's reflector, for one resource and one field
// selector. client-node's ListWatch stops for good after a watch error, has no watchdog and
// asks for no bookmarks; this one keeps going:
// - any error restarts the cycle after an exponential backoff with jitter;
// - 410 Gone (an expired resourceVersion) relists at once, and the relist is diffed against
//   the store so that objects deleted meanwhile are reported as deletes;
// - a watch that sends nothing (not even a bookmark) for 30 s is dropped and resumed.
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import { Watch } from '@kubernetes/client-node';
import { httpStatusOf } from '../k8s/errors.ts';
import type { InformerMetrics } from '../telemetry/metrics.ts';
import { type BackoffPolicy, backoffDelay } from '../util/backoff.ts';
import { type Clock, systemClock } from '../util/clock.ts';

export interface ObjectList<T> {
  items: T[];
  metadata?: { resourceVersion?: string };
}

export interface InformerHandlers<T> {
  add(object: T): void;
  update(previous: T, current: T): void;
  delete(object: T): void;
}

export interface InformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /** Collection path, e.g. /apis/lvp.dev/v1alpha1/volumeprovisions. */
  path: string;
  fieldSelector?: string;
  list(fieldSelector: string | undefined): Promise<ObjectList<T>>;
  handlers: InformerHandlers<T>;
  onError?(error: unknown, retryInMs: number): void;
  /** Server-side watch timeout; the watch is renewed from the last resourceVersion after it. */
  watchTimeoutSeconds?: number;
  backoff?: BackoffPolicy;
  clock?: Clock;
  metrics?: InformerMetrics;
}

export const objectKey = (object: KubernetesObject): string =>
  `${object.metadata?.namespace ?? ''}/${object.metadata?.name ?? ''}`;

class GoneError extends Error {}

export class Informer<T extends KubernetesObject> {
  readonly #options: InformerOptions<T>;
  readonly #store = new Map<string, T>();
  readonly #clock: Clock;
  #resourceVersion = '';
  #synced = false;
  #stopped = true;
  #failures = 0;
  #abortWatch: (() => void) | undefined;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;

  constructor(options: InformerOptions<T>) {
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
  }

  /** True once the first list has been stored. */
  get hasSynced(): boolean {
    return this.#synced;
  }

  get(key: string): T | undefined {
    return this.#store.get(key);
  }

  list(): T[] {
    return [...this.#store.values()];
  }

  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abortWatch?.();
    this.#wake?.();
    await this.#loop;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      try {
        if (!this.#resourceVersion) await this.#relist();
        await this.#watch();
      } catch (error) {
        if (this.#stopped) break;
        if (error instanceof GoneError || httpStatusOf(error) === 410) {
          this.#resourceVersion = '';
          continue;
        }
        if (error instanceof Error && error.name === 'TimeoutError') continue;
        this.#failures += 1;
        const delay = backoffDelay(
          this.#failures,
          this.#options.backoff ?? { baseMs: 500, maxMs: 30_000 },
          Math.random,
        );
        this.#options.onError?.(error, delay);
        await this.#sleep(delay);
      }
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const cancel = this.#clock.schedule(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        cancel();
        resolve();
      };
    });
  }

  async #relist(): Promise<void> {
    const list = await this.#options.list(this.#options.fieldSelector);
    this.#options.metrics?.received('list', list.items.length);
    const seen = new Set<string>();
    for (const object of list.items) {
      const key = objectKey(object);
      seen.add(key);
      this.#upsert(key, object);
    }
    for (const [key, object] of this.#store) {
      if (!seen.has(key)) {
        this.#store.delete(key);
        this.#options.handlers.delete(object);
      }
    }
    this.#resourceVersion = list.metadata?.resourceVersion ?? '';
    this.#synced = true;
    this.#failures = 0;
  }

  #upsert(key: string, object: T): void {
    const previous = this.#store.get(key);
    this.#store.set(key, object);
    if (!previous) this.#options.handlers.add(object);
    else if (previous.metadata?.resourceVersion !== object.metadata?.resourceVersion) {
      this.#options.handlers.update(previous, object);
    }
  }

  /** Resolves when the watch ends normally; rejects on errors, 410 and silence. */
  async #watch(): Promise<void> {
    // client-node's Watch aborts with a TimeoutError after 30 s without a byte: that is the
    // watchdog for silent or half-open connections, and #run resumes from #resourceVersion.
    const watch = new Watch(this.#options.kubeConfig);
    const timeoutSeconds = this.#options.watchTimeoutSeconds ?? 240 + Math.floor(Math.random() * 60);
    let failure: unknown;
    let events = 0;
    const startedAt = this.#clock.now();
    await new Promise<void>((resolve, reject) => {
      // Until the response headers arrive, client-node has no AbortController to hand out;
      // stop() must still be able to end this wait.
      this.#abortWatch = () => reject(new Error('informer stopped'));
      const finish = (error?: unknown) => {
        this.#abortWatch = undefined;
        // An ERROR event (e.g. 410) aborts the watch; its reason, not the abort, is the cause.
        if (failure ?? error) reject(failure ?? error);
        // A watch the server closes at once, again and again, must not become a busy loop.
        else if (events === 0 && this.#clock.now() - startedAt < 1_000)
          reject(new Error('watch closed immediately'));
        else resolve();
      };
      const onEvent = (phase: string, object: T & { code?: number }) => {
        if (phase === 'ERROR') {
          failure =
            object.code === 410
              ? new GoneError('resourceVersion expired')
              : new Error(JSON.stringify(object));
          reject(failure);
          this.#abortWatch?.();
          return;
        }
        events += 1;
        this.#failures = 0;
        if (phase !== 'BOOKMARK') this.#options.metrics?.received('watch', 1);
        const resourceVersion = object.metadata?.resourceVersion;
        if (resourceVersion) this.#resourceVersion = resourceVersion;
        if (phase === 'ADDED' || phase === 'MODIFIED') this.#upsert(objectKey(object), object);
        else if (phase === 'DELETED') {
          const key = objectKey(object);
          this.#store.delete(key);
          this.#options.handlers.delete(object);
        }
      };
      const query: Record<string, string | number | boolean> = {
        allowWatchBookmarks: true,
        resourceVersion: this.#resourceVersion,
        timeoutSeconds,
      };
      if (this.#options.fieldSelector) query.fieldSelector = this.#options.fieldSelector;
      watch
        .watch(this.#options.path, query, onEvent, (error: unknown) => finish(error ?? undefined))
        .then((controller) => {
          this.#abortWatch = () => {
            controller.abort();
            reject(new Error('informer stopped'));
          };
          if (this.#stopped) controller.abort();
        }, reject);
    });
  }
}
