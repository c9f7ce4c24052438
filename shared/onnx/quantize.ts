/**
 * Per-channel symmetric int8 quantization of a MatMul weight, the INT8 variant's weights (DESIGN §3
 * Variants), done the way onnxruntime's `quantize_dynamic(per_channel=True)` does it for a MatMul's
 * constant input, so that its graph and ours hold the same bytes (test/integration/int8-oracle.test.ts
 * compares them): one scale per output column (axis -1 of the [in, out] matrix), scale = max|w| / 127
 * in float32 (quant_utils.compute_scale_zp with symmetric=True: (rmax - rmin) / (qmax - qmin) over
 * [-absmax, absmax] and [-127, 127]), zero point 0, each value round(w / scale) half to even
 * (numpy.round) and clipped to [-127, 127]; a column of zeros gets scale 1 (as compute_scale_zp does
 * below float32's smallest normal).
 *
 * Our own, not onnxruntime's: its quantizer is Python (nothing here needs Python at run time) and
 * works on a whole model loaded in memory, where the exporter quantizes one matrix at a time as it
 * streams the weights. ConvNeXt-large has 188 M such values; a JS loop takes 12-16 ns a value (2-3 s,
 * the whole budget the variant may add to the export), so a WebAssembly SIMD kernel does both passes
 * (WebAssembly's f32x4.nearest rounds ties to even, as numpy does), with the loop below for the
 * columns it leaves and for machines without SIMD.
 */
import { align, KernelMemory } from './kernel-memory.ts';

interface Kernel {
  absmax(src: number, dst: number, rows: number, cols: number): void;
  quantize(src: number, scales: number, dst: number, rows: number, cols: number): void;
}

export const INT8_MAX = 127;
/** float32's smallest normal: a scale below it is replaced (compute_scale_zp). */
const FLOAT32_TINY = 1.1754943508222875e-38;

