/**
 * The memory a WebAssembly SIMD kernel works in (the weight transposer, the int8 quantizer): one
 * WebAssembly memory per user, grown to the largest matrix and reused, so a model's worth of weights
 * costs no fresh pages after the first. Where the kernel cannot run (no WebAssembly SIMD: V8 needs
 * SSE4.1; past WebAssembly's 4 GiB; address space capped), a plain ArrayBuffer takes its place and
 * the caller's JS loops do the work.
 */

/** Node has WebAssembly; the TypeScript libs this project uses (no DOM) do not declare it. */
interface Wasm {
  Memory: new (descriptor: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
const wasm = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;

const WASM_PAGE = 64 * 1024;
/** Regions start on a cache line of their own. */
export const ALIGNMENT = 64;
export const align = (offset: number) => Math.ceil(offset / ALIGNMENT) * ALIGNMENT;

const modules = new Map<string, object>();

export class KernelMemory<Kernel> {
  private memory: WasmMemory | undefined;
  private kernel: Kernel | undefined;
  private started = false;
  private fallback = new ArrayBuffer(0);

  /** `base64`: the compiled module, importing its memory as `js.memory`. */
  constructor(private readonly base64: string) {}

  /** At least `byteLength` bytes, and the kernel when they are its memory (else the JS loops do it all). */
  reserve(byteLength: number): { buffer: ArrayBuffer; kernel: Kernel | undefined } {
    if (!this.started) {
      this.started = true;
      try {
        const memory = new wasm.Memory({ initial: Math.ceil(byteLength / WASM_PAGE) });
        let module = modules.get(this.base64);
        if (!module) modules.set(this.base64, (module = new wasm.Module(Buffer.from(this.base64, 'base64'))));
        this.kernel = new wasm.Instance(module, { js: { memory } }).exports as Kernel;
        this.memory = memory;
      } catch {
        // No WebAssembly SIMD or no memory for it.
      }
    }
    if (this.memory) {
      const missing = Math.ceil((byteLength - this.memory.buffer.byteLength) / WASM_PAGE);
      try {
        if (missing > 0) this.memory.grow(missing);
        return { buffer: this.memory.buffer, kernel: this.kernel };
      } catch {
        // Past WebAssembly's 4 GiB (or the address space is capped): JS from here on.
        this.memory = undefined;
        this.kernel = undefined;
      }
    }
    if (this.fallback.byteLength < byteLength) this.fallback = new ArrayBuffer(byteLength);
    return { buffer: this.fallback, kernel: undefined };
  }
}
