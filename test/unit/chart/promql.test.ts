import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  grafanaExprToPromQL,
  metricFamiliesInExposition,
  metricNamesInPromQL,
  seriesNames,
} from '../../support/chart/promql.ts';

describe('metricNamesInPromQL', () => {
  it('finds a bare metric and one with matchers and a range', () => {
    assert.deepEqual(metricNamesInPromQL('up{job="x"} == 0'), ['up']);
    assert.deepEqual(metricNamesInPromQL('rate(a_total{status=~"5.."}[5m]) > 0.1'), ['a_total']);
  });

  it('ignores functions, aggregations, grouping labels and keywords', () => {
    const expr =
      'histogram_quantile(0.95, sum by (node, le) (rate(h_bucket{job=~"$job"}[$__rate_interval]))) > 30';
    assert.deepEqual(metricNamesInPromQL(expr), ['h_bucket']);
    assert.deepEqual(metricNamesInPromQL('sum(rate(a[5m])) without (pod) / on (node) group_left (x) b'), [
      'a',
      'b',
    ]);
    assert.deepEqual(metricNamesInPromQL('a and bool b or c unless d offset 1h'), ['a', 'b', 'c', 'd']);
  });

  it('does not take label names or values inside matchers for metrics', () => {
    assert.deepEqual(metricNamesInPromQL('m{stage="download", node=~"a|b", le!="Inf"}'), ['m']);
  });

  it('reads __name__ matchers and recording-rule names with colons', () => {
    assert.deepEqual(metricNamesInPromQL('{__name__="x_total", job="y"} + job:rate5m:sum'), [
      'job:rate5m:sum',
      'x_total',
    ]);
  });

  it('treats numbers, durations and Grafana variables as no names', () => {
    assert.deepEqual(metricNamesInPromQL(`1e3 * 0x1f + inf - NaN + a[1h30m:\${__interval}]`), ['a']);
  });

  it('lists each name once, sorted', () => {
    assert.deepEqual(metricNamesInPromQL('b_sum / b_count + b_sum'), ['b_count', 'b_sum']);
  });

  it('rejects an unterminated string instead of guessing', () => {
    assert.throws(() => metricNamesInPromQL('m{a="x}'), /unterminated string/);
  });
});

describe('seriesNames', () => {
  it('expands histograms into _bucket, _sum and _count and keeps counters and gauges', () => {
    assert.deepEqual(
      [
        ...seriesNames([
          { name: 'h', type: 'histogram' },
          { name: 'c_total', type: 'counter' },
          { name: 'g', type: 'gauge' },
        ]),
      ].sort(),
      ['c_total', 'g', 'h_bucket', 'h_count', 'h_sum'],
    );
  });
});

describe('metricFamiliesInExposition', () => {
  it('lists typed families, even without samples, and untyped samples', () => {
    const text = [
      '# HELP jobs_total Jobs',
      '# TYPE jobs_total counter',
      '# HELP d Duration',
      '# TYPE d histogram',
      'd_bucket{le="1"} 0',
      'd_sum 0',
      'd_count 0',
      'loose_metric{a="b"} 1',
      '',
    ].join('\n');
    assert.deepEqual(metricFamiliesInExposition(text), [
      { name: 'jobs_total', type: 'counter' },
      { name: 'd', type: 'histogram' },
      { name: 'loose_metric', type: 'untyped' },
    ]);
  });
});

describe('grafanaExprToPromQL', () => {
  it('replaces Grafana interval variables with a duration and keeps other variables', () => {
    assert.equal(
      grafanaExprToPromQL(`rate(a{node=~"$node"}[$__rate_interval]) + rate(b[\${__interval}])`),
      'rate(a{node=~"$node"}[5m]) + rate(b[5m])',
    );
  });
});
