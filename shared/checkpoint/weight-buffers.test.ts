import { describe, expect, it } from 'vitest';
import { alignedBuffer, countNonFinite } from './weight-buffers.ts';

/** Values that are finite but close to the edge (largest float32, -0, subnormals), and the non-finite ones. */
const EDGES = [3.4028234663852886e38, -3.4028234663852886e38, -0, 1e-45, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];

function reference(values: Float32Array): number {
  return values.filter((v) => !Number.isFinite(v)).length;
}

describe('countNonFinite', () => {
  it('counts NaN and infinities in an aligned buffer (SIMD) exactly as in any other array, at every offset and length', () => {
    const bytes = alignedBuffer(4096);
    const all = new Float32Array(bytes.buffer, bytes.byteOffset, 1024);
    let seed = 1;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let i = 0; i < all.length; i++) all[i] = random() < 0.3 ? EDGES[Math.floor(random() * EDGES.length)]! : (random() - 0.5) * 1e30;
    for (let start = 0; start < 9; start++) {
      for (let length = 0; length < 40; length++) {
        const view = all.subarray(start, start + length);
        expect(countNonFinite(view), `[${start}, +${length})`).toBe(reference(view));
        expect(countNonFinite(Float32Array.from(view)), `copy of [${start}, +${length})`).toBe(reference(view));
      }
    }
    expect(countNonFinite(all)).toBe(reference(all));
    expect(reference(all)).toBeGreaterThan(100);
  });

  it('gives an aligned buffer of the asked length, zeroed', () => {
    const bytes = alignedBuffer(100_003);
    expect(bytes.byteLength).toBe(100_003);
    expect(bytes.every((b) => b === 0)).toBe(true);
    expect(countNonFinite(new Float32Array(bytes.buffer, 0, 25_000))).toBe(0);
  });
});
