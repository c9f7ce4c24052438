import { ErrorCodes, HeimdallError } from '../errors/index.ts';

/**
 * A restricted pickle reader. No pickle library fits: Python's own executes arbitrary globals, and
 * we need torch's `weights_only` policy (torch/_weights_only_unpickler.py) in TypeScript. Globals
 * resolve only through `resolveGlobal`, which returns inert values; only a `Callable` it returned
 * may be called (REDUCE, NEWOBJ, NEWOBJ_EX) and BUILD applies only to dicts and to the
 * `OpaqueObject`s such callables build; nothing from the pickle is ever executed. Opcodes follow
 * Lib/pickletools.py (protocols 2–5, the ones torch.save writes).
 *
 * Work and memory are bounded by the pickle's own size (DESIGN §4, Bounds):
 * - steps: every opcode consumes at least one byte, so there are at most as many steps as bytes;
 *   the loops inside an opcode either move items that earlier opcodes pushed (each item once) or
 *   build new data, and building is charged;
 * - memory: every value built (containers, their slots, strings, bytes, call results, and what
 *   callables copy) is charged to a budget of `allocPerPickleByte` bytes per pickle byte plus
 *   `allocSlackBytes`; past it, PICKLE_INVALID. BINGET and DUP push the value itself, never a copy;
 * - no decoding is worse than linear, and integers (LONG1/LONG4) are capped at MAX_LONG_BYTES.
 * Every error escaping `unpickle` is a HeimdallError: ours, the callbacks' own, or PICKLE_INVALID
 * wrapping anything else JavaScript threw.
 */

/** An inert instance an allowlisted callable built (e.g. Lightning's AttributeDict): plain data. */
export class OpaqueObject {
  /** Dict items (SETITEMS on a dict subclass). */
  readonly items = new Map<PickleValue, PickleValue>();
  /** What BUILD set (the instance's `__dict__` or `__setstate__` argument), kept as data. */
  state: PickleValue = null;
  constructor(
    readonly global: string,
    readonly args: readonly PickleValue[],
  ) {}
}

/** The allocation budget of one `unpickle` call. */
export interface Budget {
  /** Charges an estimate of the bytes a new value holds; throws PICKLE_INVALID once the budget is spent. */
  charge(bytes: number): void;
}

/** Rough V8 sizes the budget charges: an object or container, and one slot (array item, map entry). */
export const COST = { object: 64, slot: 16 } as const;

/** A resolved global that REDUCE/NEWOBJ may "call": always one of our own functions. */
export interface Callable {
  readonly global: string;
  /** Builds the result as data; charges `budget` for whatever it copies beyond a fixed-size object. */
  call(args: readonly PickleValue[], budget: Budget): PickleValue;
}

/** Values a pickle can produce here. Tuples (frozen) and lists are arrays; dicts are Maps (keys may be ints). */
export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PickleValue[]
  | Map<PickleValue, PickleValue>
  | Set<PickleValue>
  | OpaqueObject
  | Callable
  | PickleObject;

/** Values our resolvers construct (tensors, storages, dtypes): tagged by `kind`. */
export interface PickleObject {
  readonly kind: string;
}

export interface UnpicklerOptions {
  /** Maps `module.name` to a value, or throws UNSAFE_PICKLE. */
  resolveGlobal(module: string, name: string): PickleValue;
  /** Handles BINPERSID (torch uses it for tensor storages). */
  persistentLoad(pid: PickleValue): PickleValue;
  limits?: Partial<UnpicklerLimits>;
}

export interface UnpicklerLimits {
  maxMemo: number;
  maxStack: number;
  maxNesting: number;
  maxStringBytes: number;
  /**
   * Allocation budget: bytes per byte of pickle... Real checkpoints (torch 1.13 and 2.13: bare,
   * with optimizer state, Lightning) are charged 7–10; a list of bools, the densest data, 16.
   */
  allocPerPickleByte: number;
  /** ...plus this much, so that tiny pickles have room for their few objects. */
  allocSlackBytes: number;
}

