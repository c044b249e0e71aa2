import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CheckResult, ImageInfo } from '../../../src/storage/qemu-img/image-info.ts';
import {
  detectContainerFormat,
  evaluateCheck,
  evaluateHeader,
  evaluateInfo,
  type ImageVerdict,
} from '../../../src/storage/qemu-img/policy.ts';

const GiB = 1024 ** 3;
const qcow2Header = Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]), Buffer.alloc(504)]);
const mbrHeader = Buffer.alloc(512);
mbrHeader[510] = 0x55;
mbrHeader[511] = 0xaa;

function reasonOf(verdict: ImageVerdict): string {
  return verdict.ok ? 'ok' : verdict.reason;
}

function messageOf(verdict: ImageVerdict): string {
  assert.equal(verdict.ok, false);
  return verdict.ok ? '' : verdict.message;
}

describe('evaluateHeader', () => {
  it('accepts a raw disk and a qcow2 image that are what they claim', () => {
    assert.equal(reasonOf(evaluateHeader('raw', mbrHeader)), 'ok');
    assert.equal(reasonOf(evaluateHeader('qcow2', qcow2Header)), 'ok');
    assert.equal(reasonOf(evaluateHeader('raw', new Uint8Array(0))), 'ok');
  });

  it('refuses a qcow2 image declared raw and says what to declare', () => {
    const verdict = evaluateHeader('raw', qcow2Header);
    assert.equal(reasonOf(verdict), 'FormatMismatch');
    assert.match(
      messageOf(verdict),
      /declared raw but starts with a qcow2 header; set spec\.source\.format to qcow2/,
    );
  });

  it('refuses other container formats declared raw', () => {
    const vmdk = Buffer.concat([Buffer.from('KDMV'), Buffer.alloc(508)]);
    const vdi = Buffer.alloc(512);
    vdi.set([0x7f, 0x10, 0xda, 0xbe], 64);
    assert.equal(detectContainerFormat(vmdk), 'vmdk');
    assert.equal(detectContainerFormat(vdi), 'vdi');
    assert.match(messageOf(evaluateHeader('raw', vmdk)), /vmdk header; convert it first/);
    assert.equal(reasonOf(evaluateHeader('raw', vdi)), 'FormatMismatch');
  });

  it('refuses raw data declared qcow2', () => {
    const verdict = evaluateHeader('qcow2', mbrHeader);
    assert.equal(reasonOf(verdict), 'FormatMismatch');
    assert.match(messageOf(verdict), /declared qcow2 but does not start with the qcow2 magic.*raw data/);
    assert.equal(reasonOf(evaluateHeader('qcow2', Buffer.from([0x51, 0x46]))), 'FormatMismatch');
  });

  it('reads the magic from a view into a larger buffer', () => {
    const backing = Buffer.concat([Buffer.alloc(8), qcow2Header]);
    assert.equal(detectContainerFormat(backing.subarray(8)), 'qcow2');
  });
});

describe('evaluateInfo', () => {
  const qcow2: ImageInfo = { format: 'qcow2', virtualSize: GiB, actualSize: 300_000_000 };

  it('accepts a self-contained image that fits, including an exact fit', () => {
    assert.equal(
      reasonOf(evaluateInfo({ declaredFormat: 'qcow2', info: qcow2, targetSizeBytes: GiB })),
      'ok',
    );
    const raw: ImageInfo = { format: 'raw', virtualSize: 512 };
    assert.equal(reasonOf(evaluateInfo({ declaredFormat: 'raw', info: raw, targetSizeBytes: 4096 })), 'ok');
  });

  const rejections: [string, ImageInfo, string, RegExp][] = [
    [
      'a different format',
      { ...qcow2, format: 'raw' },
      'FormatMismatch',
      /declared qcow2 but qemu-img reports raw/,
    ],
    [
      'a backing file',
      { ...qcow2, backingFilename: '/etc/shadow' },
      'BackingFileNotAllowed',
      /backing file \(\/etc\/shadow\).*flatten it first/,
    ],
    [
      'an external data file',
      { ...qcow2, dataFile: 'data.raw' },
      'ExternalDataFileNotAllowed',
      /external file \(data\.raw\).*self-contained/,
    ],
    ['the corrupt flag', { ...qcow2, corrupt: true }, 'CorruptImage', /corrupt flag is set/],
    [
      'a virtual size larger than the target',
      { ...qcow2, virtualSize: GiB + 1 },
      'VirtualSizeTooLarge',
      /virtual size is 1073741825 bytes but the target holds only 1073741824 bytes; set spec\.target\.size to at least 1073741825/,
    ],
  ];
  for (const [what, info, reason, message] of rejections) {
    it(`refuses ${what} with ${reason}`, () => {
      const verdict = evaluateInfo({ declaredFormat: 'qcow2', info, targetSizeBytes: GiB });
      assert.equal(reasonOf(verdict), reason);
      assert.match(messageOf(verdict), message);
    });
  }

  it('refuses a backing file before looking at the size', () => {
    const info = { ...qcow2, backingFilename: 'base', virtualSize: 10 * GiB };
    assert.equal(
      reasonOf(evaluateInfo({ declaredFormat: 'qcow2', info, targetSizeBytes: GiB })),
      'BackingFileNotAllowed',
    );
  });
});

describe('evaluateCheck', () => {
  const check = (status: CheckResult['status'], detail = ''): CheckResult => ({
    status,
    corruptions: status === 'corrupt' ? 2 : 0,
    leaks: status === 'leaks' ? 7 : 0,
    detail,
  });

  it('accepts a clean image and one with leaked clusters only', () => {
    assert.equal(reasonOf(evaluateCheck(check('clean'))), 'ok');
    assert.equal(reasonOf(evaluateCheck(check('leaks'))), 'ok');
  });

  it('refuses corruption with the count and a way out', () => {
    const verdict = evaluateCheck(check('corrupt', 'ERROR OFLAG_COPIED'));
    assert.equal(reasonOf(verdict), 'CorruptImage');
    assert.match(messageOf(verdict), /found 2 corruption\(s\).*check -r all.*ERROR OFLAG_COPIED/);
  });

  it('refuses an image the check could not finish', () => {
    assert.equal(reasonOf(evaluateCheck(check('incomplete', 'Could not open'))), 'CorruptImage');
    assert.equal(reasonOf(evaluateCheck(check('unsupported'))), 'CorruptImage');
  });
});