/**
 * Compiled from this WebAssembly text (wabt's wat2wasm, SIMD enabled):
 *
 * (module
 *   (import "js" "memory" (memory 0))
 *   ;; $dst[c] = max over rows of |$src[r * cols + c]| for c < cols & ~3 (float32 [rows, cols] at byte $src, cols values at byte $dst, zeroed by the caller).
 *   (func (export "absmax") (param $src i32) (param $dst i32) (param $rows i32) (param $cols i32)
 *     (local $rowBytes i32) (local $cols4 i32) (local $r i32) (local $c i32) (local $in i32) (local $at i32)
 *     (local.set $rowBytes (i32.shl (local.get $cols) (i32.const 2)))
 *     (local.set $cols4 (i32.shl (i32.and (local.get $cols) (i32.const -4)) (i32.const 2)))
 *     (block $rowsDone
 *       (loop $rows
 *         (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
 *         (local.set $in (i32.add (local.get $src) (i32.mul (local.get $r) (local.get $rowBytes))))
 *         (local.set $c (i32.const 0))
 *         (block $colsDone
 *           (loop $cols
 *             (br_if $colsDone (i32.ge_u (local.get $c) (local.get $cols4)))
 *             (local.set $at (i32.add (local.get $dst) (local.get $c)))
 *             (v128.store align=4 (local.get $at)
 *               (f32x4.max (v128.load align=4 (local.get $at)) (f32x4.abs (v128.load align=4 (i32.add (local.get $in) (local.get $c))))))
 *             (local.set $c (i32.add (local.get $c) (i32.const 16)))
 *             (br $cols)))
 *         (local.set $r (i32.add (local.get $r) (i32.const 1)))
 *         (br $rows))))
 *   ;; int8 $dst[r * cols + c] = clamp(nearest-even($src[r * cols + c] / $scales[c]), -127, 127) for c < cols & ~15.
 *   (func (export "quantize") (param $src i32) (param $scales i32) (param $dst i32) (param $rows i32) (param $cols i32)
 *     (local $cols16 i32) (local $r i32) (local $c i32) (local $in i32) (local $out i32) (local $s i32)
 *     (local $lo v128) (local $hi v128)
 *     (local.set $cols16 (i32.and (local.get $cols) (i32.const -16)))
 *     (block $rowsDone
 *       (loop $rows
 *         (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
 *         (local.set $in (i32.add (local.get $src) (i32.shl (i32.mul (local.get $r) (local.get $cols)) (i32.const 2))))
 *         (local.set $out (i32.add (local.get $dst) (i32.mul (local.get $r) (local.get $cols))))
 *         (local.set $c (i32.const 0))
 *         (block $colsDone
 *           (loop $cols
 *             (br_if $colsDone (i32.ge_u (local.get $c) (local.get $cols16)))
 *             (local.set $s (i32.add (local.get $scales) (i32.shl (local.get $c) (i32.const 2))))
 *             (local.set $lo (i16x8.narrow_i32x4_s
 *               (call $lane (v128.load align=4 (local.get $in)) (v128.load align=4 (local.get $s)))
 *               (call $lane (v128.load offset=16 align=4 (local.get $in)) (v128.load offset=16 align=4 (local.get $s)))))
 *             (local.set $hi (i16x8.narrow_i32x4_s
 *               (call $lane (v128.load offset=32 align=4 (local.get $in)) (v128.load offset=32 align=4 (local.get $s)))
 *               (call $lane (v128.load offset=48 align=4 (local.get $in)) (v128.load offset=48 align=4 (local.get $s)))))
 *             (v128.store align=1 (local.get $out) (i8x16.narrow_i16x8_s (local.get $lo) (local.get $hi)))
 *             (local.set $in (i32.add (local.get $in) (i32.const 64)))
 *             (local.set $out (i32.add (local.get $out) (i32.const 16)))
 *             (local.set $c (i32.add (local.get $c) (i32.const 16)))
 *             (br $cols)))
 *         (local.set $r (i32.add (local.get $r) (i32.const 1)))
 *         (br $rows))))
 *   ;; Four values: divided by their scales, rounded to nearest (ties to even), as int32 clamped to [-127, 127] (NaN: 0).
 *   (func $lane (param $v v128) (param $s v128) (result v128)
 *     (i32x4.min_s (i32x4.max_s (i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.div (local.get $v) (local.get $s))))
 *       (v128.const i32x4 -127 -127 -127 -127)) (v128.const i32x4 127 127 127 127))))
 */
const QUANTIZE_WASM = 'AGFzbQEAAAABFgNgBH9/f38AYAV/f39/fwBgAnt7AXsCDgECanMGbWVtb3J5AgAAAwQDAAECBxUCBmFic21heAAACHF1YW50aXplAAEK6QIDcQEGfyADQQJ0IQQgA0F8cUECdCEFAkADQCAGIAJPDQEgACAGIARsaiEIQQAhBwJAA0AgByAFTw0BIAEgB2ohCSAJIAn9AAIAIAggB2r9AAIA/eAB/ekB/QsCACAHQRBqIQcMAAsLIAZBAWohBgwACwsLuwECBn8CeyAEQXBxIQUCQANAIAYgA08NASAAIAYgBGxBAnRqIQggAiAGIARsaiEJQQAhBwJAA0AgByAFTw0BIAEgB0ECdGohCiAI/QACACAK/QACABACIAj9AAIQIAr9AAIQEAL9hQEhCyAI/QACICAK/QACIBACIAj9AAIwIAr9AAIwEAL9hQEhDCAJIAsgDP1l/QsAACAIQcAAaiEIIAlBEGohCSAHQRBqIQcMAAsLIAZBAWohBgwACwsLOAAgACAB/ecB/Wr9+AH9DIH///+B////gf///4H////9uAH9DH8AAAB/AAAAfwAAAH8AAAD9tgEL';

/** Fills a buffer of float32 values (a view of `buffer`'s first bytes, or values of its own). */
export type MatrixFill = (buffer: Uint8Array) => Promise<Float32Array | Uint8Array>;

