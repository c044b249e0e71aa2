// docs/configuration.md must describe every setting with its current environment variable,
// flag and default, so the documentation cannot drift from src/config/config.ts.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { SETTINGS } from '../../../src/config/config.ts';

const doc = readFileSync(new URL('../../../docs/configuration.md', import.meta.url), 'utf8');

describe('docs/configuration.md', () => {
  for (const setting of SETTINGS) {
    it(`documents ${setting.key}`, () => {
      const row = doc.split('\n').find((line) => line.split('|')[1]?.trim() === `\`${setting.key}\``);
      assert.ok(row, `no table row for ${setting.key}`);
      assert.ok(row.includes(`\`${setting.env}\``), `${setting.key}: environment variable ${setting.env}`);
      assert.ok(row.includes(`\`--${setting.flag}\``), `${setting.key}: flag --${setting.flag}`);
      if (setting.default !== undefined)
        assert.ok(row.includes(`\`${setting.default}\``), `${setting.key}: default ${setting.default}`);
    });
  }
});
