// The scale scenario's status-write budget (issue 7): a job may write its status at most once
// per stage change plus once per coalescing interval. Pure, so that the judge is tested.

/** One status a watch saw for a job. */
export interface SeenStatus {
  stage: string;
  queuePosition?: number;
}

export interface JobWrites {
  name: string;
  /** Create → Ready, as the bench saw it. */
  seconds: number;
  /** Every status the watch saw for the job, in order. */
  seen: readonly SeenStatus[];
  /** The HTTP status of each status write, in order, from the audit log. */
  writes: readonly number[];
}

export interface OverBudgetJob {
  name: string;
  seconds: number;
  stageChanges: number;
  /** `Queued(2)`, `Initializing`, …: each status the watch saw, in order. */
  seen: string[];
  writes: number[];
}

/** The stage changes in what the watch saw; the first stage counts as one. */
export function stageChanges(seen: readonly SeenStatus[]): number {
  return seen.filter((status, index) => index === 0 || seen[index - 1]?.stage !== status.stage).length;
}

/**
 * The job, described for the report, when it wrote more often than its budget allows; a
 * rejected write that was sent again counts twice, since both reached the API server.
 */
export function overWriteBudget(job: JobWrites, intervalSeconds: number): OverBudgetJob | undefined {
  const changes = stageChanges(job.seen);
  if (job.writes.length <= changes + Math.ceil(job.seconds / intervalSeconds)) return undefined;
  return {
    name: job.name,
    seconds: job.seconds,
    stageChanges: changes,
    seen: job.seen.map(({ stage, queuePosition }) => (queuePosition ? `${stage}(${queuePosition})` : stage)),
    writes: [...job.writes],
  };
}
