import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadConfig } from '../../../src/config/config.ts';

const dir = mkdtempSync(join(tmpdir(), 'lvp-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function configFile(content: string): string {
  const path = join(mkdtempSync(join(dir, 'case-')), 'config.yaml');
  writeFileSync(path, content);
  return path;
}

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const config = loadConfig([], { NODE_NAME: 'hv-1' });
    assert.equal(config.nodeName, 'hv-1');
    assert.equal(config.maxConcurrentJobs, 2);
    assert.equal(config.statusUpdateIntervalSeconds, 5);
    assert.equal(config.logLevel, 'info');
    assert.equal(config.defaultVolumeGroup, undefined);
  });

  it('takes flags over environment over file over defaults', () => {
    const path = configFile('maxConcurrentJobs: 3\nlogLevel: debug\ncacheDir: /srv/cache\n');
    const config = loadConfig(['--config', path, '--max-concurrent-jobs=5'], {
      NODE_NAME: 'hv-1',
      LVP_MAX_CONCURRENT_JOBS: '4',
      LOG_LEVEL: 'warn',
    });
    assert.equal(config.maxConcurrentJobs, 5);
    assert.equal(config.logLevel, 'warn');
    assert.equal(config.cacheDir, '/srv/cache');
  });

  const invalid: [string, string[], NodeJS.ProcessEnv, RegExp][] = [
    ['a missing node name', [], {}, /nodeName is required: set env NODE_NAME/],
    [
      'a non-integer job limit',
      [],
      { NODE_NAME: 'n', LVP_MAX_CONCURRENT_JOBS: 'two' },
      /maxConcurrentJobs \(env LVP_MAX_CONCURRENT_JOBS\) must be an integer/,
    ],
    [
      'a job limit out of range',
      ['--max-concurrent-jobs', '0'],
      { NODE_NAME: 'n' },
      /between 1 and 64, got 0/,
    ],
    [
      'an unknown log level',
      [],
      { NODE_NAME: 'n', LOG_LEVEL: 'loud' },
      /logLevel .* must be one of trace, debug/,
    ],
    [
      'a relative cache dir',
      ['--cache-dir', 'cache'],
      { NODE_NAME: 'n' },
      /cacheDir \(flag --cache-dir\) must be an absolute path/,
    ],
    [
      'an endpoint that is not a URL',
      [],
      { NODE_NAME: 'n', LVP_S3_ENDPOINT: 'minio:9000' },
      /s3Endpoint .* must be an http/,
    ],
    ['an unknown flag', ['--nod-name', 'x'], { NODE_NAME: 'n' }, /Unknown option '--nod-name'/],
    [
      'a missing config file',
      ['--config', '/nonexistent/lvp.yaml'],
      { NODE_NAME: 'n' },
      /cannot read config file \/nonexistent\/lvp.yaml/,
    ],
  ];
  for (const [name, argv, env, message] of invalid) {
    it(`rejects ${name} with a message naming the setting`, () => {
      assert.throws(() => loadConfig(argv, env), message);
    });
  }

  it('rejects unknown settings in the file, listing the known ones', () => {
    const path = configFile('maxJobs: 3\n');
    assert.throws(
      () => loadConfig(['--config', path], { NODE_NAME: 'n' }),
      /unknown settings: maxJobs \(known: nodeName/,
    );
  });
});
