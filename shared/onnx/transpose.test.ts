import { describe, expect, it } from 'vitest';
import { Transposer, type MatrixSource } from './transpose.ts';

/** A [rows, cols] matrix whose every value tells where it sits: r * cols + c (exact in float32 here). */
const numbered = (rows: number, cols: number) => Float32Array.from({ length: rows * cols }, (_, i) => i);

/** Reads `values` into the buffer it is given, as a checkpoint tensor does. */
const readInto =
  (values: Float32Array): MatrixSource =>
  async (buffer) => {
    const into = new Float32Array(buffer.buffer, buffer.byteOffset, values.length);
    into.set(values);
    return into;
  };

const asFloats = (bytes: Uint8Array) => new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);

function expectTransposed(result: Uint8Array, rows: number, cols: number) {
  const out = asFloats(result);
  expect(out.length).toBe(rows * cols);
  // [cols, rows]: row c of the result is column c of the source.
  for (let c = 0; c < cols; c++) for (let r = 0; r < rows; r++) if (out[c * rows + r] !== r * cols + c) expect.fail(`value [${c}, ${r}] is ${out[c * rows + r]}, expected ${r * cols + c}`);
}

describe('Transposer', () => {
  // ConvNeXt's Linear shapes ([4d, d], [d, 4d]), shapes past one 32x32 block, and shapes whose
  // last rows and columns the SIMD kernel leaves to the plain loop (not multiples of 4).
  const shapes: Array<[number, number]> = [[384, 96], [96, 384], [64, 96], [1, 1], [1, 7], [7, 1], [5, 7], [130, 66], [33, 35], [4, 4], [3, 8]];
  for (const [rows, cols] of shapes) {
    it(`transposes a ${rows}x${cols} matrix into the buffer it is lent`, async () => {
      const target = new Uint8Array(rows * cols * 4 + 64);
      const result = await new Transposer().transpose(readInto(numbered(rows, cols)), rows, cols, target);
      expect(result.buffer).toBe(target.buffer);
      expect(result.byteOffset).toBe(0);
      expectTransposed(result, rows, cols);
    });
  }

  it('reuses its memory across matrices of growing and shrinking sizes, and allocates a target when none is lent', async () => {
    const transposer = new Transposer();
    for (const [rows, cols] of [[8, 4], [768, 192], [12, 20], [192, 768], [6, 2]] as const) {
      expectTransposed(await transposer.transpose(readInto(numbered(rows, cols)), rows, cols), rows, cols);
    }
  });

  it('takes values its source produced elsewhere (a dtype it converted) as well as in the buffer', async () => {
    const elsewhere: MatrixSource = async () => numbered(36, 20);
    expectTransposed(await new Transposer().transpose(elsewhere, 36, 20), 36, 20);
  });

  it('serves overlapping calls one at a time, each with its own values', async () => {
    const transposer = new Transposer();
    const slow =
      (rows: number, cols: number): MatrixSource =>
      async (buffer) => {
        await new Promise((resolve) => setTimeout(resolve, 20));
        return readInto(numbered(rows, cols))(buffer);
      };
    const [a, b] = await Promise.all([transposer.transpose(slow(40, 24), 40, 24), transposer.transpose(slow(24, 40), 24, 40)]);
    expectTransposed(a, 40, 24);
    expectTransposed(b, 24, 40);
  });

  it('refuses a target too small for the matrix, and a source that reads the wrong number of values', async () => {
    const transposer = new Transposer();
    await expect(transposer.transpose(readInto(numbered(4, 4)), 4, 4, new Uint8Array(60))).rejects.toThrow('a 4x4 transpose needs 64 bytes, the target has 60');
    await expect(transposer.transpose(async () => numbered(3, 4), 4, 4)).rejects.toThrow('a 4x4 matrix has 16 values, read 12');
    // A failed call does not stop the next one.
    expectTransposed(await transposer.transpose(readInto(numbered(4, 4)), 4, 4), 4, 4);
  });
});
