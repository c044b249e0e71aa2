import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LruMap } from '../../../src/util/lru.ts';

describe('LruMap', () => {
  it('drops the least recently used entry past its capacity, telling onDrop', () => {
    const dropped: string[] = [];
    const map = new LruMap<string, string>(2, (value) => dropped.push(value));
    map.set('a', 'A');
    map.set('b', 'B');
    assert.equal(map.get('a'), 'A'); // a is now used after b
    map.set('c', 'C');
    assert.deepEqual(dropped, ['B']);
    assert.equal(map.get('b'), undefined);
    assert.equal(map.get('a'), 'A');
    assert.equal(map.get('c'), 'C');
  });

  it('replaces a value under the same key without dropping it through onDrop', () => {
    const dropped: string[] = [];
    const map = new LruMap<string, string>(1, (value) => dropped.push(value));
    map.set('a', 'old');
    map.set('a', 'new');
    assert.equal(map.get('a'), 'new');
    assert.deepEqual(dropped, []);
  });
});
