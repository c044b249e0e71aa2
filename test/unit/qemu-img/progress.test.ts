import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConvertProgressParser } from '../../../src/storage/qemu-img/progress.ts';

function feed(chunks: readonly string[]): number[] {
  const parser = new ConvertProgressParser();
  const reported: number[] = [];
  for (const chunk of chunks) {
    const percent = parser.push(chunk);
    if (percent !== undefined) reported.push(percent);
  }
  return reported;
}

describe('ConvertProgressParser', () => {
  it('reports the latest of several reports separated by carriage returns in one chunk', () => {
    assert.deepEqual(feed(['    (0.00/100%)\r    (1.01/100%)\r    (2.02/100%)\r']), [2.02]);
  });

  it('reports each chunk that raises the percent', () => {
    assert.deepEqual(feed(['    (0.00/100%)\r', '    (1.01/100%)\r', '    (2.02/100%)\r']), [1.01, 2.02]);
  });

  it('joins a report cut anywhere between chunks', () => {
    const stream = '    (0.00/100%)\r    (12.50/100%)\r    (37.75/100%)\r    (100.00/100%)\r';
    for (let cut = 1; cut < stream.length; cut++) {
      const reported = feed([stream.slice(0, cut), stream.slice(cut)]);
      assert.equal(reported.at(-1), 100, `cut at ${cut}`);
      assert.ok(reported.length <= 2, `cut at ${cut}: ${reported}`);
      for (const value of reported) assert.ok([12.5, 37.75, 100].includes(value), `cut at ${cut}: ${value}`);
    }
  });

  it('joins a report spread over one-character chunks', () => {
    assert.deepEqual(feed([...'    (5.00/100%)\r    (6.50/100%)\r']), [5, 6.5]);
  });

  it('never goes backwards and ignores repeats', () => {
    assert.deepEqual(feed(['(10.00/100%)\r', '(9.00/100%)\r', '(10.00/100%)\r', '(11.00/100%)\r']), [10, 11]);
  });

  it('ignores other output and caps at 100', () => {
    const parser = new ConvertProgressParser();
    assert.equal(parser.push('qemu-img: warning: something\n(abc/100%)\r'), undefined);
    assert.equal(parser.push('(250.00/100%)\r'), 100);
    assert.equal(parser.percent, 100);
  });

  it('keeps a bounded tail when the output never contains a report', () => {
    const parser = new ConvertProgressParser();
    for (let i = 0; i < 1000; i++) parser.push('x'.repeat(1000));
    assert.equal(parser.push('(42.00/100%)\r'), 42);
  });
});