export const DEFAULT_LIMITS: UnpicklerLimits = {
  maxMemo: 1_000_000,
  maxStack: 1_000_000,
  maxNesting: 1_000,
  maxStringBytes: 64 * 1024 * 1024,
  allocPerPickleByte: 32,
  allocSlackBytes: 1024 * 1024,
};

/**
 * Checkpoints hold small integers (numel, steps, seeds: 9 bytes at most); 64 bytes is far beyond.
 * A 256 KB LONG4 took 92 s to decode before this cap.
 */
export const MAX_LONG_BYTES = 64;

/** Module and global names: Python's are short; the cap keeps lookups and error messages small. */
const MAX_NAME_CHARS = 4096;

const invalid = (message: string) => new HeimdallError(ErrorCodes.PICKLE_INVALID, message);
const unsafe = (message: string) => new HeimdallError(ErrorCodes.UNSAFE_PICKLE, message);

export function isCallable(value: unknown): value is Callable {
  return typeof value === 'object' && value !== null && typeof (value as Callable).call === 'function' && 'global' in value;
}

export function unpickle(data: Uint8Array, options: UnpicklerOptions): PickleValue {
  try {
    return new Machine(data, options).run();
  } catch (error) {
    if (error instanceof HeimdallError) throw error;
    // Anything else (a RangeError, a TypeError in a callback) is still the pickle's fault, never a crash.
    const message = error instanceof Error ? error.message : String(error);
    throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `malformed pickle: ${message}`, { cause: error });
  }
}

const latin1 = new TextDecoder('latin1');
const utf8 = new TextDecoder('utf-8', { fatal: true });

class Machine implements Budget {
  private readonly view: DataView;
  private readonly limits: UnpicklerLimits;
  private readonly allocLimit: number;
  private allocated = 0;
  private pos = 0;
  private readonly stack: PickleValue[] = [];
  /** Stack lengths at each open MARK; nothing below the last one may be popped until it closes. */
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, PickleValue>();

