/**
 * The reference pass's matrix product (reference.ts): `y = x W^T + b` with activations in float64,
 * weights float32 in torch's `[out, in]` layout, every sum in float64 from the first term to the last.
 * It is almost all of the pass's work (ConvNeXt-large: about 5.4 G multiply-adds per worker thread
 * for its two samples of the parity stage's four), so a WebAssembly SIMD kernel does it: the rows are
 * packed four by four (row r's value k beside rows r +- 1..3's), so one f64x2 holds two rows' terms,
 * and a weight (widened once per block of four outputs, into a tile that stays in cache) splatted
 * across both lanes multiplies them; four rows by four outputs per pass over k, eight f64x2 sums side
 * by side. Each lane adds the same terms in the same order as the plain loop (WebAssembly has no
 * fused multiply-add; every mul and add rounds as a scalar one does), so kernel and loop give the same
 * bits, whatever the batch. The weight is read straight into the kernel's memory (`weightSpace`).
 * The loop below does the outputs past the last multiple of four, and everything where WebAssembly
 * SIMD is missing.
 */
import { align, KernelMemory } from '../../onnx/kernel-memory.ts';

/** torch.nn.Linear: `weight` as torch stores it, `[out, in]` row-major. */
export interface Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Float32Array;
  readonly bias: Float64Array;
}

