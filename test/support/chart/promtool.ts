// promtool (Debian's prometheus package), the one door to Prometheus' own rule and PromQL parser.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import yaml from 'js-yaml';
import { systemTool } from '../../rig/tools.ts';

export interface PromtoolResult {
  ok: boolean;
  output: string;
}

async function promtool(args: readonly string[], cwd?: string): Promise<PromtoolResult> {
  const result = await execa(systemTool('promtool'), args, {
    reject: false,
    all: true,
    ...(cwd ? { cwd } : {}),
  });
  return { ok: result.exitCode === 0, output: result.all ?? '' };
}

/** `promtool check rules` on a Prometheus rules file (groups: ...). */
export function checkRules(file: string): Promise<PromtoolResult> {
  return promtool(['check', 'rules', file]);
}

/** `promtool test rules` on a unit-test file; rule_files in it are relative to its folder. */
export function testRules(file: string, cwd: string): Promise<PromtoolResult> {
  return promtool(['test', 'rules', file], cwd);
}

/**
 * Parses each expression with Prometheus' parser by wrapping them into a throwaway rules file of
 * recording rules; the output names the expression that failed.
 */
export async function checkExpressions(expressions: readonly string[]): Promise<PromtoolResult> {
  const dir = mkdtempSync(join(tmpdir(), 'lvp-promql-'));
  try {
    const file = join(dir, 'expressions.yaml');
    const rules = expressions.map((expr, index) => ({ record: `lvp_check:expression_${index}`, expr }));
    writeFileSync(file, yaml.dump({ groups: [{ name: 'expressions', rules }] }));
    const result = await checkRules(file);
    return {
      ok: result.ok,
      output: `${result.output}\n${expressions.map((e, i) => `expression_${i}: ${e}`).join('\n')}`,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
