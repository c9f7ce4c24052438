import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ColumnQuantizer, INT8_MAX, roundHalfEven, type MatrixFill } from './quantize.ts';

/** Writes `values` into the buffer it is given, as the transposer does. */
const fillWith =
  (values: Float32Array): MatrixFill =>
  async (buffer) => {
    const into = new Float32Array(buffer.buffer, buffer.byteOffset, values.length);
    into.set(values);
    return into;
  };

async function quantize(values: Float32Array, rows: number, cols: number, quantizer = new ColumnQuantizer()) {
  const out = new Int8Array(rows * cols);
  const scales = await quantizer.quantize(fillWith(values), rows, cols, out);
  return { out, scales };
}

/** Each column's scale is its largest magnitude over 127, and every value is within half a step of what it stands for. */
function expectQuantizedByColumn(values: Float32Array, rows: number, cols: number, { out, scales }: { out: Int8Array; scales: Float32Array }) {
  expect(scales.length).toBe(cols);
  for (let c = 0; c < cols; c++) {
    let absmax = 0;
    for (let r = 0; r < rows; r++) absmax = Math.max(absmax, Math.abs(values[r * cols + c]!));
    const scale = scales[c]!;
    // A scale below float32's smallest normal (a column of zeros, or of denormals) is 1.
    if (absmax / INT8_MAX < 2 ** -126) expect(scale).toBe(1);
    else expect(Math.abs(scale - absmax / INT8_MAX)).toBeLessThanOrEqual(absmax * 2 ** -23);
    for (let r = 0; r < rows; r++) {
      const q = out[r * cols + c]!;
      expect(Math.abs(q)).toBeLessThanOrEqual(INT8_MAX);
      // Half a step, and float32's rounding of the division.
      if (Math.abs(q * scale - values[r * cols + c]!) > scale / 2 + Math.abs(values[r * cols + c]!) * 2 ** -22) expect.fail(`[${r}, ${c}] = ${values[r * cols + c]} became ${q} x ${scale}`);
    }
  }
}

describe('ColumnQuantizer', () => {
  // ConvNeXt's Linear shapes, and column counts the SIMD kernel leaves partly to the loop (not multiples of 16 or of 4).
  const shapes: Array<[number, number]> = [[96, 384], [384, 96], [1, 1], [3, 5], [7, 17], [2, 33], [130, 66]];
  for (const [rows, cols] of shapes) {
    it(`quantizes a ${rows}x${cols} matrix by column into int8 steps of max|w| / 127`, async () => {
      const values = Float32Array.from({ length: rows * cols }, (_, i) => Math.cos(i * 0.7) * (1 + (i % cols)) * 0.01);
      const result = await quantize(values, rows, cols);
      expectQuantizedByColumn(values, rows, cols, result);
      // The largest magnitude of a column is its full step count.
      for (let c = 0; c < cols; c++) {
        const column = Array.from({ length: rows }, (_, r) => Math.abs(result.out[r * cols + c]!));
        expect(Math.max(...column)).toBe(INT8_MAX);
      }
    });
  }

  it('holds for any matrix (property)', async () => {
    const quantizer = new ColumnQuantizer();
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 40 }),
        fc.array(fc.float({ min: -1e3, max: 1e3, noNaN: true, noDefaultInfinity: true }), { minLength: 360, maxLength: 360 }),
        async (rows, cols, pool) => {
          const values = Float32Array.from({ length: rows * cols }, (_, i) => pool[i % pool.length]!);
          expectQuantizedByColumn(values, rows, cols, await quantize(values, rows, cols, quantizer));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('rounds ties to the even step, as numpy does, in the kernel and in the loop alike', async () => {
    // Column 0 spans 127 steps of 1; the other values sit exactly halfway between two steps.
    const halves = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5];
    const cols = 20; // 16 columns by the kernel, 4 by the loop
    const rows = halves.length + 1;
    const values = new Float32Array(rows * cols);
    for (let c = 0; c < cols; c++) {
      values[c] = 127;
      halves.forEach((h, r) => (values[(r + 1) * cols + c] = h));
    }
    const { out, scales } = await quantize(values, rows, cols);
    expect([...scales]).toEqual(new Array(cols).fill(1));
    for (let c = 0; c < cols; c++) expect(halves.map((_, r) => out[(r + 1) * cols + c])).toEqual([0, 2, 2, 0, -2, -2, 126, -126]);
  });

  it('gives a column of zeros scale 1, and a NaN a zero step', async () => {
    const values = Float32Array.from([0, 1, Number.NaN, 0, -2, 4]);
    const { out, scales } = await quantize(values, 2, 3);
    expect(scales[0]).toBe(1);
    expect([out[0], out[3]]).toEqual([0, 0]);
    expect(out[2]).toBe(0);
  });

  it('serves overlapping calls one at a time, and refuses a fill with the wrong number of values', async () => {
    const quantizer = new ColumnQuantizer();
    const a = Float32Array.from({ length: 64 }, (_, i) => i);
    const b = Float32Array.from({ length: 64 }, (_, i) => -i);
    const [qa, qb] = await Promise.all([quantize(a, 4, 16, quantizer), quantize(b, 4, 16, quantizer)]);
    expect(Array.from(qa.out, (q) => -q || 0)).toEqual(Array.from(qb.out));
    await expect(quantizer.quantize(async () => new Float32Array(3), 2, 2, new Int8Array(4))).rejects.toThrow('a 2x2 matrix has 4 values, got 3');
  });

  it('roundHalfEven is numpy.round', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6, -2.6].map(roundHalfEven)).toEqual([0, 2, 2, -0, -2, 2, 3, -3]);
  });
});