/**
 * Quantizes matrices by column in a WebAssembly memory of its own, reused (grown to the largest)
 * from one matrix to the next.
 */
export class ColumnQuantizer {
  private readonly memory = new KernelMemory<Kernel>(QUANTIZE_WASM);
  /** One matrix at a time in the memory: calls that overlap wait their turn. */
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * The row-major [rows, cols] float32 matrix `fill` writes, quantized by column into `out` (rows *
   * cols bytes); returns the cols scales: `out[r * cols + c] * scales[c]` is the value it stands for.
   */
  quantize(fill: MatrixFill, rows: number, cols: number, out: Int8Array): Promise<Float32Array> {
    const done = this.queue.then(() => this.run(fill, rows, cols, out));
    this.queue = done.catch(() => undefined);
    return done;
  }

  private async run(fill: MatrixFill, rows: number, cols: number, out: Int8Array): Promise<Float32Array> {
    const count = rows * cols;
    if (out.length < count) throw new Error(`a ${rows}x${cols} quantization needs ${count} bytes, the target has ${out.length}`);
    const [scalesAt, outAt] = [align(count * 4), align(count * 4) + align(cols * 4)];
    const { buffer: space, kernel } = this.memory.reserve(outAt + count);
    const filled = await fill(new Uint8Array(space, 0, count * 4));
    const given = filled instanceof Float32Array ? filled : new Float32Array(filled.buffer, filled.byteOffset, filled.byteLength / 4);
    if (given.length !== count) throw new Error(`a ${rows}x${cols} matrix has ${count} values, got ${given.length}`);
    // The fill may have produced its values elsewhere: bring them in.
    if (given.buffer !== space || given.byteOffset !== 0) new Float32Array(space, 0, count).set(given);
    const values = new Float32Array(space, 0, count);
    const absmax = new Float32Array(space, scalesAt, cols).fill(0);
    const quantized = new Int8Array(space, outAt, count);
    const done = kernel ? cols & ~3 : 0;
    kernel?.absmax(0, scalesAt, rows, cols);
    absmaxRange(values, absmax, rows, cols, done);
    // In float64, then rounded once to float32: what numpy does with the float64 range over the int range.
    for (let c = 0; c < cols; c++) {
      const scale = Math.fround((2 * absmax[c]!) / (2 * INT8_MAX));
      absmax[c] = scale < FLOAT32_TINY ? 1 : scale;
    }
    const scales = absmax;
    const quantizedByKernel = kernel ? cols & ~15 : 0;
    kernel?.quantize(0, scalesAt, outAt, rows, cols);
    quantizeRange(values, scales, quantized, rows, cols, quantizedByKernel);
    out.set(quantized);
    return scales.slice();
  }
}

/** max |value| of columns [c0, cols) into `absmax`. */
function absmaxRange(values: Float32Array, absmax: Float32Array, rows: number, cols: number, c0: number): void {
  for (let r = 0; r < rows; r++) {
    for (let c = c0; c < cols; c++) {
      // Math.max keeps a NaN, as the kernel's f32x4.max does.
      absmax[c] = Math.max(absmax[c]!, Math.abs(values[r * cols + c]!));
    }
  }
}

/** Columns [c0, cols) quantized into `out`, as the kernel does the others. */
function quantizeRange(values: Float32Array, scales: Float32Array, out: Int8Array, rows: number, cols: number, c0: number): void {
  for (let r = 0; r < rows; r++) {
    for (let c = c0; c < cols; c++) {
      // float32 division (exact to float32 when computed in float64 and rounded once).
      const q = roundHalfEven(Math.fround(values[r * cols + c]! / scales[c]!));
      out[r * cols + c] = q > INT8_MAX ? INT8_MAX : q < -INT8_MAX ? -INT8_MAX : q;
    }
  }
}

/** numpy.round: to the nearest integer, ties to the even one (Math.round sends ties up). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
