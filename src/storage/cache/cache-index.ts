// The image cache's index in the node's database: every SQL statement of the cache, nothing
// about files or concurrency. A blob is one file, named by its content's sha256; an entry says
// which blob a source URL was last verified to hold. Deleting a blob deletes its entries.
import type { StatementSync } from 'node:sqlite';
import {
  integerColumn,
  optionalTextColumn,
  type Row,
  type StateDatabase,
  textColumn,
} from '../state/database.ts';

export interface BlobRow {
  sha256: string;
  sizeBytes: number;
  lastUsedAt: number;
}

export interface EntryRow {
  url: string;
  sha256: string;
  sizeBytes: number;
  /** `algorithm:hex` the content was verified against when it was cached, if any. */
  verifiedChecksum: string | undefined;
  createdAt: number;
  lastUsedAt: number;
}

const ENTRY_COLUMNS = `e.url, e.sha256, b.size_bytes, e.verified_checksum, e.created_at, e.last_used_at
  FROM cache_entries e JOIN cache_blobs b ON b.sha256 = e.sha256`;

export class CacheIndex {
  readonly #database: StateDatabase;
  readonly #statements = new Map<string, StatementSync>();

  constructor(database: StateDatabase) {
    this.#database = database;
  }

  entry(url: string): EntryRow | undefined {
    const row = this.#sql(`SELECT ${ENTRY_COLUMNS} WHERE e.url = ?`).get(url);
    return row && toEntry(row);
  }

  /** Every entry, most recently used first. */
  entries(): EntryRow[] {
    return this.#sql(`SELECT ${ENTRY_COLUMNS} ORDER BY e.last_used_at DESC, e.url`).all().map(toEntry);
  }

  blob(sha256: string): BlobRow | undefined {
    const row = this.#sql('SELECT sha256, size_bytes, last_used_at FROM cache_blobs WHERE sha256 = ?').get(
      sha256,
    );
    return row && toBlob(row);
  }

  /** Every blob, least recently used first: the eviction order. */
  blobsByLastUse(): BlobRow[] {
    return this.#sql('SELECT sha256, size_bytes, last_used_at FROM cache_blobs ORDER BY last_used_at, sha256')
      .all()
      .map(toBlob);
  }

  totalBytes(): number {
    const row = this.#sql('SELECT COALESCE(SUM(size_bytes), 0) AS total FROM cache_blobs').get();
    return row ? integerColumn(row, 'total') : 0;
  }

  isReferenced(sha256: string): boolean {
    return this.#sql('SELECT 1 FROM cache_entries WHERE sha256 = ? LIMIT 1').get(sha256) !== undefined;
  }

  unreferencedBlobs(): string[] {
    return this.#sql(
      'SELECT sha256 FROM cache_blobs WHERE NOT EXISTS (SELECT 1 FROM cache_entries e WHERE e.sha256 = cache_blobs.sha256)',
    )
      .all()
      .map((row) => textColumn(row, 'sha256'));
  }

  /** Entries cached before `time`. */
  createdBefore(time: number): EntryRow[] {
    return this.#sql(`SELECT ${ENTRY_COLUMNS} WHERE e.created_at < ?`).all(time).map(toEntry);
  }

  /** Points `url` at the blob `sha256` (adding the blob if new), verified now. */
  record(
    entry: { url: string; sha256: string; sizeBytes: number; verifiedChecksum?: string },
    now: number,
  ): void {
    this.#database.transaction(() => {
      this.#sql(
        `INSERT INTO cache_blobs (sha256, size_bytes, created_at, last_used_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (sha256) DO UPDATE SET last_used_at = excluded.last_used_at`,
      ).run(entry.sha256, entry.sizeBytes, now, now);
      this.#sql(
        `INSERT INTO cache_entries (url, sha256, verified_checksum, created_at, last_used_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (url) DO UPDATE SET sha256 = excluded.sha256, verified_checksum = excluded.verified_checksum,
           created_at = excluded.created_at, last_used_at = excluded.last_used_at`,
      ).run(entry.url, entry.sha256, entry.verifiedChecksum ?? null, now, now);
    });
  }

  /** Marks the blob, and the entry if `url` still points at it, as used at `now`. */
  touch(url: string, sha256: string, now: number): void {
    this.#database.transaction(() => {
      this.#sql('UPDATE cache_blobs SET last_used_at = ? WHERE sha256 = ?').run(now, sha256);
      this.#sql('UPDATE cache_entries SET last_used_at = ? WHERE url = ? AND sha256 = ?').run(
        now,
        url,
        sha256,
      );
    });
  }

  deleteEntry(url: string): void {
    this.#sql('DELETE FROM cache_entries WHERE url = ?').run(url);
  }

  /** Deletes the blob and its entries; returns the entries' URLs. */
  deleteBlob(sha256: string): string[] {
    return this.#database.transaction(() => {
      const urls = this.#sql('SELECT url FROM cache_entries WHERE sha256 = ?')
        .all(sha256)
        .map((row) => textColumn(row, 'url'));
      this.#sql('DELETE FROM cache_blobs WHERE sha256 = ?').run(sha256);
      return urls;
    });
  }

  #sql(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#database.connection.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }
}

function toEntry(row: Row): EntryRow {
  return {
    url: textColumn(row, 'url'),
    sha256: textColumn(row, 'sha256'),
    sizeBytes: integerColumn(row, 'size_bytes'),
    verifiedChecksum: optionalTextColumn(row, 'verified_checksum'),
    createdAt: integerColumn(row, 'created_at'),
    lastUsedAt: integerColumn(row, 'last_used_at'),
  };
}

function toBlob(row: Row): BlobRow {
  return {
    sha256: textColumn(row, 'sha256'),
    sizeBytes: integerColumn(row, 'size_bytes'),
    lastUsedAt: integerColumn(row, 'last_used_at'),
  };
}
