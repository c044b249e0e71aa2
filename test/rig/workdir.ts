// Scratch folders for rig components. They stay after the run so that a failure's logs can
// be read; scripts/test.sh empties the root at the start of each run.
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function rigRoot(): string {
  return process.env.LVP_RIG_DIR ?? join(tmpdir(), 'lvp-rig');
}

/** A new, empty folder named after its user, e.g. `kube-XXXXXX`. */
export function makeWorkDir(name: string): string {
  mkdirSync(rigRoot(), { recursive: true });
  return mkdtempSync(join(rigRoot(), `${name}-`));
}
