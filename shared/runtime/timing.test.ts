import { describe, expect, it } from 'vitest';
import { roundOrder } from './timing.ts';

describe('roundOrder', () => {
  it('alternates two models ABBA BAAB', () => {
    expect(Array.from({ length: 4 }, (_, i) => roundOrder(2, i))).toEqual([[0, 1], [1, 0], [1, 0], [0, 1]]);
  });

  for (const count of [1, 3, 4]) {
    it(`puts each of ${count} models in every position equally often, and each round's first model last in the next`, () => {
      const rounds = Array.from({ length: 2 * count }, (_, i) => roundOrder(count, i));
      for (const order of rounds) expect([...order].sort()).toEqual(Array.from({ length: count }, (_, i) => i));
      for (let position = 0; position < count; position++) {
        const counts = new Array<number>(count).fill(0);
        for (const order of rounds) counts[order[position]!]!++;
        expect(counts).toEqual(new Array(count).fill(2));
      }
      for (let i = 0; i + 1 < rounds.length; i += 2) expect(rounds[i + 1]).toEqual([...rounds[i]!].reverse());
    });
  }
});
