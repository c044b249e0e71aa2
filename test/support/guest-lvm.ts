// For guest scripts (run inside User-mode Linux by test/rig/uml.ts): setting scenes and
// observing them with plain lvm and plain file I/O, independent of the code under test.
import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';

export const lvm = (args: string[]): string =>
  execFileSync('lvm', args, { env: { ...process.env, LC_ALL: 'C' }, encoding: 'utf8' });

/** lvm report options: JSON, sizes in bytes without a suffix. */
export const JSON_REPORT = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];

/** The VG's LVs as `lvs` reports them (LvRow in uml-scenarios.ts). */
export const lvRows = (vg: string): unknown =>
  JSON.parse(lvm(['lvs', ...JSON_REPORT, '-o', 'lv_name,lv_uuid,lv_size,lv_tags,lv_active', vg])).report[0]
    .lv;

/** Writes `text` at the start of a device, durably: data the code under test must not touch. */
export function writeMarker(path: string, text: string): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, text, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function readMarker(path: string, length: number): string {
  const buffer = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, length, 0);
  } finally {
    closeSync(fd);
  }
  return buffer.toString('latin1');
}
