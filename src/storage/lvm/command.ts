// The one way the controller runs LVM: `lvm <subcommand> ...` as an argument array (never a
// shell), optionally behind a prefix such as nsenter into the host's namespaces, with LC_ALL=C
// because locale-dependent output once broke parsing, and reports read as JSON.
import { execa } from 'execa';
import { PipelineError } from '../../pipeline/types.ts';

export interface ProcessOutput {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs one process to completion. Resolves with its exit code whatever it is; rejects only
 * when the process could not run or did not exit by itself (not found, timeout, signal).
 */
export type ProcessRunner = (
  file: string,
  args: readonly string[],
  /** `env` is added to the inherited environment (LVM needs PATH, LVM_SYSTEM_DIR and the like). */
  options: { env: Readonly<Record<string, string>>; timeoutMs: number },
) => Promise<ProcessOutput>;

export const execaRunner: ProcessRunner = async (file, args, { env, timeoutMs }) => {
  // stdin is closed so that an unexpected LVM prompt fails at once instead of hanging. The
  // process gets its own group, and a timeout kills the whole group: nsenter --pid forks lvm
  // and does not pass signals on, so killing nsenter alone would leave lvm holding the pipes.
  // (Being detached, lvm also finishes a change when the controller exits meanwhile.)
  const subprocess = execa(file, args, { env, stdin: 'ignore', reject: false, detached: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    if (subprocess.pid === undefined) return;
    try {
      process.kill(-subprocess.pid, 'SIGKILL');
      timedOut = true;
    } catch {
      // The group exited just now; its result is on the way.
    }
  }, timeoutMs);
  const result = await subprocess.finally(() => clearTimeout(timer));
  if (timedOut) throw new Error(`timed out after ${timeoutMs} ms and was killed`);
  if (result.exitCode === undefined) throw new Error(result.shortMessage);
  return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
};

export interface LvmCommandOptions {
  /** Runs LVM elsewhere, e.g. `['nsenter', '--target', '1', '--mount', ..., '--']` from a container. */
  prefix?: readonly string[];
  /** The lvm binary; `lvm` on PATH by default. */
  lvmPath?: string;
  /** A hung LVM command (a stuck device, a held lock) must not hold a job slot forever. */
  timeoutMs?: number;
  runProcess?: ProcessRunner;
}

/** The report subcommands and the key under which each lists its rows. */
const reportKeys = { vgs: 'vg', lvs: 'lv' } as const;
export type ReportCommand = keyof typeof reportKeys;

const MAX_STDERR_CHARS = 2000;

function formatCommand(argv: readonly string[]): string {
  return argv.map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : JSON.stringify(arg))).join(' ');
}

/** LVM indents its messages; keep them readable in a condition message and bounded in size. */
function tidyStderr(stderr: string): string {
  const text = stderr
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
    .join('\n');
  return text.length > MAX_STDERR_CHARS ? `${text.slice(0, MAX_STDERR_CHARS)}…` : text;
}

/** An LVM command that failed or could not run. Retried with backoff: most causes are transient. */
export class LvmCommandError extends PipelineError {
  /** The full argument vector, prefix included. */
  readonly command: readonly string[];
  /** Undefined when the process did not run or did not exit by itself. */
  readonly exitCode: number | undefined;
  /** LVM's stderr, trimmed. */
  readonly stderr: string;

  constructor(command: readonly string[], exitCode: number | undefined, stderr: string, cause?: unknown) {
    const outcome = exitCode === undefined ? 'could not run' : `failed with exit code ${exitCode}`;
    const detail = stderr === '' ? '' : `: ${stderr}`;
    super('LvmCommandFailed', `${formatCommand(command)} ${outcome}${detail}`, { terminal: false, cause });
    this.name = 'LvmCommandError';
    this.command = command;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

function invalidReport(command: readonly string[], problem: string): PipelineError {
  return new PipelineError('LvmReportInvalid', `${formatCommand(command)} printed ${problem}`, {
    terminal: false,
  });
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * Reads the rows of an LVM JSON report (`{"report": [{"lv": [{...}]}]}`), checking that every
 * row carries each requested field as a string. Rows of all report sections are concatenated.
 */
export function parseReport<F extends string>(
  stdout: string,
  key: string,
  fields: readonly F[],
  command: readonly string[],
): Record<F, string>[] {
  let document: unknown;
  try {
    document = JSON.parse(stdout);
  } catch {
    throw invalidReport(command, `output that is not JSON: ${JSON.stringify(stdout.slice(0, 200))}`);
  }
  if (!isRecord(document) || !Array.isArray(document.report)) {
    throw invalidReport(command, 'JSON without a "report" list');
  }
  const rows: Record<F, string>[] = [];
  for (const section of document.report) {
    const sectionRows = isRecord(section) ? section[key] : undefined;
    if (!Array.isArray(sectionRows)) throw invalidReport(command, `a report section without a "${key}" list`);
    for (const row of sectionRows) {
      if (!isRecord(row)) throw invalidReport(command, `a "${key}" row that is not an object`);
      const missing = fields.filter((field) => typeof row[field] !== 'string');
      if (missing.length > 0) {
        throw invalidReport(command, `a "${key}" row without the string field(s) ${missing.join(', ')}`);
      }
      rows.push(Object.fromEntries(fields.map((field) => [field, row[field]])) as Record<F, string>);
    }
  }
  return rows;
}

export class LvmCommand {
  readonly #prefix: readonly string[];
  readonly #lvmPath: string;
  readonly #timeoutMs: number;
  readonly #runProcess: ProcessRunner;

  constructor(options: LvmCommandOptions = {}) {
    this.#prefix = options.prefix ?? [];
    this.#lvmPath = options.lvmPath ?? 'lvm';
    this.#timeoutMs = options.timeoutMs ?? 120_000;
    this.#runProcess = options.runProcess ?? execaRunner;
  }

  /** Runs `lvm <subcommand> <args>` and returns its stdout; throws LvmCommandError on failure. */
  async run(subcommand: string, args: readonly string[]): Promise<string> {
    const argv = this.#argv(subcommand, args);
    const [file = this.#lvmPath, ...rest] = argv;
    let output: ProcessOutput;
    try {
      output = await this.#runProcess(file, rest, { env: { LC_ALL: 'C' }, timeoutMs: this.#timeoutMs });
    } catch (error) {
      throw new LvmCommandError(
        argv,
        undefined,
        error instanceof Error ? error.message : String(error),
        error,
      );
    }
    if (output.exitCode !== 0) throw new LvmCommandError(argv, output.exitCode, tidyStderr(output.stderr));
    return output.stdout;
  }

  /** Runs a report (`vgs`, `lvs`) with sizes in plain bytes and returns its validated rows. */
  async report<F extends string>(
    subcommand: ReportCommand,
    fields: readonly F[],
    targets: readonly string[],
  ): Promise<Record<F, string>[]> {
    const args = ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', fields.join(','), ...targets];
    const stdout = await this.run(subcommand, args);
    return parseReport(stdout, reportKeys[subcommand], fields, this.#argv(subcommand, args));
  }

  #argv(subcommand: string, args: readonly string[]): string[] {
    return [...this.#prefix, this.#lvmPath, subcommand, ...args];
  }
}
