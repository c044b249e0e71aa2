import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { PipelineError } from '../../../src/pipeline/types.ts';
import { StreamingDigests } from '../../../src/storage/download/checksum.ts';
import { parseChecksum, parseSha256Sidecar } from '../../../src/storage/download/index.ts';

const SHA256 = 'a'.repeat(40) + 'B'.repeat(24);
const SHA512 = '0123456789abcdef'.repeat(8);

function reason(expected: string, terminal: boolean) {
  return (error: unknown) => {
    assert.ok(error instanceof PipelineError);
    assert.equal(error.reason, expected);
    assert.equal(error.terminal, terminal);
    return true;
  };
}

describe('parseChecksum', () => {
  it('reads sha256 and sha512 and lowercases the hex', () => {
    assert.deepEqual(parseChecksum(`sha256:${SHA256}`), {
      algorithm: 'sha256',
      hex: SHA256.toLowerCase(),
      origin: 'spec.source.checksum',
    });
    assert.equal(parseChecksum(`sha512:${SHA512}`).algorithm, 'sha512');
  });

  it('rejects wrong lengths, other algorithms and missing prefixes as terminal', () => {
    for (const value of [
      `sha256:${SHA512}`,
      `sha512:${SHA256}`,
      `md5:${'a'.repeat(32)}`,
      SHA256,
      'sha256:',
      `sha256:${'g'.repeat(64)}`,
    ])
      assert.throws(() => parseChecksum(value), reason('InvalidChecksum', true), value);
  });
});

describe('parseSha256Sidecar', () => {
  const name = 's3://images/a.qcow2.sha256';

  it('accepts a bare hash and sha256sum output', () => {
    for (const content of [
      SHA256,
      `${SHA256}\n`,
      `${SHA256}  a.qcow2\n`,
      `${SHA256} *a.qcow2\r\n`,
      `\n  ${SHA256}\t./a b.qcow2`,
    ])
      assert.deepEqual(
        parseSha256Sidecar(content, name),
        { algorithm: 'sha256', hex: SHA256.toLowerCase(), origin: name },
        content,
      );
  });

  it('rejects anything else, naming the object', () => {
    for (const content of ['', 'abc', `${SHA256}x`, `${SHA256}\n${SHA256}`, `sha256:${SHA256}`])
      assert.throws(
        () => parseSha256Sidecar(content, name),
        (error: unknown) =>
          reason('InvalidChecksumSidecar', false)(error) && (error as Error).message.includes(name),
        content,
      );
  });
});

describe('StreamingDigests', () => {
  const data = [Buffer.from('hello '), Buffer.from('world')];
  const digest = (algorithm: string) => createHash(algorithm).update('hello world').digest('hex');

  function digestsOf(expected: ConstructorParameters<typeof StreamingDigests>[0]) {
    const digests = new StreamingDigests(expected);
    for (const chunk of data) digests.update(chunk);
    return digests;
  }

  it('always yields the sha256 of the content', () => {
    assert.deepEqual(digestsOf(undefined).verify(undefined), { sha256: digest('sha256') });
    const sha512 = parseChecksum(`sha512:${digest('sha512')}`);
    assert.deepEqual(digestsOf(sha512).verify(sha512), { sha256: digest('sha256') });
  });

  it('names expected and actual on a mismatch', () => {
    const wrong = parseChecksum(`sha512:${SHA512}`);
    assert.throws(
      () => digestsOf(wrong).verify(wrong),
      (error: unknown) =>
        reason('ChecksumMismatch', true)(error) &&
        (error as Error).message.includes(SHA512) &&
        (error as Error).message.includes(digest('sha512')),
    );
  });
});
