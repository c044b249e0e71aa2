// Pure status policy: conditions with stable transition times, and the merge patch that
// takes the status written last to the status wanted now (or nothing, when they agree).
import type { Condition, VolumeProvisionStatus } from '../api/v1alpha1.ts';

export type ConditionInput = Pick<Condition, 'type' | 'status' | 'reason' | 'message'>;

/** Sets one condition; lastTransitionTime changes only when the status value changes. */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  input: ConditionInput,
  generation: number | undefined,
  now: Date,
): Condition[] {
  const existing = conditions?.find((condition) => condition.type === input.type);
  const next: Condition = {
    ...input,
    ...(generation === undefined ? {} : { observedGeneration: generation }),
    lastTransitionTime:
      existing && existing.status === input.status ? existing.lastTransitionTime : now.toISOString(),
  };
  return [...(conditions ?? []).filter((condition) => condition.type !== input.type), next];
}

export function conditionOf(status: VolumeProvisionStatus | undefined, type: string): Condition | undefined {
  return status?.conditions?.find((condition) => condition.type === type);
}

type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/**
 * A JSON merge patch (RFC 7396) from `written` to `wanted`: changed fields, and null for
 * fields that are gone. Arrays are replaced whole, which is what merge patch does with them.
 */
export function mergePatch(
  written: object | undefined,
  wanted: object,
): Record<string, JsonValue> | undefined {
  const before = (written ?? {}) as Record<string, JsonValue>;
  const after = wanted as Record<string, JsonValue | undefined>;
  const patch: Record<string, JsonValue> = {};
  for (const [key, value] of Object.entries(after)) {
    if (value === undefined) continue;
    const old = before[key];
    if (isPlainObject(value) && isPlainObject(old)) {
      const nested = mergePatch(old, value);
      if (nested) patch[key] = nested;
    } else if (JSON.stringify(old) !== JSON.stringify(value)) {
      patch[key] = value;
    }
  }
  for (const key of Object.keys(before)) {
    if (after[key] === undefined) patch[key] = null;
  }
  return Object.keys(patch).length === 0 ? undefined : patch;
}

function isPlainObject(value: unknown): value is Record<string, JsonValue> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
