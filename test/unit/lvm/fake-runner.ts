// A narrow fake for the process boundary of LvmCommand: it records every call and answers with
// scripted outputs in order, so tests see the exact argument arrays and environment.
import type { ProcessOutput, ProcessRunner } from '../../../src/storage/lvm/command.ts';

export interface RecordedCall {
  file: string;
  args: readonly string[];
  env: Readonly<Record<string, string>>;
  timeoutMs: number;
}

export interface FakeRunner {
  run: ProcessRunner;
  calls: RecordedCall[];
  /** The argument vectors after the binary, e.g. ['vgs', '--reportformat', ...]. */
  argv(): string[][];
}

export function fakeRunner(...outputs: (ProcessOutput | Error)[]): FakeRunner {
  const calls: RecordedCall[] = [];
  const pending = [...outputs];
  return {
    calls,
    argv: () => calls.map((call) => [...call.args]),
    run: async (file, args, options) => {
      calls.push({ file, args: [...args], env: options.env, timeoutMs: options.timeoutMs });
      const next = pending.shift();
      if (next === undefined) throw new Error(`unexpected call: ${file} ${args.join(' ')}`);
      if (next instanceof Error) throw next;
      return next;
    },
  };
}

export const ok = (stdout = ''): ProcessOutput => ({ exitCode: 0, stdout, stderr: '' });
export const fail = (exitCode: number, stderr: string): ProcessOutput => ({ exitCode, stdout: '', stderr });

/** What `lvm vgs|lvs --reportformat json` prints, in LVM's own layout. */
export function reportJson(key: 'vg' | 'lv', rows: readonly Record<string, string>[]): string {
  const body = rows.map((row) => `                  ${JSON.stringify(row)}`).join(',\n');
  return `  {\n      "report": [\n          {\n              "${key}": [\n${body}\n              ]\n          }\n      ]\n  }\n`;
}
