import { describe, expect, it } from 'vitest';
import { LinearKernel, linearInJs, type Linear } from './reference-kernel.ts';

/** Deterministic values in [-1, 1). */
function values(length: number, seed: number): number[] {
  let state = seed;
  return Array.from({ length }, () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state / 2 ** 31 - 1;
  });
}

function layer(inFeatures: number, outFeatures: number, seed: number): Linear {
  return {
    inFeatures,
    outFeatures,
    weight: Float32Array.from(values(inFeatures * outFeatures, seed)),
    bias: Float64Array.from(values(outFeatures, seed + 1)),
  };
}

/** Each output as one plain dot product from the first term to the last, then the bias. */
function naive(x: Float64Array, rows: number, { inFeatures: n, outFeatures: m, weight, bias }: Linear): Float64Array {
  const y = new Float64Array(rows * m);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < m; o++) {
      let sum = 0;
      for (let k = 0; k < n; k++) sum += x[r * n + k]! * weight[o * n + k]!;
      y[r * m + o] = sum + bias[o]!;
    }
  }
  return y;
}

describe('LinearKernel', () => {
  it('runs the WebAssembly SIMD kernel on this machine', () => {
    expect(new LinearKernel().simd).toBe(true);
  });

  // Rows and outputs that are and are not multiples of four: the kernel's blocks, its zero-padded
  // last rows, the outputs it leaves to the loop, and a single row and output.
  it.each([
    [8, 16, 12],
    [7, 13, 10],
    [1, 5, 1],
    [3, 96, 2],
    [13, 384, 1536],
  ])('gives the bits of a plain dot product loop for %i rows, %i in, %i out, as the JS loop does', (rows, n, m) => {
    const linear = layer(n, m, rows * 1000 + n);
    const x = Float64Array.from(values(rows * n, 99 + m));
    const expected = naive(x, rows, linear);
    expect(new LinearKernel().apply(x, rows, linear)).toEqual(expected);
    expect(linearInJs(x, rows, linear)).toEqual(expected);
  });

  it('uses a weight read into its weight space in place, and copies one from elsewhere, across growth', () => {
    const kernel = new LinearKernel();
    const small = layer(8, 4, 1);
    const large = layer(256, 512, 2);
    for (const linear of [small, large, small]) {
      const space = kernel.weightSpace(linear.weight.length * 4);
      const weight = new Float32Array(space.buffer, space.byteOffset, linear.weight.length);
      weight.set(linear.weight);
      const rows = 6;
      const x = Float64Array.from(values(rows * linear.inFeatures, 5));
      const expected = naive(x, rows, linear);
      expect(kernel.apply(x, rows, { ...linear, weight })).toEqual(expected);
      expect(kernel.apply(x, rows, linear)).toEqual(expected);
    }
  });

  it('refuses an input whose length is not rows x in', () => {
    expect(() => new LinearKernel().apply(new Float64Array(10), 3, layer(4, 4, 1))).toThrow(RangeError);
  });
});
