import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PipelineError } from '../../../src/pipeline/types.ts';
import { parseS3Endpoint, parseSourceUrl, redactUrl } from '../../../src/storage/download/index.ts';

const endpoint = parseS3Endpoint('https://minio.storage.svc:9000', 'eu-west-1');

function rejection(pattern: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof PipelineError);
    assert.equal(error.reason, 'InvalidSourceURL');
    assert.equal(error.terminal, true);
    assert.match(error.message, pattern);
    return true;
  };
}

describe('parseS3Endpoint', () => {
  it('reads scheme, host, port and region', () => {
    assert.deepEqual(endpoint, { useSSL: true, host: 'minio.storage.svc', port: 9000, region: 'eu-west-1' });
    assert.deepEqual(parseS3Endpoint('http://127.0.0.1'), { useSSL: false, host: '127.0.0.1', port: 80 });
    assert.deepEqual(parseS3Endpoint('https://[::1]'), { useSSL: true, host: '::1', port: 443 });
  });

  it('refuses anything but a bare http(s) origin', () => {
    assert.throws(() => parseS3Endpoint('minio:9000'), /http:\/\/ or https:\/\//);
    assert.throws(() => parseS3Endpoint('https://minio/bucket'), /bare origin/);
    assert.throws(() => parseS3Endpoint('not a url'), /not a URL/);
  });
});

describe('parseSourceUrl', () => {
  it('reads s3://bucket/key against the configured endpoint', () => {
    assert.deepEqual(
      parseSourceUrl('s3://images/os/ubuntu%2024.qcow2', { s3Endpoint: endpoint, hasS3Credentials: true }),
      {
        kind: 's3',
        endpoint,
        bucket: 'images',
        key: 'os/ubuntu 24.qcow2',
      },
    );
  });

  it('explains that s3:// needs a configured endpoint', () => {
    assert.throws(
      () => parseSourceUrl('s3://images/a.qcow2', { hasS3Credentials: true }),
      rejection(/no S3 endpoint configured/),
    );
  });

  it('rejects invalid bucket names and missing keys', () => {
    const options = { s3Endpoint: endpoint, hasS3Credentials: false };
    assert.throws(() => parseSourceUrl('s3://Images/a', options), rejection(/not a valid bucket name/));
    assert.throws(() => parseSourceUrl('s3://ab/a', options), rejection(/not a valid bucket name/));
    assert.throws(() => parseSourceUrl('s3://images', options), rejection(/names no object/));
    assert.throws(() => parseSourceUrl('s3://images/dir/', options), rejection(/names no object/));
    assert.throws(
      () => parseSourceUrl('s3://images/a?versionId=1', options),
      rejection(/only a bucket and a key/),
    );
  });

  it('reads http(s) URLs as plain resources without S3 credentials', () => {
    const location = parseSourceUrl('https://cdn.example/images/a.qcow2?X-Amz-Signature=abc', {
      hasS3Credentials: false,
    });
    assert.equal(location.kind, 'http');
    assert.equal(location.kind === 'http' && location.url.searchParams.get('X-Amz-Signature'), 'abc');
  });

  it('reads https://host/bucket/key as an S3 object when S3 credentials are given', () => {
    assert.deepEqual(parseSourceUrl('https://minio.example/images/os/a.qcow2', { hasS3Credentials: true }), {
      kind: 's3',
      endpoint: { useSSL: true, host: 'minio.example', port: 443 },
      bucket: 'images',
      key: 'os/a.qcow2',
    });
    assert.deepEqual(parseSourceUrl('http://127.0.0.1:9000/images/a.raw', { hasS3Credentials: true }), {
      kind: 's3',
      endpoint: { useSSL: false, host: '127.0.0.1', port: 9000 },
      bucket: 'images',
      key: 'a.raw',
    });
    assert.throws(
      () => parseSourceUrl('https://minio.example/images', { hasS3Credentials: true }),
      rejection(/names no object/),
    );
    assert.throws(
      () => parseSourceUrl('https://minio.example/images/a?x=1', { hasS3Credentials: true }),
      rejection(/query string/),
    );
  });

  it('rejects other schemes, user info and garbage with an actionable message', () => {
    const options = { s3Endpoint: endpoint, hasS3Credentials: false };
    assert.throws(() => parseSourceUrl('ftp://host/a.qcow2', options), rejection(/unsupported scheme "ftp"/));
    assert.throws(
      () => parseSourceUrl('file:///var/a.qcow2', options),
      rejection(/unsupported scheme "file"/),
    );
    assert.throws(
      () => parseSourceUrl('https://user:pw@host/a', options),
      rejection(/put credentials in the Secret/),
    );
    assert.throws(() => parseSourceUrl('images/a.qcow2', options), rejection(/not a valid URL/));
    assert.throws(() => parseSourceUrl('', options), rejection(/not a valid URL/));
  });

  it('keeps user info and query strings out of its messages', () => {
    for (const url of [
      'https://user:hunter2@host/a',
      'ftp://host/a?X-Amz-Signature=hunter2',
      'bad?token=hunter2',
    ])
      assert.throws(
        () => parseSourceUrl(url, { hasS3Credentials: false }),
        (error: Error) => !error.message.includes('hunter2'),
      );
  });
});

describe('redactUrl', () => {
  it('drops user info, query and fragment', () => {
    assert.equal(
      redactUrl(new URL('https://u:p@host:8443/a/b.qcow2?sig=1#x')),
      'https://host:8443/a/b.qcow2',
    );
  });
});
