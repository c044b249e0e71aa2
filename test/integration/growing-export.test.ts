// GrowingExport against the real qemu-img and qemu-io: a qcow2 file served over NBD while it
// is still being written, as a download writes it.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { GrowingExport } from '../../src/storage/nbd/growing-export.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { makeTestImage } from '../support/images.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('GrowingExport (real qemu-img over NBD)', { timeout: 60_000 }, () => {
  let workDir: string;
  let raw: Buffer;
  let qcow2: Buffer;
  let exportNumber = 0;

  before(async () => {
    workDir = makeWorkDir('growing-export');
    const image = await makeTestImage(workDir, 'image', 8);
    raw = image.raw;
    qcow2 = readFileSync(image.qcow2Path);
  });

  /** An export of qcow2's size whose file holds its first `bytes` so far. */
  async function exportWith(bytes: number) {
    exportNumber += 1;
    const path = join(workDir, `partial-${exportNumber}`);
    writeFileSync(path, qcow2.subarray(0, bytes));
    const exported = new GrowingExport(qcow2.length);
    const socketPath = join(workDir, `${exportNumber}.sock`);
    await exported.listen(socketPath);
    exported.written({ path, bytes });
    return { exported, path, socketPath };
  }

  it('serves the header before the rest exists, and converts once every byte arrived', async (t) => {
    const { exported, path } = await exportWith(512 * 1024);
    t.after(() => exported.close());
    const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', exported.url]);
    assert.equal(JSON.parse(stdout)['virtual-size'], raw.length);

    const target = join(workDir, 'converted.raw');
    let exited = false;
    const conversion = run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', exported.url, target]).finally(
      () => {
        exited = true;
      },
    );
    for (let offset = 512 * 1024; offset < qcow2.length; offset += MiB) {
      // Time for qemu-img to read what is there. It cannot be done before the last bytes are
      // there: its reads wait for them (and the result below shows it read no byte too early).
      await delay(20);
      assert.equal(exited, false);
      const end = Math.min(offset + MiB, qcow2.length);
      appendFileSync(path, qcow2.subarray(offset, end));
      exported.written({ path, bytes: end });
    }
    await conversion;
    assert.ok(readFileSync(target).equals(raw), 'the converted image differs from the original');
  });

  it('answers EIO once the download failed, so qemu-img stops with an error', async (t) => {
    const { exported } = await exportWith(512 * 1024);
    t.after(() => exported.close());
    const conversion = run('qemu-img', [
      'convert',
      '-f',
      'qcow2',
      '-O',
      'raw',
      exported.url,
      join(workDir, 'failed.raw'),
    ]);
    exported.fail(new Error('the download failed'));
    await assert.rejects(conversion, /Input\/output error/);
  });

  it('fails once the download starts over, since the file is about to be emptied', async (t) => {
    const { exported, path } = await exportWith(qcow2.length);
    t.after(() => exported.close());
    assert.ok(await exported.read(0, 512), 'a read before the restart is answered');
    exported.written({ path, bytes: 0 });
    assert.equal(await exported.read(0, 512), undefined);
    await assert.rejects(
      run('qemu-img', ['info', '--output=json', '-f', 'qcow2', exported.url]),
      /Input\/output error|Could not read/,
    );
  });

  it('is read-only: a write is refused and the file stays as it was', async (t) => {
    const { exported, path } = await exportWith(qcow2.length);
    t.after(() => exported.close());
    await assert.rejects(run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 512', exported.url]));
    assert.ok(readFileSync(path).equals(qcow2));
  });

  it('answers a write with EPERM and drops that client', async (t) => {
    const { exported, socketPath } = await exportWith(qcow2.length);
    t.after(() => exported.close());
    // A bare client: qemu-io refuses to write to a read-only export before asking.
    const client = connect(socketPath);
    const received: Buffer[] = [];
    client.on('data', (data) => received.push(data));
    const closed = new Promise((resolve) => client.on('close', resolve));
    const go = Buffer.alloc(16 + 6);
    go.write('IHAVEOPT', 0, 'latin1');
    go.writeUInt32BE(7, 8); // NBD_OPT_GO
    go.writeUInt32BE(6, 12); // an empty export name and no info requests
    const write = Buffer.alloc(28 + 512);
    write.writeUInt32BE(0x25609513, 0);
    write.writeUInt16BE(1, 6); // NBD_CMD_WRITE
    write.write('cookie!!', 8, 'latin1');
    client.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), go, write]));
    await closed;
    const all = Buffer.concat(received);
    // Greeting (18), then the GO's two option replies (20 + 12 and 20), then a simple reply.
    const reply = all.subarray(18 + 32 + 20);
    assert.equal(reply.readUInt32BE(0), 0x67446698);
    assert.equal(reply.readUInt32BE(4), 1, 'EPERM');
    assert.equal(reply.subarray(8, 16).toString('latin1'), 'cookie!!');
    assert.ok(readFileSync(join(workDir, `partial-${exportNumber}`)).equals(qcow2));
  });

  it('drops a client that does not speak NBD and goes on serving others', async (t) => {
    const { exported, socketPath } = await exportWith(qcow2.length);
    t.after(() => exported.close());
    const stranger = connect(socketPath);
    stranger.on('data', () => stranger.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(4)));
    await new Promise((resolve) => stranger.on('close', resolve));
    const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', exported.url]);
    assert.equal(JSON.parse(stdout)['virtual-size'], raw.length);
  });

  it('removes its socket when it closes', async () => {
    const { exported, socketPath } = await exportWith(qcow2.length);
    assert.ok(existsSync(socketPath));
    await exported.close();
    assert.equal(existsSync(socketPath), false);
  });
});
