// The schema of the node's state database, as forward-only migrations. A migration is never
// edited once released: a change is a new entry with the next version.
export interface Migration {
  version: number;
  description: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'image cache index',
    // Files are named by their content's sha256 (cache_blobs); each source URL points at the
    // content it was last verified to have (cache_entries). Times are Unix milliseconds.
    sql: `
      CREATE TABLE cache_blobs (
        sha256 TEXT PRIMARY KEY,
        size_bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL
      );
      CREATE INDEX cache_blobs_by_last_use ON cache_blobs (last_used_at);
      CREATE TABLE cache_entries (
        url TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL REFERENCES cache_blobs (sha256) ON DELETE CASCADE,
        verified_checksum TEXT,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL
      );
      CREATE INDEX cache_entries_by_blob ON cache_entries (sha256);
    `,
  },
  {
    version: 2,
    description: 'measured stage rates',
    sql: `
      CREATE TABLE stage_rates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        stage TEXT NOT NULL CHECK (stage IN ('download', 'convert')),
        bytes INTEGER NOT NULL,
        seconds REAL NOT NULL,
        bytes_per_second REAL NOT NULL,
        recorded_at INTEGER NOT NULL
      );
      CREATE INDEX stage_rates_by_stage ON stage_rates (stage, id);
    `,
  },
];
