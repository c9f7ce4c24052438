/**
 * Transposes float32 matrices on their way into the model file: weights are stored in the layout
 * their consumer reads (DESIGN §4, canonical graph), so a torch Linear weight [out, in] becomes the
 * [in, out] a MatMul reads while the writer streams it.
 *
 * ConvNeXt-large has 754 MB of such weights; a plain JS loop transposes them at 5-25 ns a value
 * (cache-hostile strides, power-of-two rows), 1-5 s of the export's 3 s budget. A WebAssembly SIMD
 * kernel does it in under 1 ns a value, about 0.15 s of CPU for all of them on the development
 * machine. It works inside one WebAssembly memory (the source matrix and its transpose side by
 * side), which the transposer owns and reuses: the matrix is read into it, transposed there, and the
 * result copied out (0.06 s for all of them) into the buffer the writer lent.
 */
import { align, KernelMemory } from './kernel-memory.ts';

/**
 * Compiled from this WebAssembly text (wabt's wat2wasm, SIMD enabled):
 *
 * (module
 *   (import "js" "memory" (memory 0))
 *   ;; Transposes the row-major float32 matrix [rows, cols] at byte $src into [cols, rows] at byte $dst,
 *   ;; all but the last rows % 4 rows and cols % 4 columns: 4x4 tiles (four loads, eight shuffles, four
 *   ;; stores), walking down a column of tiles so the stores are sequential, in 32x32 blocks so the
 *   ;; source lines of a block stay in cache.
 *   (func (export "transpose") (param $src i32) (param $dst i32) (param $rows i32) (param $cols i32)
 *     (local $rowBytes i32) (local $colBytes i32) (local $rows4 i32) (local $cols4 i32)
 *     (local $rb i32) (local $cb i32) (local $rEnd i32) (local $cEnd i32) (local $r i32) (local $c i32)
 *     (local $in i32) (local $out i32) (local $a v128) (local $b v128) (local $x v128) (local $y v128)
 *     (local $ab01 v128) (local $ab23 v128) (local $xy01 v128) (local $xy23 v128)
 *     (local.set $rowBytes (i32.shl (local.get $cols) (i32.const 2)))
 *     (local.set $colBytes (i32.shl (local.get $rows) (i32.const 2)))
 *     (local.set $rows4 (i32.and (local.get $rows) (i32.const -4)))
 *     (local.set $cols4 (i32.and (local.get $cols) (i32.const -4)))
 *     (block $rowBlocksDone
 *       (loop $rowBlocks
 *         (br_if $rowBlocksDone (i32.ge_u (local.get $rb) (local.get $rows4)))
 *         (local.set $rEnd (select (i32.add (local.get $rb) (i32.const 32)) (local.get $rows4)
 *           (i32.lt_u (i32.add (local.get $rb) (i32.const 32)) (local.get $rows4))))
 *         (local.set $cb (i32.const 0))
 *         (block $colBlocksDone
 *           (loop $colBlocks
 *             (br_if $colBlocksDone (i32.ge_u (local.get $cb) (local.get $cols4)))
 *             (local.set $cEnd (select (i32.add (local.get $cb) (i32.const 32)) (local.get $cols4)
 *               (i32.lt_u (i32.add (local.get $cb) (i32.const 32)) (local.get $cols4))))
 *             (local.set $c (local.get $cb))
 *             (block $columnsDone
 *               (loop $columns
 *                 (br_if $columnsDone (i32.ge_u (local.get $c) (local.get $cEnd)))
 *                 (local.set $r (local.get $rb))
 *                 (block $tilesDone
 *                   (loop $tiles
 *                     (br_if $tilesDone (i32.ge_u (local.get $r) (local.get $rEnd)))
 *                     ;; in = src + (r * cols + c) * 4, out = dst + (c * rows + r) * 4
 *                     (local.set $in (i32.add (local.get $src)
 *                       (i32.shl (i32.add (i32.mul (local.get $r) (local.get $cols)) (local.get $c)) (i32.const 2))))
 *                     (local.set $out (i32.add (local.get $dst)
 *                       (i32.shl (i32.add (i32.mul (local.get $c) (local.get $rows)) (local.get $r)) (i32.const 2))))
 *                     (local.set $a (v128.load align=4 (local.get $in)))
 *                     (local.set $b (v128.load align=4 (i32.add (local.get $in) (local.get $rowBytes))))
 *                     (local.set $x (v128.load align=4 (i32.add (local.get $in) (i32.shl (local.get $rowBytes) (i32.const 1)))))
 *                     (local.set $y (v128.load align=4 (i32.add (local.get $in) (i32.mul (local.get $rowBytes) (i32.const 3)))))
 *                     ;; a0 b0 a1 b1, a2 b2 a3 b3, x0 y0 x1 y1, x2 y2 x3 y3
 *                     (local.set $ab01 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a) (local.get $b)))
 *                     (local.set $ab23 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a) (local.get $b)))
 *                     (local.set $xy01 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $x) (local.get $y)))
 *                     (local.set $xy23 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $x) (local.get $y)))
 *                     ;; column j of the tile: aj bj xj yj
 *                     (v128.store align=4 (local.get $out)
 *                       (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $ab01) (local.get $xy01)))
 *                     (v128.store align=4 (i32.add (local.get $out) (local.get $colBytes))
 *                       (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $ab01) (local.get $xy01)))
 *                     (v128.store align=4 (i32.add (local.get $out) (i32.shl (local.get $colBytes) (i32.const 1)))
 *                       (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $ab23) (local.get $xy23)))
 *                     (v128.store align=4 (i32.add (local.get $out) (i32.mul (local.get $colBytes) (i32.const 3)))
 *                       (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $ab23) (local.get $xy23)))
 *                     (local.set $r (i32.add (local.get $r) (i32.const 4)))
 *                     (br $tiles)))
 *                 (local.set $c (i32.add (local.get $c) (i32.const 4)))
 *                 (br $columns)))
 *             (local.set $cb (i32.add (local.get $cb) (i32.const 32)))
 *             (br $colBlocks)))
 *         (local.set $rb (i32.add (local.get $rb) (i32.const 32)))
 *         (br $rowBlocks)))))
 */
