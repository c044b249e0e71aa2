// The chart's Grafana dashboard as tests read it, and its Prometheus queries as Grafana would
// send them.
import { grafanaExprToPromQL } from './promql.ts';

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
