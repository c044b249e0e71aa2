// Exponential backoff with jitter, shared by every retry loop (work queue, informer, job
// retries, downloads).
export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}

/**
 * The delay before attempt number `attempt` (1 for the first retry): half of the exponential
 * step is fixed and half random ("equal jitter"), so delays keep growing while retries from
 * many nodes or keys spread out instead of arriving together.
 */
export function backoffDelay(
  attempt: number,
  policy: BackoffPolicy,
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(attempt - 1, 0), 30);
  const step = Math.min(policy.maxMs, policy.baseMs * 2 ** exponent);
  return Math.round(step / 2 + (random() * step) / 2);
}