/**
 * Compiled from this WebAssembly text (wabt's wat2wasm, SIMD enabled):
 *
 * (module
 *   (import "js" "memory" (memory 0))
 *   ;; y = x W^T + b for the first (m & ~3) outputs. x: rows (a multiple of 4) float64 rows packed four
 *   ;; by four, row r's value k at byte x + ((r >> 2) * n + k) * 32 + (r & 3) * 8. w: float32 [m, n].
 *   ;; bias: float64 [m]. y: float64 [rows, m]. tile: room for 4n float64, the four weight rows of an
 *   ;; output block widened once (a promotion per term would take the ports the mul and add need).
 *   ;; Four rows (two f64x2s) by four outputs per pass over k, each lane's sum taken from k = 0 up, as
 *   ;; a scalar loop would.
 *   (func (export "linear") (param $x i32) (param $w i32) (param $bias i32) (param $y i32) (param $tile i32) (param $rows i32) (param $n i32) (param $m i32)
 *     (local $src i32) (local $dst i32) (local $srcEnd i32) (local $v v128)
 *     (local $rowBytes i32) (local $tileRowBytes i32) (local $o i32) (local $m4 i32) (local $wRow i32) (local $wp i32) (local $wEnd i32)
 *     (local $xBlock i32) (local $xEnd i32) (local $xp i32) (local $yp i32) (local $yRowBytes i32) (local $bp i32)
 *     (local $xa v128) (local $xb v128) (local $u v128)
 *     (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
 *     (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
 *     (local.set $rowBytes (i32.shl (local.get $n) (i32.const 2)))
 *     (local.set $tileRowBytes (i32.shl (local.get $n) (i32.const 3)))
 *     (local.set $yRowBytes (i32.shl (local.get $m) (i32.const 3)))
 *     (local.set $m4 (i32.and (local.get $m) (i32.const -4)))
 *     (local.set $xEnd (i32.add (local.get $x) (i32.mul (i32.shl (local.get $rows) (i32.const 3)) (local.get $n))))
 *     (block $outputsDone
 *       (loop $outputs
 *         (br_if $outputsDone (i32.ge_u (local.get $o) (local.get $m4)))
 *         ;; tile = the four weight rows from o on (4n contiguous float32), in float64
 *         (local.set $src (i32.add (local.get $w) (i32.mul (local.get $o) (local.get $rowBytes))))
 *         (local.set $srcEnd (i32.add (local.get $src) (i32.shl (local.get $rowBytes) (i32.const 2))))
 *         (local.set $dst (local.get $tile))
 *         (loop $widen
 *           (local.set $v (v128.load (local.get $src)))
 *           (v128.store (local.get $dst) (f64x2.promote_low_f32x4 (local.get $v)))
 *           (v128.store offset=16 (local.get $dst)
 *             (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))))
 *           (local.set $src (i32.add (local.get $src) (i32.const 16)))
 *           (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
 *           (br_if $widen (i32.lt_u (local.get $src) (local.get $srcEnd))))
 *         (local.set $wRow (local.get $tile))
 *         (local.set $wEnd (i32.add (local.get $wRow) (local.get $tileRowBytes)))
 *         (local.set $bp (i32.add (local.get $bias) (i32.shl (local.get $o) (i32.const 3))))
 *         (local.set $yp (i32.add (local.get $y) (i32.shl (local.get $o) (i32.const 3))))
 *         (local.set $xBlock (local.get $x))
 *         (block $rowsDone
 *           (loop $rowBlocks
 *             (br_if $rowsDone (i32.ge_u (local.get $xBlock) (local.get $xEnd)))
 *             (local.set $a0 (v128.const i64x2 0 0)) (local.set $a1 (v128.const i64x2 0 0))
 *             (local.set $a2 (v128.const i64x2 0 0)) (local.set $a3 (v128.const i64x2 0 0))
 *             (local.set $b0 (v128.const i64x2 0 0)) (local.set $b1 (v128.const i64x2 0 0))
 *             (local.set $b2 (v128.const i64x2 0 0)) (local.set $b3 (v128.const i64x2 0 0))
 *             (local.set $xp (local.get $xBlock))
 *             (local.set $wp (local.get $wRow))
 *             (loop $terms
 *               (local.set $xa (v128.load (local.get $xp)))
 *               (local.set $xb (v128.load offset=16 (local.get $xp)))
 *               (local.set $u (v128.load64_splat (local.get $wp)))
 *               (local.set $a0 (f64x2.add (local.get $a0) (f64x2.mul (local.get $xa) (local.get $u))))
 *               (local.set $b0 (f64x2.add (local.get $b0) (f64x2.mul (local.get $xb) (local.get $u))))
 *               (local.set $u (v128.load64_splat (i32.add (local.get $wp) (local.get $tileRowBytes))))
 *               (local.set $a1 (f64x2.add (local.get $a1) (f64x2.mul (local.get $xa) (local.get $u))))
 *               (local.set $b1 (f64x2.add (local.get $b1) (f64x2.mul (local.get $xb) (local.get $u))))
 *               (local.set $u (v128.load64_splat (i32.add (local.get $wp) (i32.shl (local.get $tileRowBytes) (i32.const 1)))))
 *               (local.set $a2 (f64x2.add (local.get $a2) (f64x2.mul (local.get $xa) (local.get $u))))
 *               (local.set $b2 (f64x2.add (local.get $b2) (f64x2.mul (local.get $xb) (local.get $u))))
 *               (local.set $u (v128.load64_splat (i32.add (local.get $wp) (i32.mul (local.get $tileRowBytes) (i32.const 3)))))
 *               (local.set $a3 (f64x2.add (local.get $a3) (f64x2.mul (local.get $xa) (local.get $u))))
 *               (local.set $b3 (f64x2.add (local.get $b3) (f64x2.mul (local.get $xb) (local.get $u))))
 *               (local.set $xp (i32.add (local.get $xp) (i32.const 32)))
 *               (local.set $wp (i32.add (local.get $wp) (i32.const 8)))
 *               (br_if $terms (i32.lt_u (local.get $wp) (local.get $wEnd))))
 *             ;; the block's four rows: lanes 0, 1 of a_j and of b_j, plus bias j
 *             (call $storeLow (local.get $yp) (local.get $bp) (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3))
 *             (local.set $yp (i32.add (local.get $yp) (local.get $yRowBytes)))
 *             (call $storeHigh (local.get $yp) (local.get $bp) (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3))
 *             (local.set $yp (i32.add (local.get $yp) (local.get $yRowBytes)))
 *             (call $storeLow (local.get $yp) (local.get $bp) (local.get $b0) (local.get $b1) (local.get $b2) (local.get $b3))
 *             (local.set $yp (i32.add (local.get $yp) (local.get $yRowBytes)))
 *             (call $storeHigh (local.get $yp) (local.get $bp) (local.get $b0) (local.get $b1) (local.get $b2) (local.get $b3))
 *             (local.set $yp (i32.add (local.get $yp) (local.get $yRowBytes)))
 *             (local.set $xBlock (local.get $xp))
 *             (br $rowBlocks)))
 *         (local.set $o (i32.add (local.get $o) (i32.const 4)))
 *         (br $outputs))))
 *   ;; y[j] = lane 0 of s_j + bias[j], j = 0..3
 *   (func $storeLow (param $yp i32) (param $bp i32) (param $s0 v128) (param $s1 v128) (param $s2 v128) (param $s3 v128)
 *     (f64.store (local.get $yp) (f64.add (f64x2.extract_lane 0 (local.get $s0)) (f64.load (local.get $bp))))
 *     (f64.store offset=8 (local.get $yp) (f64.add (f64x2.extract_lane 0 (local.get $s1)) (f64.load offset=8 (local.get $bp))))
 *     (f64.store offset=16 (local.get $yp) (f64.add (f64x2.extract_lane 0 (local.get $s2)) (f64.load offset=16 (local.get $bp))))
 *     (f64.store offset=24 (local.get $yp) (f64.add (f64x2.extract_lane 0 (local.get $s3)) (f64.load offset=24 (local.get $bp)))))
 *   ;; y[j] = lane 1 of s_j + bias[j], j = 0..3
 *   (func $storeHigh (param $yp i32) (param $bp i32) (param $s0 v128) (param $s1 v128) (param $s2 v128) (param $s3 v128)
 *     (f64.store (local.get $yp) (f64.add (f64x2.extract_lane 1 (local.get $s0)) (f64.load (local.get $bp))))
 *     (f64.store offset=8 (local.get $yp) (f64.add (f64x2.extract_lane 1 (local.get $s1)) (f64.load offset=8 (local.get $bp))))
 *     (f64.store offset=16 (local.get $yp) (f64.add (f64x2.extract_lane 1 (local.get $s2)) (f64.load offset=16 (local.get $bp))))
 *     (f64.store offset=24 (local.get $yp) (f64.add (f64x2.extract_lane 1 (local.get $s3)) (f64.load offset=24 (local.get $bp))))))
 */
