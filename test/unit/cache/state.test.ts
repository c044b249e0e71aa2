// The node's SQLite database (file, WAL, forward migrations, clear errors) and the stage-rate
// store that feeds the progress split.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateDatabase } from '../../../src/storage/state/database.ts';
import { MIGRATIONS } from '../../../src/storage/state/migrations.ts';
import { RATE_WINDOW, StageRateStore } from '../../../src/storage/state/stage-rates.ts';

const MiB = 1024 * 1024;

let root: string;
const opened: StateDatabase[] = [];
function open(path = join(root, 'state', 'provisioner.db'), migrations = MIGRATIONS): StateDatabase {
  const database = StateDatabase.open(path, migrations);
  opened.push(database);
  return database;
}

const tables = (database: StateDatabase) =>
  database.connection
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    .all()
    .map((row) => row.name);

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'lvp-state-'));
});
afterEach(() => {
  for (const database of opened.splice(0)) database.close();
  rmSync(root, { recursive: true, force: true });
});

describe('StateDatabase', () => {
  it('creates the folder and the schema in an empty file, in WAL mode', () => {
    const path = join(root, 'state', 'provisioner.db');
    const database = open(path);
    assert.equal(database.schemaVersion(), MIGRATIONS.at(-1)?.version);
    assert.deepEqual(tables(database), ['cache_blobs', 'cache_entries', 'schema_migrations', 'stage_rates']);
    assert.equal(database.connection.prepare('PRAGMA journal_mode').get()?.journal_mode, 'wal');
  });

  it('migrates an existing empty (zero-byte) file', () => {
    const path = join(root, 'empty.db');
    writeFileSync(path, '');
    assert.equal(open(path).schemaVersion(), 2);
  });

  it('applies only the missing migrations to an older schema, keeping its data', () => {
    const path = join(root, 'old.db');
    const old = open(path, MIGRATIONS.slice(0, 1));
    assert.equal(old.schemaVersion(), 1);
    old.connection
      .prepare('INSERT INTO cache_blobs (sha256, size_bytes, created_at, last_used_at) VALUES (?, ?, ?, ?)')
      .run('ab'.repeat(32), 5, 1, 1);
    old.close();
    const database = open(path);
    assert.equal(database.schemaVersion(), 2);
    assert.deepEqual(
      database.connection
        .prepare('SELECT version, description FROM schema_migrations ORDER BY version')
        .all()
        .map((row) => ({ ...row })),
      [
        { version: 1, description: 'image cache index' },
        { version: 2, description: 'measured stage rates' },
      ],
    );
    assert.equal(database.connection.prepare('SELECT COUNT(*) AS n FROM cache_blobs').get()?.n, 1);
    database.close();
    assert.equal(open(path).schemaVersion(), 2, 'opening again changes nothing');
  });

  it('refuses a database from a newer controller, saying what to do', () => {
    const path = join(root, 'newer.db');
    open(path, [
      ...MIGRATIONS,
      { version: 99, description: 'future', sql: 'CREATE TABLE future (x)' },
    ]).close();
    assert.throws(
      () => open(path),
      /state database .*newer\.db cannot be used: its schema version is 99, newer than the 2 this controller knows\. .*move it away/,
    );
  });

  it('refuses a file that is not a database', () => {
    const path = join(root, 'garbage.db');
    writeFileSync(path, 'this is not sqlite, just text long enough to have a header '.repeat(20));
    assert.throws(() => open(path), /state database .*garbage\.db cannot be used: .*not a database/);
  });

  it('rolls a failed migration back entirely and names it', () => {
    const path = join(root, 'broken.db');
    const broken = [
      ...MIGRATIONS,
      { version: 3, description: 'broken step', sql: 'CREATE TABLE half (x); SELECT * FROM missing_table' },
    ];
    assert.throws(() => open(path, broken), /migration 3 \(broken step\) failed: .*missing_table/);
    const database = open(path);
    assert.equal(database.schemaVersion(), 2);
    assert.ok(!tables(database).includes('half'));
  });
});

describe('StageRateStore', () => {
  it('returns the old service defaults when nothing was measured', () => {
    assert.deepEqual(new StageRateStore(open()).rates(), { download: 100e6, convert: 200e6 });
  });

  it('averages the last 20 measurements of each stage separately', () => {
    const store = new StageRateStore(open());
    // 25 downloads at 1..25 MiB/s: only the last 20 (6..25) count, mean 15.5 MiB/s.
    for (let rate = 1; rate <= 25; rate++) assert.equal(store.record('download', rate * 10 * MiB, 10), true);
    store.record('convert', 300 * MiB, 1);
    store.record('convert', 100 * MiB, 1);
    assert.deepEqual(store.rates(), { download: 15.5 * MiB, convert: 200 * MiB });
  });

  it('keeps only the window on disk', () => {
    const database = open();
    const store = new StageRateStore(database);
    for (let i = 0; i < 30; i++) store.record('convert', 2 * MiB, 1);
    const count = database.connection.prepare('SELECT COUNT(*) AS n FROM stage_rates').get()?.n;
    assert.equal(count, RATE_WINDOW);
  });

  it('ignores transfers under 1 MiB and durations that are not positive', () => {
    const store = new StageRateStore(open());
    assert.equal(store.record('download', MiB - 1, 0.000001), false);
    assert.equal(store.record('download', 10 * MiB, 0), false);
    assert.equal(store.record('convert', 10 * MiB, Number.NaN), false);
    assert.deepEqual(store.rates(), { download: 100e6, convert: 200e6 });
    assert.equal(store.record('download', MiB, 1), true);
    assert.deepEqual(store.rates(), { download: MiB, convert: 200e6 });
  });

  it('survives a restart: rates are read back from the file', () => {
    const path = join(root, 'rates.db');
    const first = open(path);
    new StageRateStore(first).record('download', 50 * MiB, 2);
    first.close();
    assert.equal(new StageRateStore(open(path)).rates().download, 25 * MiB);
  });
});