const TRANSPOSE_WASM =
  'AGFzbQEAAAABCAFgBH9/f38AAg4BAmpzBm1lbW9yeQIAAAMCAQAHDQEJdHJhbnNwb3NlAAAK2wMB2AMCDH8IeyADQQJ0IQQgAkECdCEFIAJBfHEhBiADQXxxIQcCQANAIAggBk8NASAIQSBqIAYgCEEgaiAGSRshCkEAIQkCQANAIAkgB08NASAJQSBqIAcgCUEgaiAHSRshCyAJIQ0CQANAIA0gC08NASAIIQwCQANAIAwgCk8NASAAIAwgA2wgDWpBAnRqIQ4gASANIAJsIAxqQQJ0aiEPIA79AAIAIRAgDiAEav0AAgAhESAOIARBAXRq/QACACESIA4gBEEDbGr9AAIAIRMgECAR/Q0AAQIDEBESEwQFBgcUFRYXIRQgECAR/Q0ICQoLGBkaGwwNDg8cHR4fIRUgEiAT/Q0AAQIDEBESEwQFBgcUFRYXIRYgEiAT/Q0ICQoLGBkaGwwNDg8cHR4fIRcgDyAUIBb9DQABAgMEBQYHEBESExQVFhf9CwIAIA8gBWogFCAW/Q0ICQoLDA0ODxgZGhscHR4f/QsCACAPIAVBAXRqIBUgF/0NAAECAwQFBgcQERITFBUWF/0LAgAgDyAFQQNsaiAVIBf9DQgJCgsMDQ4PGBkaGxwdHh/9CwIAIAxBBGohDAwACwsgDUEEaiENDAALCyAJQSBqIQkMAAsLIAhBIGohCAwACwsL';

/** Reads the values of a matrix into `buffer` (or elsewhere: the result need not alias it). */
export type MatrixSource = (buffer: Uint8Array) => Promise<Float32Array>;

/**
 * Transposes one matrix at a time in memory it keeps between calls (twice the largest matrix
 * seen), so a model's worth of weights costs no fresh pages after the first. Calls are served in
 * order, one at a time: the memory holds one matrix and its transpose.
 */
export class Transposer {
  private readonly memory = new KernelMemory<{ transpose(src: number, dst: number, rows: number, cols: number): void }>(TRANSPOSE_WASM);
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * The transpose ([cols, rows]) of the row-major [rows, cols] matrix that `source` reads, written
   * into `target` (a buffer of at least rows * cols * 4 bytes; a new one when absent). Returns the
   * bytes written, a view of `target`.
   */
  transpose(source: MatrixSource, rows: number, cols: number, target?: Uint8Array): Promise<Uint8Array> {
    const done = this.queue.then(() => this.run(source, rows, cols, target));
    this.queue = done.catch(() => undefined);
    return done;
  }

  private async run(source: MatrixSource, rows: number, cols: number, target: Uint8Array | undefined): Promise<Uint8Array> {
    const bytes = rows * cols * 4;
    if (target && target.byteLength < bytes) throw new Error(`a ${rows}x${cols} transpose needs ${bytes} bytes, the target has ${target.byteLength}`);
    const out = target ? target.subarray(0, bytes) : new Uint8Array(bytes);
    const at = align(bytes);
    const { buffer: space, kernel } = this.memory.reserve(at + bytes);
    const values = await source(new Uint8Array(space, 0, bytes));
    if (values.length !== rows * cols) throw new Error(`a ${rows}x${cols} matrix has ${rows * cols} values, read ${values.length}`);
    // The source may have produced its values elsewhere (a dtype it converted): bring them in.
    if (values.buffer !== space || values.byteOffset !== 0) new Float32Array(space, 0, values.length).set(values);
    const from = new Float32Array(space, 0, rows * cols);
    const to = new Float32Array(space, at, rows * cols);
    if (kernel) {
      kernel.transpose(0, at, rows, cols);
      // The kernel leaves the last rows % 4 rows and cols % 4 columns.
      const [rows4, cols4] = [rows & ~3, cols & ~3];
      transposeRange(from, to, rows, cols, rows4, rows, 0, cols);
      transposeRange(from, to, rows, cols, 0, rows4, cols4, cols);
    } else {
      transposeRange(from, to, rows, cols, 0, rows, 0, cols);
    }
    out.set(new Uint8Array(space, at, bytes));
    return out;
  }
}

/** The plain loop, for what the kernel does not cover: rows [r0, r1) and columns [c0, c1) of `from` ([rows, cols]) into `to`. */
function transposeRange(from: Float32Array, to: Float32Array, rows: number, cols: number, r0: number, r1: number, c0: number, c1: number): void {
  for (let r = r0; r < r1; r++) {
    for (let c = c0; c < c1; c++) to[c * rows + r] = from[r * cols + c]!;
  }
}
