/**
 * Buffers that weights are read into, and the NaN/Inf count over them.
 *
 * `new Uint8Array` of a few MB starts 16 bytes into a page (glibc's chunk header), and the kernel
 * copies file data into a destination that is not 64-byte aligned about 4x slower (0.4 s instead of
 * 0.1 s per 788 MB on the development machine). WebAssembly memory is page-aligned, and a SIMD kernel
 * can then count NaN/Inf in it at memory speed (8.6 GB/s against the JS loop's 2.5 here).
 */

/** Node has WebAssembly; the TypeScript libs this project uses (no DOM) do not declare it. */
interface Wasm {
  Memory: new (descriptor: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: { countNonFinite(at: number, end: number): number } };
}
interface WasmMemory {
  readonly buffer: ArrayBuffer;
}
const wasm = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;

const WASM_PAGE = 64 * 1024;

/**
 * Compiled from this WebAssembly text (wabt's wat2wasm, SIMD enabled):
 *
 * (module
 *   (import "js" "memory" (memory 0))
 *   ;; How many float32 values in bytes [at, end) have all exponent bits set (NaN, +-Infinity).
 *   (func (export "countNonFinite") (param $at i32) (param $end i32) (result i32)
 *     (local $counts v128) (local $exponent v128) (local $vectorEnd i32) (local $count i32)
 *     (local.set $exponent (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
 *     (local.set $vectorEnd (i32.sub (local.get $end) (i32.and (i32.sub (local.get $end) (local.get $at)) (i32.const 15))))
 *     ;; Four values at a time; a lane compares equal as -1, so subtracting counts it.
 *     (block $done
 *       (loop $vector
 *         (br_if $done (i32.ge_u (local.get $at) (local.get $vectorEnd)))
 *         (local.set $counts (i32x4.sub (local.get $counts)
 *           (i32x4.eq (v128.and (v128.load align=4 (local.get $at)) (local.get $exponent)) (local.get $exponent))))
 *         (local.set $at (i32.add (local.get $at) (i32.const 16)))
 *         (br $vector)))
 *     (local.set $count (i32.add
 *       (i32.add (i32x4.extract_lane 0 (local.get $counts)) (i32x4.extract_lane 1 (local.get $counts)))
 *       (i32.add (i32x4.extract_lane 2 (local.get $counts)) (i32x4.extract_lane 3 (local.get $counts)))))
 *     ;; The last 0-3 values.
 *     (block $tailDone
 *       (loop $tail
 *         (br_if $tailDone (i32.ge_u (local.get $at) (local.get $end)))
 *         (local.set $count (i32.add (local.get $count)
 *           (i32.eq (i32.and (i32.load (local.get $at)) (i32.const 0x7f800000)) (i32.const 0x7f800000))))
 *         (local.set $at (i32.add (local.get $at) (i32.const 4)))
 *         (br $tail)))
 *     (local.get $count)))
 */
const COUNT_NON_FINITE_WASM =
  'AGFzbQEAAAABBwFgAn9/AX8CDgECanMGbWVtb3J5AgAAAwIBAAcSAQ5jb3VudE5vbkZpbml0ZQAACp4BAZsBAgJ7An/9DAAAgH8AAIB/AACAfwAAgH8hAyABIAEgAGtBD3FrIQQCQANAIAAgBE8NASACIAD9AAIAIAP9TiAD/Tf9sQEhAiAAQRBqIQAMAAsLIAL9GwAgAv0bAWogAv0bAiAC/RsDamohBQJAA0AgACABTw0BIAUgACgCAEGAgID8B3FBgICA/AdGaiEFIABBBGohAAwACwsgBQs=';

let countModule: object | undefined;
/** The SIMD counter over each aligned buffer's memory, by the memory's ArrayBuffer. */
const counters = new WeakMap<ArrayBuffer, (at: number, end: number) => number>();

/**
 * A page-aligned buffer to read into, for the few long-lived buffers a reader reuses (each one
 * reserves gigabytes of address space, hence not for every read).
 */
export function alignedBuffer(length: number): Uint8Array {
  let memory: WasmMemory;
  try {
    memory = new wasm.Memory({ initial: Math.ceil(length / WASM_PAGE) });
  } catch {
    // Over WebAssembly's 4 GiB, or address space capped (ulimit -v): unaligned, but works.
    return new Uint8Array(length);
  }
  const counter = simdCounter(memory);
  if (counter) counters.set(memory.buffer, counter);
  return new Uint8Array(memory.buffer, 0, length);
}

/** The SIMD kernel on `memory`; none on a CPU without what V8's WebAssembly SIMD needs (SSE4.1). */
function simdCounter(memory: WasmMemory): ((at: number, end: number) => number) | undefined {
  try {
    countModule ??= new wasm.Module(Buffer.from(COUNT_NON_FINITE_WASM, 'base64'));
    return new wasm.Instance(countModule, { js: { memory } }).exports.countNonFinite;
  } catch {
    return undefined;
  }
}

/** How many of `values` are NaN or infinite. */
export function countNonFinite(values: Float32Array): number {
  const simd = counters.get(values.buffer as ArrayBuffer);
  if (simd) return simd(values.byteOffset, values.byteOffset + values.byteLength);
  // Fast path: x * 0 is NaN exactly when x is NaN or infinite, so one sum tells whether to count.
  let probe = 0;
  for (let i = 0; i < values.length; i++) probe += values[i]! * 0;
  if (probe === 0) return 0;
  let count = 0;
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) count++;
  return count;
}
