// Which metrics PromQL expressions read, and which series a /metrics exposition offers, so that
// tests can prove the alerts and dashboards name only metrics the controller exports. Syntax is
// checked by promtool (promtool.ts); this only has to find the metric names in valid PromQL.

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface MetricFamily {
  name: string;
  type: MetricType;
}

type Token =
  | { kind: 'identifier'; text: string }
  | { kind: 'string'; text: string }
  | { kind: 'other'; text: string };

/** Keywords that sit where a metric name could; not names of series. */
const KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'bool',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'offset',
  'inf',
  'nan',
  'atan2',
]);
/** Keywords followed by a parenthesised list of label names. */
const LABEL_LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < expr.length) {
    const char = expr.charAt(i);
    if (/\s/.test(char)) {
      i += 1;
    } else if (char === '#') {
      while (i < expr.length && expr.charAt(i) !== '\n') i += 1;
    } else if (char === '"' || char === "'" || char === '`') {
      let text = '';
      i += 1;
      while (i < expr.length && expr.charAt(i) !== char) {
        if (expr.charAt(i) === '\\' && char !== '`') i += 1;
        text += expr.charAt(i);
        i += 1;
      }
      if (i >= expr.length) throw new Error(`unterminated string in PromQL: ${expr}`);
      i += 1;
      tokens.push({ kind: 'string', text });
    } else if (/[0-9.]/.test(char)) {
      // Numbers and durations (5m, 1h30m, 1e3, 0x1f) never name a metric.
      const match = /^[0-9.][0-9a-zA-Z._]*/.exec(expr.slice(i)) as RegExpExecArray;
      tokens.push({ kind: 'other', text: match[0] });
      i += match[0].length;
    } else if (/[a-zA-Z_:]/.test(char)) {
      const match = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(expr.slice(i)) as RegExpExecArray;
      tokens.push({ kind: 'identifier', text: match[0] });
      i += match[0].length;
    } else if (char === '$') {
      // A Grafana variable such as $__rate_interval or ${node}: a placeholder, not a metric.
      const match = /^\$(\{[^}]*\}|\w*)/.exec(expr.slice(i)) as RegExpExecArray;
      tokens.push({ kind: 'other', text: match[0] });
      i += match[0].length;
    } else {
      tokens.push({ kind: 'other', text: char });
      i += 1;
    }
  }
  return tokens;
}

/** Index just past the bracket that closes the one at `open`. */
function skipBracketed(tokens: readonly Token[], open: number): number {
  const opener = tokens[open]?.text;
  const closer = opener === '(' ? ')' : opener === '{' ? '}' : ']';
  let depth = 0;
  for (let i = open; i < tokens.length; i += 1) {
    const text = tokens[i]?.text;
    if (tokens[i]?.kind !== 'other') continue;
    if (text === opener) depth += 1;
    else if (text === closer) {
      depth -= 1;
      if (depth === 0) return i + 1;
    }
  }
  throw new Error(`unbalanced ${opener} in PromQL`);
}

/**
 * The names of the series a PromQL expression selects, sorted and without duplicates: bare metric
 * names and `{__name__="..."}` matchers; never functions, aggregations, keywords, label names,
 * durations or Grafana variables. Expects syntactically valid PromQL.
 */
export function metricNamesInPromQL(expr: string): string[] {
  const tokens = tokenize(expr);
  const names = new Set<string>();
  let i = 0;
  while (i < tokens.length) {
    const token = tokens[i] as Token;
    const next = tokens[i + 1];
    if (token.kind === 'other' && token.text === '{') {
      const end = skipBracketed(tokens, i);
      for (let j = i + 1; j < end - 2; j += 1) {
        const value = tokens[j + 2];
        if (tokens[j]?.text === '__name__' && tokens[j + 1]?.text === '=' && value?.kind === 'string') {
          names.add(value.text);
        }
      }
      i = end;
    } else if (token.kind === 'other' && token.text === '[') {
      i = skipBracketed(tokens, i);
    } else if (token.kind === 'identifier' && LABEL_LIST_KEYWORDS.has(token.text) && next?.text === '(') {
      i = skipBracketed(tokens, i + 1);
    } else if (token.kind === 'identifier') {
      const isCall = next?.kind === 'other' && next.text === '(';
      const isGroupedAggregation = next?.text === 'by' || next?.text === 'without';
      if (!isCall && !isGroupedAggregation && !KEYWORDS.has(token.text.toLowerCase())) names.add(token.text);
      i += 1;
    } else {
      i += 1;
    }
  }
  return [...names].sort();
}

const SUFFIXES: Record<MetricType, readonly string[]> = {
  counter: [''],
  gauge: [''],
  untyped: [''],
  histogram: ['_bucket', '_sum', '_count'],
  summary: ['', '_sum', '_count'],
};

/** Every series name the families expose (a histogram's _bucket, _sum and _count). */
export function seriesNames(families: readonly MetricFamily[]): Set<string> {
  return new Set(families.flatMap((family) => SUFFIXES[family.type].map((suffix) => family.name + suffix)));
}

/**
 * The metric families of a Prometheus text exposition (a /metrics body), from its `# TYPE` lines
 * and, for samples without one, the sample names. A family is listed even before it has samples,
 * as prom-client writes HELP and TYPE for labelled metrics that were never observed.
 */
export function metricFamiliesInExposition(text: string): MetricFamily[] {
  const families = new Map<string, MetricFamily>();
  for (const line of text.split('\n')) {
    const typed = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)\s*$/.exec(line);
    if (typed?.[1] && typed[2]) families.set(typed[1], { name: typed[1], type: typed[2] as MetricType });
  }
  const typed = seriesNames([...families.values()]);
  for (const line of text.split('\n')) {
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (sample?.[1] && !typed.has(sample[1]) && !families.has(sample[1])) {
      families.set(sample[1], { name: sample[1], type: 'untyped' });
    }
  }
  return [...families.values()];
}

/** Grafana's interval variables, replaced by a duration so that promtool can parse the expression. */
export function grafanaExprToPromQL(expr: string): string {
  return expr.replace(/\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?/g, '5m');
}
