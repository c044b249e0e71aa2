// Scenario scripts run inside the User-mode Linux guest (test/rig/uml.ts) and only observe:
// each scenario's record goes to <out>/scenarios.json. The host-side test reads that file and
// judges one scenario per test. This module holds both halves of that protocol.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PipelineError } from '../../src/pipeline/types.ts';

/** How an action ended, as plain JSON: its value, or its error with a PipelineError's reason. */
export interface Outcome {
  value?: unknown;
  error?: { name: string; reason?: string; terminal?: boolean; message: string };
}

/** A row of `lvs --reportformat json -o lv_name,lv_uuid,lv_size,lv_tags,lv_active`. */
export interface LvRow {
  lv_name: string;
  lv_uuid: string;
  lv_size: string;
  lv_tags: string;
  lv_active: string;
}

/** Guest side: runs `action` and records how it ended. */
export async function outcome(action: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { value: await action() };
  } catch (error) {
    if (error instanceof PipelineError) {
      return {
        error: { name: error.name, reason: error.reason, terminal: error.terminal, message: error.message },
      };
    }
    const name = error instanceof Error ? error.name : typeof error;
    return { error: { name, message: error instanceof Error ? error.message : String(error) } };
  }
}

/**
 * Guest side: `scenario` runs named scenarios in turn, recording each, even one whose script
 * breaks; `results` holds the records so far, for scenarios that build on earlier ones.
 */
export function scenarioRecorder(outDir: string) {
  const results: Record<string, unknown> = {};
  const scenario = async (name: string, body: () => Promise<Record<string, unknown>>): Promise<void> => {
    try {
      results[name] = await body();
    } catch (error) {
      results[name] = {
        scriptFailed: error instanceof Error ? (error.stack ?? error.message) : String(error),
      };
    }
    // Written after every scenario, so that a guest that dies midway still reports how far it got.
    writeFileSync(join(outDir, 'scenarios.json'), JSON.stringify(results, null, 2));
  };
  return { scenario, results };
}

/** Host side: one scenario's record, failing the test if the guest never got there. */
export function scenarioOf(results: Record<string, Record<string, unknown>>, name: string) {
  const result = results[name];
  assert.ok(result, `the guest did not get to scenario ${name}; see the rig's init.log and stderr`);
  assert.equal(result.scriptFailed, undefined, `scenario ${name} broke in the guest`);
  return result;
}

export function successValue(outcome: Outcome): unknown {
  assert.equal(outcome.error, undefined, `unexpected failure: ${outcome.error?.message}`);
  return outcome.value;
}

/** Asserts a PipelineError with `reason` and `terminal`; returns its message. */
export function errorOf(outcome: Outcome, reason: string, terminal: boolean): string {
  assert.ok(outcome.error, `expected ${reason}, got success: ${JSON.stringify(outcome.value)}`);
  assert.equal(outcome.error.reason, reason, outcome.error.message);
  assert.equal(outcome.error.terminal, terminal);
  return outcome.error.message;
}
