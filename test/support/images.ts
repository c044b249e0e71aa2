// Test images with realistic content: random data, zeros and holes, as raw and qcow2.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const MiB = 1024 * 1024;

export interface TestImage {
  raw: Buffer;
  rawSha256: string;
  rawPath: string;
  qcow2Path: string;
  sizeBytes: number;
}

/** `sizeMiB` of content: random blocks in the first and third quarters, zeros elsewhere. */
export async function makeTestImage(dir: string, name: string, sizeMiB: number): Promise<TestImage> {
  const sizeBytes = sizeMiB * MiB;
  const raw = Buffer.alloc(sizeBytes);
  randomBytes(Math.max(1, Math.floor(sizeBytes / 4))).copy(raw, 0);
  randomBytes(Math.max(1, Math.floor(sizeBytes / 8))).copy(raw, Math.floor(sizeBytes / 2));
  const rawPath = join(dir, `${name}.raw`);
  writeFileSync(rawPath, raw);
  const qcow2Path = join(dir, `${name}.qcow2`);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, qcow2Path]);
  return { raw, rawSha256: sha256(raw), rawPath, qcow2Path, sizeBytes };
}

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** 1 MiB stripes of random data and zeros (every third), and an odd tail: like a real disk image. */
export function mixedImage(stripes: number): Buffer {
  const parts: Buffer[] = [];
  for (let stripe = 0; stripe < stripes; stripe += 1)
    parts.push(stripe % 3 === 1 ? Buffer.alloc(MiB) : randomBytes(MiB));
  parts.push(randomBytes(1000));
  return Buffer.concat(parts);
}