  constructor(
    private readonly data: Uint8Array,
    private readonly options: UnpicklerOptions,
  ) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.allocLimit = this.limits.allocPerPickleByte * data.byteLength + this.limits.allocSlackBytes;
  }

  charge(bytes: number): void {
    this.allocated += bytes;
    if (this.allocated > this.allocLimit) {
      throw invalid(
        `pickle of ${this.data.byteLength} bytes builds more than ${this.allocLimit} bytes of objects (byte ${this.pos}): ` +
          `over the budget of ${this.limits.allocPerPickleByte} per pickle byte + ${this.limits.allocSlackBytes}`,
      );
    }
  }

  run(): PickleValue {
    for (;;) {
      const opcode = this.u8();
      if (opcode === 0x2e /* STOP */) return this.stop();
      this.step(opcode);
    }
  }

  private stop(): PickleValue {
    if (this.stack.length !== 1 || this.marks.length > 0) throw invalid(`STOP with ${this.stack.length} items and ${this.marks.length} open MARKs`);
    return this.stack[0]!;
  }

  private step(opcode: number): void {
    switch (opcode) {
      case 0x80: // PROTO
        if (this.u8() > 5) throw invalid('pickle protocol above 5');
        return;
      case 0x95: // FRAME: framing is only a hint for readers of streams; we hold the whole pickle.
        this.u64();
        return;
      case 0x28: // MARK
        if (this.marks.length >= this.limits.maxNesting) throw invalid(`nesting exceeds ${this.limits.maxNesting} levels`);
        this.marks.push(this.stack.length);
        return;
      case 0x30: // POP: pops the top item, or the MARK right above it (CPython load_pop)
        if (this.marks.at(-1) === this.stack.length) this.marks.pop();
        else this.pop();
        return;
      case 0x31: // POP_MARK
        this.popMark();
        return;
      case 0x32: // DUP
        return this.push(this.top());
      case 0x4e: // NONE
        return this.push(null);
      case 0x88: // NEWTRUE
        return this.push(true);
      case 0x89: // NEWFALSE
        return this.push(false);
      case 0x4a: // BININT
        return this.push(this.i32());
      case 0x4b: // BININT1
        return this.push(this.u8());
      case 0x4d: // BININT2
        return this.push(this.u16());
      case 0x8a: // LONG1
        return this.push(decodeLong(this.longBytes(this.u8())));
      case 0x8b: // LONG4
        return this.push(decodeLong(this.longBytes(this.i32())));
      case 0x47: // BINFLOAT (big-endian double)
        this.need(8);
        this.pos += 8;
        return this.push(this.view.getFloat64(this.pos - 8, false));
      case 0x58: // BINUNICODE
        return this.push(this.text(this.u32()));
      case 0x8c: // SHORT_BINUNICODE
        return this.push(this.text(this.u8()));
      case 0x8d: // BINUNICODE8
        return this.push(this.text(this.u64()));
      case 0x55: // SHORT_BINSTRING (Python 2 str): latin-1, as Python 3 reads it with encoding='latin1'
        return this.push(this.latin1(this.u8()));
      case 0x54: // BINSTRING
        return this.push(this.latin1(this.u32()));
      case 0x43: // SHORT_BINBYTES
        return this.push(this.copyBytes(this.u8()));
      case 0x42: // BINBYTES
        return this.push(this.copyBytes(this.u32()));
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        return this.push(this.copyBytes(this.u64()));
      case 0x5d: // EMPTY_LIST
        return this.push(this.container([]));
      case 0x61: // APPEND
        return this.append([this.pop()]);
      case 0x65: // APPENDS
        return this.append(this.popMark());
      case 0x6c: // LIST
        return this.push(this.container(this.popMark()));
      case 0x29: // EMPTY_TUPLE
        return this.push(this.tuple([]));
      case 0x74: // TUPLE
        return this.push(this.tuple(this.popMark()));
      case 0x85: // TUPLE1
        return this.push(this.tuple([this.pop()]));
      case 0x86: // TUPLE2
        return this.push(this.tuple(this.popN(2)));
      case 0x87: // TUPLE3
        return this.push(this.tuple(this.popN(3)));
      case 0x7d: // EMPTY_DICT
        return this.push(this.container(new Map()));
      case 0x64: {
        // DICT
        const items = this.popMark();
        this.push(this.container(new Map()));
        return this.setItems(items);
      }
      case 0x73: // SETITEM
        return this.setItems(this.popN(2));
      case 0x75: // SETITEMS
        return this.setItems(this.popMark());
      case 0x8f: // EMPTY_SET
        return this.push(this.container(new Set()));
      case 0x90: // ADDITEMS
        return this.addItems(this.popMark());
      case 0x91: {
        // FROZENSET
        const items = this.popMark();
        this.charge(items.length * COST.slot);
        return this.push(this.container(new Set(items)));
      }
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = this.line();
        return this.push(this.options.resolveGlobal(module, this.line()));
      }
      case 0x93: {
        // STACK_GLOBAL
        const [module, name] = this.popN(2);
        const isName = (v: PickleValue | undefined): v is string => typeof v === 'string' && v.length <= MAX_NAME_CHARS;
        if (!isName(module) || !isName(name)) throw invalid(`STACK_GLOBAL needs two strings of at most ${MAX_NAME_CHARS} characters`);
        return this.push(this.options.resolveGlobal(module, name));
      }
      case 0x52: // REDUCE: fn(*args)
      case 0x81: // NEWOBJ: cls.__new__(cls, *args); same policy as REDUCE.
        return this.call(this.pop());
      case 0x92: {
        // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs); none of our callables takes keywords.
        const kwargs = this.pop();
        if (!(kwargs instanceof Map) || kwargs.size > 0) throw invalid(`NEWOBJ_EX with keyword arguments (${describe(kwargs)})`);
        return this.call(this.pop());
      }
      case 0x62: // BUILD
        return this.build(this.pop(), this.top());
      case 0x51: // BINPERSID
        return this.push(this.options.persistentLoad(this.pop()));
      case 0x68: // BINGET
        return this.memoGet(this.u8());
      case 0x6a: // LONG_BINGET
        return this.memoGet(this.u32());
      case 0x71: // BINPUT
        return this.memoPut(this.u8());
      case 0x72: // LONG_BINPUT
        return this.memoPut(this.u32());
      case 0x94: // MEMOIZE
        return this.memoPut(this.memo.size);
      case 0x69: // INST
      case 0x6f: // OBJ
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
      case 0x50: // PERSID (text)
        throw unsafe(`opcode ${JSON.stringify(String.fromCharCode(opcode))} (0x${opcode.toString(16)}) at byte ${this.pos - 1} is not allowed`);
      default:
        throw invalid(`unsupported opcode 0x${opcode.toString(16)} at byte ${this.pos - 1}`);
    }
  }

  // Reading the input.

  private need(n: number): void {
    if (this.pos + n > this.data.byteLength) throw invalid(`pickle ends inside an opcode at byte ${this.pos}`);
  }
  private u8(): number {
    this.need(1);
    return this.data[this.pos++]!;
  }
  private u16(): number {
    this.need(2);
    this.pos += 2;
    return this.view.getUint16(this.pos - 2, true);
  }
  private u32(): number {
    this.need(4);
    this.pos += 4;
    return this.view.getUint32(this.pos - 4, true);
  }
  private i32(): number {
    this.need(4);
    this.pos += 4;
    return this.view.getInt32(this.pos - 4, true);
  }
  private u64(): number {
    this.need(8);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`length ${v} is too large`);
    return Number(v);
  }
  /** `n` bytes of the input, not copied. */
  private bytes(n: number): Uint8Array {
    if (n > this.limits.maxStringBytes) throw invalid(`string of ${n} bytes exceeds the ${this.limits.maxStringBytes}-byte cap`);
    this.need(n);
    this.pos += n;
    return this.data.subarray(this.pos - n, this.pos);
  }
  private copyBytes(n: number): Uint8Array {
    const view = this.bytes(n);
    this.charge(COST.object + n);
    return view.slice();
  }
  private longBytes(n: number): Uint8Array {
    if (n < 0 || n > MAX_LONG_BYTES) throw invalid(`integer of ${n} bytes at byte ${this.pos} exceeds the ${MAX_LONG_BYTES}-byte cap`);
    return this.bytes(n);
  }
  private text(n: number): string {
    const raw = this.bytes(n);
    this.charge(COST.slot + 2 * n); // at most one UTF-16 unit per byte
    try {
      return utf8.decode(raw);
    } catch {
      throw invalid(`invalid UTF-8 string at byte ${this.pos - n}`);
    }
  }
  private latin1(n: number): string {
    const raw = this.bytes(n);
    this.charge(COST.slot + n);
    return latin1.decode(raw);
  }
  private line(): string {
    const end = this.data.subarray(this.pos, this.pos + MAX_NAME_CHARS + 1).indexOf(0x0a);
    if (end < 0) throw invalid(`unterminated GLOBAL line (or a name over ${MAX_NAME_CHARS} characters) at byte ${this.pos}`);
    const s = latin1.decode(this.data.subarray(this.pos, this.pos + end));
    this.pos += end + 1;
    return s;
  }

  // The stack and the memo.

  private push(v: PickleValue): void {
    if (this.stack.length >= this.limits.maxStack) throw invalid(`stack exceeds ${this.limits.maxStack} items`);
    this.stack.push(v);
  }
  /** The item `depth` below the top, never below the last MARK. */
  private top(depth = 0): PickleValue {
    if (this.stack.length - depth <= (this.marks.at(-1) ?? 0)) throw invalid('stack underflow');
    return this.stack[this.stack.length - 1 - depth]!;
  }
  private pop(): PickleValue {
    const v = this.top();
    this.stack.length--;
    return v;
  }
  private popN(n: number): PickleValue[] {
    this.top(n - 1);
    return this.stack.splice(this.stack.length - n);
  }
  private popMark(): PickleValue[] {
    const m = this.marks.pop();
    if (m === undefined) throw invalid('no MARK to pop to');
    return this.stack.splice(m);
  }
  private memoPut(index: number): void {
    if (!this.memo.has(index)) {
      if (this.memo.size >= this.limits.maxMemo) throw invalid(`memo exceeds ${this.limits.maxMemo} entries`);
      this.charge(COST.slot);
    }
    this.memo.set(index, this.top());
  }
  private memoGet(index: number): void {
    if (!this.memo.has(index)) throw invalid(`memo has no entry ${index}`);
    this.push(this.memo.get(index)!);
  }

  // Building values.

  /** A new list, dict or set holding `items` (their slots are charged when added). */
  private container<T extends PickleValue>(value: T): T {
    this.charge(COST.object + (Array.isArray(value) ? value.length * COST.slot : 0));
    return value;
  }
  /** Tuples are immutable, as in Python: nothing can change a tensor's size tuple after it was checked. */
  private tuple(items: PickleValue[]): PickleValue {
    this.charge(COST.object + items.length * COST.slot);
    return Object.freeze(items) as PickleValue[];
  }
  /** APPEND/APPENDS extend lists only (torch: "Can only append to lists"). */
  private append(items: PickleValue[]): void {
    const list = this.top();
    if (!Array.isArray(list) || Object.isFrozen(list)) throw invalid(`APPEND on ${describe(list)}`);
    this.charge(items.length * COST.slot);
    for (const item of items) list.push(item); // a loop: spreading 500k items overflows the call stack
  }
  /** SETITEM/SETITEMS fill dicts, and the items of an OpaqueObject dict subclass. */
  private setItems(items: PickleValue[]): void {
    if (items.length % 2 !== 0) throw invalid('SETITEMS with an odd number of items');
    const target = this.top();
    const map = target instanceof Map ? target : target instanceof OpaqueObject ? target.items : undefined;
    if (!map) throw invalid(`SETITEM on ${describe(target)}`);
    this.charge((items.length / 2) * COST.slot);
    for (let i = 0; i < items.length; i += 2) map.set(items[i]!, items[i + 1]!);
  }
  private addItems(items: PickleValue[]): void {
    const set = this.top();
    if (!(set instanceof Set)) throw invalid(`ADDITEMS on ${describe(set)}`);
    this.charge(items.length * COST.slot);
    for (const item of items) set.add(item);
  }
  /** REDUCE/NEWOBJ: only a Callable the resolver returned runs, and only our code runs then. */
  private call(args: PickleValue): void {
    const fn = this.pop();
    if (!isCallable(fn)) throw unsafe(`refused call of ${describe(fn)} at byte ${this.pos - 1}: not an allowlisted callable`);
    if (!Array.isArray(args)) throw invalid(`call of ${fn.global} with ${describe(args)} arguments`);
    this.charge(COST.object);
    this.push(fn.call(args, this));
  }
  /**
   * BUILD (torch: "Can only build Tensor, Parameter, OrderedDict or types allowlisted"): a dict
   * (OrderedDict's `_metadata`) ignores its state; an OpaqueObject keeps it as data.
   */
  private build(state: PickleValue, target: PickleValue): void {
    if (target instanceof OpaqueObject) target.state = state;
    else if (!(target instanceof Map)) throw unsafe(`refused BUILD on ${describe(target)} at byte ${this.pos - 1}`);
  }
}

/** Little-endian two's-complement integer; a JS number when it fits exactly. Linear: one BigInt parse. */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let hex = '';
  for (let i = b.length - 1; i >= 0; i--) hex += b[i]!.toString(16).padStart(2, '0');
  let value = BigInt(`0x${hex}`);
  if (b[b.length - 1]! & 0x80) value -= 1n << BigInt(8 * b.length);
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

export function describe(value: unknown): string {
  if (value === null) return 'None';
  if (value instanceof OpaqueObject) return `${value.global} object`;
  if (value instanceof Map) return 'dict';
  if (value instanceof Set) return 'set';
  if (Array.isArray(value)) return Object.isFrozen(value) ? 'tuple' : 'list';
  if (value instanceof Uint8Array) return 'bytes';
  if (isCallable(value)) return value.global;
  if (typeof value === 'object' && 'kind' in value) {
    const { kind, global } = value as { kind: string; global?: unknown };
    return typeof global === 'string' ? global : kind;
  }
  return typeof value;
}
