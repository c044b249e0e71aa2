// Starts and stops the rig's daemons. Each runs in its own process group so that a stop
// reaches its children too, writes its output to a log file that failures name, and is
// recorded in a PID registry so that scripts/test.sh can prove nothing outlived the run.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pidRegistryDir } from './tools.ts';

export interface StartOptions {
  /** Component name, used in error messages and the PID registry. */
  name: string;
  command: string;
  args: readonly string[];
  logFile: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

const live = new Set<ManagedProcess>();

export class ManagedProcess {
  readonly name: string;
  readonly logFile: string;
  readonly pid: number;
  readonly #child: ChildProcess;
  readonly #registryEntry: string;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly exited: Promise<void>;

  constructor(options: StartOptions) {
    this.name = options.name;
    this.logFile = options.logFile;
    const out = openSync(options.logFile, 'a');
    this.#child = spawn(options.command, options.args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', out, out],
      detached: true,
    });
    if (this.#child.pid === undefined) {
      throw new Error(`${this.name}: failed to start ${options.command}; see ${this.logFile}`);
    }
    this.pid = this.#child.pid;
    this.#registryEntry = join(pidRegistryDir(), String(this.pid));
    mkdirSync(pidRegistryDir(), { recursive: true });
    writeFileSync(this.#registryEntry, `${this.name}\n`);
    live.add(this);
    this.exited = new Promise((resolve) => {
      this.#child.once('exit', (code, signal) => {
        this.#exit = { code, signal };
        live.delete(this);
        rmSync(this.#registryEntry, { force: true });
        resolve();
      });
    });
  }

  get running(): boolean {
    return this.#exit === undefined;
  }

  /** How the process ended, once it has. */
  get exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.#exit;
  }

  /** Throws a named error with the log's tail when the process has died. */
  assertRunning(): void {
    if (this.#exit !== undefined) {
      throw new Error(
        `${this.name} exited (code ${this.#exit.code}, signal ${this.#exit.signal}); log: ${this.logFile}\n${this.logTail()}`,
      );
    }
  }

  logTail(lines = 20): string {
    try {
      return readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  signal(signal: NodeJS.Signals): void {
    if (!this.running) return;
    try {
      process.kill(-this.pid, signal);
    } catch {
      // The group is already gone.
    }
  }

  /** SIGTERM, then SIGKILL after the grace period. Resolves once the process has exited. */
  async stop(graceMs = 5_000): Promise<void> {
    if (!this.running) return;
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

// A process that crashes still takes its daemons down with it; one that is interrupted
// stops them gracefully first.
process.once('exit', () => {
  for (const proc of live) proc.signal('SIGKILL');
});
for (const [signal, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
] as const) {
  process.once(signal, () => {
    void Promise.all([...live].map((proc) => proc.stop(3_000))).finally(() => process.exit(code));
  });
}
