// The node's SQLite database: one file per node (e.g. <stateDir>/provisioner.db) that holds the
// image cache index and the measured stage rates, with forward-only schema migrations.
//
// Why node:sqlite and not better-sqlite3: it ships inside Node 24, so the container image needs
// no native build (no node-gyp, no compiler, no prebuilt binary per libc and architecture), and
// its synchronous API (DatabaseSync) is what a single-process controller wants: each statement
// is a few microseconds on a local file, and a synchronous read-decide-write cannot interleave
// with another job's, so the cache needs no locks of its own. One process opens the file; WAL
// lets `sqlite3` inspect it while the controller runs.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type SQLOutputValue } from 'node:sqlite';
import { MIGRATIONS, type Migration } from './migrations.ts';

export type Row = Record<string, SQLOutputValue>;

/** How long a statement waits for a lock held by another connection (e.g. an operator's sqlite3). */
const BUSY_TIMEOUT_MS = 5_000;

export class StateDatabase {
  readonly path: string;
  readonly connection: DatabaseSync;

  private constructor(path: string, connection: DatabaseSync) {
    this.path = path;
    this.connection = connection;
  }

  /**
   * Opens (creating it and its folder if needed) and migrates the database at `path`.
   * `migrations` is for tests that build an older schema; production uses the default.
   */
  static open(path: string, migrations: readonly Migration[] = MIGRATIONS): StateDatabase {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    let connection: DatabaseSync;
    try {
      connection = new DatabaseSync(path, { timeout: BUSY_TIMEOUT_MS, enableForeignKeyConstraints: true });
    } catch (error) {
      throw new Error(`cannot open the state database ${path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const database = new StateDatabase(path, connection);
    try {
      // WAL: readers never block the writer. synchronous=NORMAL is durable in WAL mode except
      // for the last commits before a power loss, which start-up cleanup reconciles with disk.
      connection.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
      database.#migrate(migrations);
    } catch (error) {
      connection.close();
      throw new Error(
        `the state database ${path} cannot be used: ${(error as Error).message}. ` +
          'If the file is damaged or from a newer controller, move it away: the cache index and ' +
          'the stage rates are rebuilt from scratch.',
        { cause: error },
      );
    }
    return database;
  }

  /** The highest applied migration; 0 for a new file. */
  schemaVersion(): number {
    const row = this.connection.prepare('SELECT MAX(version) AS version FROM schema_migrations').get();
    const version = row?.version;
    return typeof version === 'number' ? version : 0;
  }

  /** Runs `work` in one write transaction (or in the one already open); rolls back if it throws. */
  transaction<T>(work: () => T): T {
    if (this.connection.isTransaction) return work();
    this.connection.exec('BEGIN IMMEDIATE');
    try {
      const result = work();
      this.connection.exec('COMMIT');
      return result;
    } catch (error) {
      this.connection.exec('ROLLBACK');
      throw error;
    }
  }

  close(): void {
    if (this.connection.isOpen) this.connection.close();
  }

  #migrate(migrations: readonly Migration[]): void {
    this.connection.exec(
      'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)',
    );
    const current = this.schemaVersion();
    const latest = migrations.at(-1)?.version ?? 0;
    if (current > latest)
      throw new Error(`its schema version is ${current}, newer than the ${latest} this controller knows`);
    const record = this.connection.prepare(
      'INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)',
    );
    for (const migration of migrations) {
      if (migration.version <= current) continue;
      try {
        this.transaction(() => {
          this.connection.exec(migration.sql);
          record.run(migration.version, migration.description, new Date().toISOString());
        });
      } catch (error) {
        throw new Error(
          `migration ${migration.version} (${migration.description}) failed: ${(error as Error).message}`,
          { cause: error },
        );
      }
    }
  }
}

/** Column readers: node:sqlite returns loosely typed rows; these fail loudly on a schema drift. */
export function integerColumn(row: Row, name: string): number {
  const value = row[name];
  if (typeof value !== 'number') throw new Error(`column ${name} is ${String(value)}, expected a number`);
  return value;
}

export function textColumn(row: Row, name: string): string {
  const value = row[name];
  if (typeof value !== 'string') throw new Error(`column ${name} is ${String(value)}, expected text`);
  return value;
}

export function optionalTextColumn(row: Row, name: string): string | undefined {
  const value = row[name];
  return value === null || value === undefined ? undefined : textColumn(row, name);
}