const LINEAR_WASM =
  'AGFzbQEAAAABFQJgCH9/f39/f39/AGAGf397e3t7AAIOAQJqcwZtZW1vcnkCAAADBAMAAQEHCgEGbGluZWFyAAAKqwYDogUEA38Bew1/C3sgBkECdCEMIAZBA3QhDSAHQQN0IRcgB0F8cSEPIAAgBUEDdCAGbGohFAJAA0AgDiAPTw0BIAEgDiAMbGohCCAIIAxBAnRqIQogBCEJA0AgCP0ABAAhCyAJIAv9X/0LBAAgCSALIAv9DQgJCgsMDQ4PAAECAwQFBgf9X/0LBBAgCEEQaiEIIAlBIGohCSAIIApJDQALIAQhECAQIA1qIRIgAiAOQQN0aiEYIAMgDkEDdGohFiAAIRMCQANAIBMgFE8NAf0MAAAAAAAAAAAAAAAAAAAAACEc/QwAAAAAAAAAAAAAAAAAAAAAIR39DAAAAAAAAAAAAAAAAAAAAAAhHv0MAAAAAAAAAAAAAAAAAAAAACEf/QwAAAAAAAAAAAAAAAAAAAAAISD9DAAAAAAAAAAAAAAAAAAAAAAhIf0MAAAAAAAAAAAAAAAAAAAAACEi/QwAAAAAAAAAAAAAAAAAAAAAISMgEyEVIBAhEQNAIBX9AAQAIRkgFf0ABBAhGiAR/QoDACEbIBwgGSAb/fIB/fABIRwgICAaIBv98gH98AEhICARIA1q/QoDACEbIB0gGSAb/fIB/fABIR0gISAaIBv98gH98AEhISARIA1BAXRq/QoDACEbIB4gGSAb/fIB/fABIR4gIiAaIBv98gH98AEhIiARIA1BA2xq/QoDACEbIB8gGSAb/fIB/fABIR8gIyAaIBv98gH98AEhIyAVQSBqIRUgEUEIaiERIBEgEkkNAAsgFiAYIBwgHSAeIB8QASAWIBdqIRYgFiAYIBwgHSAeIB8QAiAWIBdqIRYgFiAYICAgISAiICMQASAWIBdqIRYgFiAYICAgISAiICMQAiAWIBdqIRYgFSETDAALCyAOQQRqIQ4MAAsLC0IAIAAgAv0hACABKwMAoDkDACAAIAP9IQAgASsDCKA5AwggACAE/SEAIAErAxCgOQMQIAAgBf0hACABKwMYoDkDGAtCACAAIAL9IQEgASsDAKA5AwAgACAD/SEBIAErAwigOQMIIAAgBP0hASABKwMQoDkDECAAIAX9IQEgASsDGKA5AxgL';

