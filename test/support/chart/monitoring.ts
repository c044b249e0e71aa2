// The chart's Grafana dashboard and alert rules as tests read them, and their queries as
// Grafana and Prometheus would run them.
import { grafanaExprToPromQL } from './promql.ts';
import type { KubeObject } from './render.ts';

export interface Rule {
  alert?: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** The rules of the one PrometheusRule among `objects` (a rendered chart). */
export function alertRules(objects: readonly KubeObject[]): Rule[] {
  const rules = objects.filter((object) => object.kind === 'PrometheusRule');
  if (rules.length !== 1) throw new Error(`expected one PrometheusRule, found ${rules.length}`);
  return (rules[0] as unknown as { spec: { groups: { rules: Rule[] }[] } }).spec.groups.flatMap(
    (group) => group.rules,
  );
}

/**
 * An alert's expression that keeps every series it compares: `x > 0.05` becomes
 * `x > bool 0.05`, which gives 0 or 1 for each series of `x` instead of only those that fire.
 * For the alerts' shape, a vector compared with a number.
 */
export function comparedSeries(expr: string): string {
  return expr.replace(/(==|!=|>=|<=|>|<)\s*(?=-?[\d.])/g, '$1 bool ');
}

export interface DashboardTarget {
  expr?: string;
  query?: string;
  datasource: { type: string; uid: string };
}

export interface Dashboard {
  panels: { title: string; type: string; datasource?: { type: string }; targets?: DashboardTarget[] }[];
  templating: { list: { name: string; type: string; query: unknown }[] };
}

/** Every Prometheus query of the dashboard, with its panel's title. */
export function prometheusQueries(board: Dashboard): { panel: string; expr: string }[] {
  return board.panels.flatMap((panel) =>
    (panel.targets ?? []).flatMap((target) =>
      target.expr && target.datasource.type === 'prometheus'
        ? [{ panel: panel.title, expr: target.expr }]
        : [],
    ),
  );
}

/**
 * `expr` as Grafana sends it once the user picked `variables` (name → value, such as job and
 * node): each `$name` replaced, and the interval macros given a value (grafanaExprToPromQL).
 */
export function withVariables(expr: string, variables: Record<string, string>): string {
  const replaced = expr.replace(/\$\{?(\w+)\}?/g, (whole, name: string) => variables[name] ?? whole);
  return grafanaExprToPromQL(replaced);
}
