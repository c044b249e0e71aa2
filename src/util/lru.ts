/**
 * A Map that keeps the `capacity` entries used last (read or written), dropping the least
 * recently used one past that; `onDrop` hears of each value it lets go.
 */
export class LruMap<K, V> {
  readonly #entries = new Map<K, V>();
  readonly #capacity: number;
  readonly #onDrop: (value: V) => void;

  constructor(capacity: number, onDrop: (value: V) => void = () => {}) {
    this.#capacity = capacity;
    this.#onDrop = onDrop;
  }

  get(key: K): V | undefined {
    const value = this.#entries.get(key);
    if (value !== undefined) this.#touch(key, value);
    return value;
  }

  /** Stores `value` as the most recently used; a value it replaces is not dropped through onDrop. */
  set(key: K, value: V): void {
    this.#touch(key, value);
    for (const [oldestKey, oldest] of this.#entries) {
      if (this.#entries.size <= this.#capacity) break;
      this.#entries.delete(oldestKey);
      this.#onDrop(oldest);
    }
  }

  /** Forgets `key`; its value is not dropped through onDrop. */
  delete(key: K): void {
    this.#entries.delete(key);
  }

  /** A Map iterates in insertion order, so the most recently used goes last. */
  #touch(key: K, value: V): void {
    this.#entries.delete(key);
    this.#entries.set(key, value);
  }
}