interface Kernel {
  linear(x: number, w: number, bias: number, y: number, tile: number, rows: number, n: number, m: number): void;
}

/** Rows go through the kernel four at a time; a batch's last few are padded with zeros. */
const ROW_BLOCK = 4;

/**
 * Applies Linear layers in memory it keeps between calls (the largest layer's weight and activations),
 * one layer at a time: a weight read into `weightSpace` is used where it lies.
 */
export class LinearKernel {
  private readonly memory = new KernelMemory<Kernel>(LINEAR_WASM);
  /** The memory `weightSpace` last lent (a weight in it at offset 0 needs no copy). */
  private lent: ArrayBuffer | undefined;

  /** Whether the WebAssembly kernel runs here (else the plain loop does everything). */
  get simd(): boolean {
    return this.memory.reserve(0).kernel !== undefined;
  }

  /** `byteLength` bytes to read a tensor into; valid until the next call of either method. */
  weightSpace(byteLength: number): Uint8Array {
    const { buffer } = this.memory.reserve(byteLength);
    this.lent = buffer;
    return new Uint8Array(buffer, 0, byteLength);
  }

  /** `y = x W^T + b` for `rows` rows of `x` (`[rows, in]`), giving `[rows, out]`. */
  apply(x: Float64Array, rows: number, layer: Linear): Float64Array {
    const { inFeatures: n, outFeatures: m, bias } = layer;
    if (x.length !== rows * n) throw new RangeError(`linear: input has ${x.length} values, expected ${rows} x ${n}`);
    // Checked before the memory grows: growing detaches the buffer the weight may be a view of.
    const inPlace = layer.weight.buffer === this.lent && layer.weight.byteOffset === 0;
    if (!this.memory.reserve(0).kernel) return linearInJs(x, rows, layer);
    const padded = Math.ceil(rows / ROW_BLOCK) * ROW_BLOCK;
    const biasAt = align(m * n * 4);
    const xAt = align(biasAt + m * 8);
    const yAt = align(xAt + padded * n * 8);
    const tileAt = align(yAt + padded * m * 8);
    const { buffer, kernel } = this.memory.reserve(tileAt + 4 * n * 8);
    this.lent = undefined;
    // The memory could not grow (JS from here on); a failed grow leaves the lent weight's buffer as it was.
    if (!kernel) return linearInJs(x, rows, layer);
    const weight = new Float32Array(buffer, 0, m * n);
    if (!inPlace) weight.set(layer.weight);
    new Float64Array(buffer, biasAt, m).set(bias);
    packRows(x, rows, padded, n, new Float64Array(buffer, xAt, padded * n));
    kernel.linear(xAt, 0, biasAt, yAt, tileAt, padded, n, m);
    const y = new Float64Array(buffer, yAt, rows * m).slice();
    for (let o = m - (m % 4); o < m; o++) for (let r = 0; r < rows; r++) y[r * m + o] = dot(x, r * n, weight, o * n, n) + bias[o]!;
    return y;
  }
}

/** `[rows, n]` into blocks of four rows interleaved value by value (`packed[((r >> 2) * n + k) * 4 + (r & 3)]`), zeros past `rows`. */
function packRows(x: Float64Array, rows: number, padded: number, n: number, packed: Float64Array): void {
  for (let r = 0; r < padded; r++) {
    const to = (r >> 2) * n * ROW_BLOCK + (r & 3);
    if (r >= rows) {
      for (let k = 0; k < n; k++) packed[to + k * ROW_BLOCK] = 0;
      continue;
    }
    const from = r * n;
    for (let k = 0; k < n; k++) packed[to + k * ROW_BLOCK] = x[from + k]!;
  }
}

