import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ImageInfoParseError,
  parseCheckResult,
  parseImageInfo,
} from '../../../src/storage/qemu-img/image-info.ts';

// Shapes as printed by qemu-img 7.2 (Debian qemu-utils).
const qcow2WithDataFile = {
  'virtual-size': 67108864,
  filename: 'ed.qcow2',
  'cluster-size': 65536,
  format: 'qcow2',
  'actual-size': 200704,
  'format-specific': {
    type: 'qcow2',
    data: { compat: '1.1', 'data-file': 'ext.raw', 'data-file-raw': false, corrupt: false },
  },
  'dirty-flag': false,
};

const json = (value: unknown): string => JSON.stringify(value);

describe('parseImageInfo', () => {
  it('reads a plain raw image', () => {
    assert.deepEqual(
      parseImageInfo(json({ 'virtual-size': 1024, filename: 'a', format: 'raw', 'actual-size': 4096 })),
      { format: 'raw', virtualSize: 1024, actualSize: 4096 },
    );
  });

  it('reads the external data file and corrupt flag of a qcow2 image', () => {
    assert.deepEqual(parseImageInfo(json(qcow2WithDataFile)), {
      format: 'qcow2',
      virtualSize: 67108864,
      actualSize: 200704,
      dataFile: 'ext.raw',
      corrupt: false,
    });
  });

  it('reads the backing file from either of its names', () => {
    const base = { 'virtual-size': 1, format: 'qcow2' };
    assert.equal(parseImageInfo(json({ ...base, 'backing-filename': 'b.qcow2' })).backingFilename, 'b.qcow2');
    assert.equal(
      parseImageInfo(json({ ...base, 'full-backing-filename': '/etc/shadow' })).backingFilename,
      '/etc/shadow',
    );
  });

  const invalid: [string, string][] = [
    ['not JSON', 'qemu-img: oops'],
    ['an array', '[]'],
    ['null', 'null'],
    ['no format', json({ 'virtual-size': 1 })],
    ['an empty format', json({ format: '', 'virtual-size': 1 })],
    ['no virtual size', json({ format: 'raw' })],
    ['a string virtual size', json({ format: 'raw', 'virtual-size': '1024' })],
    ['a negative virtual size', json({ format: 'raw', 'virtual-size': -1 })],
    ['a fractional virtual size', json({ format: 'raw', 'virtual-size': 1.5 })],
    ['a virtual size past 2^53', '{"format":"raw","virtual-size":18446744073709551615}'],
    ['a numeric format', json({ format: 7, 'virtual-size': 1 })],
    [
      'a backing file that is not a string',
      json({ format: 'qcow2', 'virtual-size': 1, 'backing-filename': {} }),
    ],
    ['a backing file that is null', json({ format: 'qcow2', 'virtual-size': 1, 'backing-filename': null })],
    [
      'a data file that is not a string',
      json({ format: 'qcow2', 'virtual-size': 1, 'format-specific': { data: { 'data-file': ['x'] } } }),
    ],
    [
      'format-specific that is not an object',
      json({ format: 'qcow2', 'virtual-size': 1, 'format-specific': 'x' }),
    ],
    [
      'format-specific data that is an array',
      json({ format: 'qcow2', 'virtual-size': 1, 'format-specific': { data: [] } }),
    ],
    [
      'a corrupt flag that is a string',
      json({ format: 'qcow2', 'virtual-size': 1, 'format-specific': { data: { corrupt: 'no' } } }),
    ],
  ];
  for (const [what, text] of invalid) {
    it(`refuses output with ${what}`, () => {
      assert.throws(() => parseImageInfo(text), ImageInfoParseError);
    });
  }
});

describe('parseCheckResult', () => {
  it('maps each documented exit code to a status', () => {
    assert.equal(parseCheckResult(0, json({ 'check-errors': 0 }), '').status, 'clean');
    assert.equal(parseCheckResult(1, '', 'qemu-img: Could not open').status, 'incomplete');
    assert.equal(parseCheckResult(2, json({ corruptions: 3 }), '').status, 'corrupt');
    assert.equal(parseCheckResult(3, json({ leaks: 5 }), '').status, 'leaks');
    assert.equal(parseCheckResult(63, '', 'no checks').status, 'unsupported');
  });

  it('reads the counts and keeps stderr as detail', () => {
    assert.deepEqual(parseCheckResult(2, json({ corruptions: 3, leaks: 1 }), ' ERROR cluster 5\n'), {
      status: 'corrupt',
      corruptions: 3,
      leaks: 1,
      detail: 'ERROR cluster 5',
    });
  });

  it('refuses an unknown exit code and malformed counts', () => {
    assert.throws(() => parseCheckResult(4, '', ''), ImageInfoParseError);
    assert.throws(() => parseCheckResult(2, json({ corruptions: 'many' }), ''), ImageInfoParseError);
    assert.throws(() => parseCheckResult(0, 'not json', ''), ImageInfoParseError);
  });
});
