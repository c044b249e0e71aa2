// Proves the rig's real MinIO: an object goes in and comes back byte for byte.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Client } from 'minio';
import { type MinioServer, startMinio } from '../rig/minio.ts';
import { makeWorkDir } from '../rig/workdir.ts';

describe('rig: MinIO', { timeout: 120_000 }, () => {
  let minio: MinioServer;

  before(async () => {
    minio = await startMinio(makeWorkDir('minio'));
  });
  after(async () => {
    await minio?.stop();
  });

  it('stores an object and reads it back with the minio client', async () => {
    const client = minio.client();
    await client.makeBucket('images');
    const content = randomBytes(3 * 1024 * 1024 + 17);
    await client.putObject('images', 'disks/test.raw', content, content.length);

    const stat = await client.statObject('images', 'disks/test.raw');
    assert.equal(stat.size, content.length);

    const chunks: Buffer[] = [];
    for await (const chunk of await client.getObject('images', 'disks/test.raw'))
      chunks.push(chunk as Buffer);
    const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
    assert.equal(sha256(Buffer.concat(chunks)), sha256(content));
  });

  it('refuses wrong credentials', async () => {
    const intruder = new Client({
      endPoint: minio.host,
      port: minio.port,
      useSSL: false,
      accessKey: minio.accessKey,
      secretKey: 'not-the-secret',
    });
    await assert.rejects(intruder.listBuckets(), /signature|SignatureDoesNotMatch/i);
  });
});