/**
 * The plain loop: `y = x W^T + b` as `LinearKernel.apply` gives it, in JS. Each output is a dot
 * product of two contiguous runs (an activation row, a weight row), summed from the first term to
 * the last. Four outputs by four rows are done together, so every value loaded serves four products
 * and sixteen sums run side by side. The four weight rows are widened to float64 once, into a small
 * tile that stays in cache while every row of the batch goes past it (V8 runs a loop over two float64
 * arrays more than twice as fast as one with a float32 operand, and the weights stream from memory
 * once per layer). Leftover rows and outputs take the plain loop, which adds the same terms in the
 * same order (a float32 value reads as the same double either way): the same bits whatever the batch.
 */
export function linearInJs(x: Float64Array, rows: number, layer: Linear): Float64Array {
  const { inFeatures: n, outFeatures: m, weight, bias } = layer;
  const y = new Float64Array(rows * m);
  const fullRows = rows - (rows % 4);
  const w = new Float64Array(4 * n);
  const w1 = n;
  const w2 = 2 * n;
  const w3 = 3 * n;
  let o = 0;
  for (; o + 4 <= m; o += 4) {
    w.set(weight.subarray(o * n, (o + 4) * n));
    const b0 = bias[o]!;
    const b1 = bias[o + 1]!;
    const b2 = bias[o + 2]!;
    const b3 = bias[o + 3]!;
    for (let r = 0; r < fullRows; r += 4) {
      const x0 = r * n;
      const x1 = x0 + n;
      const x2 = x1 + n;
      const x3 = x2 + n;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let k = 0; k < n; k++) {
        const p = x[x0 + k]!;
        const q = x[x1 + k]!;
        const s = x[x2 + k]!;
        const t = x[x3 + k]!;
        const u0 = w[k]!;
        s00 += p * u0;
        s10 += q * u0;
        s20 += s * u0;
        s30 += t * u0;
        const u1 = w[w1 + k]!;
        s01 += p * u1;
        s11 += q * u1;
        s21 += s * u1;
        s31 += t * u1;
        const u2 = w[w2 + k]!;
        s02 += p * u2;
        s12 += q * u2;
        s22 += s * u2;
        s32 += t * u2;
        const u3 = w[w3 + k]!;
        s03 += p * u3;
        s13 += q * u3;
        s23 += s * u3;
        s33 += t * u3;
      }
      const y0 = r * m + o;
      const y1 = y0 + m;
      const y2 = y1 + m;
      const y3 = y2 + m;
      y[y0] = s00 + b0;
      y[y0 + 1] = s01 + b1;
      y[y0 + 2] = s02 + b2;
      y[y0 + 3] = s03 + b3;
      y[y1] = s10 + b0;
      y[y1 + 1] = s11 + b1;
      y[y1 + 2] = s12 + b2;
      y[y1 + 3] = s13 + b3;
      y[y2] = s20 + b0;
      y[y2 + 1] = s21 + b1;
      y[y2 + 2] = s22 + b2;
      y[y2 + 3] = s23 + b3;
      y[y3] = s30 + b0;
      y[y3 + 1] = s31 + b1;
      y[y3 + 2] = s32 + b2;
      y[y3 + 3] = s33 + b3;
    }
    for (let r = fullRows; r < rows; r++) for (let j = 0; j < 4; j++) y[r * m + o + j] = dot(x, r * n, w, j * n, n) + bias[o + j]!;
  }
  for (; o < m; o++) for (let r = 0; r < rows; r++) y[r * m + o] = dot(x, r * n, weight, o * n, n) + bias[o]!;
  return y;
}

function dot(a: Float64Array, aStart: number, b: Float64Array | Float32Array, bStart: number, length: number): number {
  let sum = 0;
  for (let k = 0; k < length; k++) sum += a[aStart + k]! * b[bStart + k]!;
  return sum;
}
