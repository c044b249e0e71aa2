// CPU time spent during a measurement, from /proc: the whole machine's, and that of named
// processes with everything they started. On loopback, MinIO, the controller and the plain
// tools share this machine's cores, so a step can take no less than its CPU time divided by
// the core count: the figures show how close a step is to that floor, and who spends what.
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** USER_HZ: /proc reports times in these ticks; 100 on every Linux architecture Node runs on. */
const TICKS_PER_SECOND = 100;

export interface CpuUsage {
  /** CPU-seconds the machine spent outside idle, I/O wait and steal, all processes and kernel threads. */
  machineSeconds: number;
  /** CPU-seconds the hypervisor gave to others while this machine wanted them. */
  stealSeconds: number;
  /** CPU-seconds of each tracked process and its descendants (reaped or alive). */
  processSeconds: Record<string, number>;
}

interface Snapshot {
  machineTicks: number;
  stealTicks: number;
  processTicks: Record<string, number>;
}

export class CpuMeter {
  readonly cores = availableParallelism();
  readonly #pids = new Map<string, number>();

  /** Counts `pid`'s CPU (and its descendants') as `name` from the next window on. */
  track(name: string, pid: number): void {
    this.#pids.set(name, pid);
  }

  /** Starts a window; the function it returns ends it. */
  start(): () => CpuUsage {
    const from = this.#snapshot();
    return () => {
      const to = this.#snapshot();
      return {
        machineSeconds: (to.machineTicks - from.machineTicks) / TICKS_PER_SECOND,
        stealSeconds: (to.stealTicks - from.stealTicks) / TICKS_PER_SECOND,
        processSeconds: Object.fromEntries(
          Object.entries(to.processTicks).map(([name, ticks]) => [
            name,
            (ticks - (from.processTicks[name] ?? ticks)) / TICKS_PER_SECOND,
          ]),
        ),
      };
    };
  }

  #snapshot(): Snapshot {
    // proc(5): cpu user nice system idle iowait irq softirq steal ...
    const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8')
      .split('\n', 1)[0]
      ?.trim()
      .split(/\s+/)
      .slice(1)
      .map(Number) ?? [0];
    return {
      machineTicks: (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0),
      stealTicks: steal ?? 0,
      processTicks: Object.fromEntries([...this.#pids].map(([name, pid]) => [name, treeTicks(pid)])),
    };
  }
}

/**
 * A process's CPU ticks, its own and those of every descendant: live ones are read directly,
 * reaped ones are in their parent's cutime and cstime. The sum survives a child's exit.
 */
function treeTicks(pid: number): number {
  let ticks = 0;
  const pending = [pid];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    ticks += ownAndReapedTicks(next);
    pending.push(...children(next));
  }
  return ticks;
}

/** utime + stime + cutime + cstime; 0 for a process that is gone. */
function ownAndReapedTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After "pid (comm) ", field 3 (state) comes first: utime..cstime are fields 14–17.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return [11, 12, 13, 14].reduce((sum, index) => sum + Number(fields[index] ?? 0), 0);
  } catch {
    return 0;
  }
}

function children(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((thread) =>
      readFileSync(`/proc/${pid}/task/${thread}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map(Number),
    );
  } catch {
    return [];
  }
}
