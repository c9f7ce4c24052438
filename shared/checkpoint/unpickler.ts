import { ErrorCodes, HeimdallError } from '../errors/index.ts';

/**
 * A restricted pickle reader. No pickle library fits: Python's own executes arbitrary globals, and
 * we need torch's `weights_only` policy (torch/_weights_only_unpickler.py) in TypeScript. Globals
 * resolve only through `resolveGlobal`, which returns inert values; nothing from the pickle is ever
 * executed. Opcodes follow Lib/pickletools.py (protocols 2–5, the ones torch.save writes).
 */

/** A Python object we refuse to construct: kept as data (its global, arguments, dict items, state). */
export class OpaqueObject {
  readonly items = new Map<PickleValue, PickleValue>();
  readonly listItems: PickleValue[] = [];
  state: PickleValue = null;
  constructor(
    readonly global: string,
    readonly args: readonly PickleValue[],
  ) {}
}

/** A resolved global: something REDUCE/NEWOBJ may "call" — always one of our own functions. */
export interface Callable {
  readonly global: string;
  call(args: readonly PickleValue[]): PickleValue;
}

/** Values a pickle can produce here. Tuples and lists are arrays; dicts are Maps (keys may be ints). */
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
}

export const DEFAULT_LIMITS: UnpicklerLimits = {
  maxMemo: 1_000_000,
  maxStack: 1_000_000,
  maxNesting: 1_000,
  maxStringBytes: 64 * 1024 * 1024,
};

const MARK = Symbol('mark');
type StackItem = PickleValue | typeof MARK;

const invalid = (message: string) => new HeimdallError(ErrorCodes.PICKLE_INVALID, message);

export function isCallable(value: unknown): value is Callable {
  return typeof value === 'object' && value !== null && typeof (value as Callable).call === 'function' && 'global' in value;
}

export function unpickle(data: Uint8Array, options: UnpicklerOptions): PickleValue {
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const stack: StackItem[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PickleValue>();
  let pos = 0;

  const need = (n: number) => {
    if (pos + n > data.byteLength) throw invalid(`pickle ends inside an opcode at byte ${pos}`);
  };
  const u8 = () => (need(1), data[pos++]!);
  const u16 = () => (need(2), (pos += 2), view.getUint16(pos - 2, true));
  const u32 = () => (need(4), (pos += 4), view.getUint32(pos - 4, true));
  const i32 = () => (need(4), (pos += 4), view.getInt32(pos - 4, true));
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`length ${v} is too large`);
    return Number(v);
  };
  const bytes = (n: number) => {
    if (n > limits.maxStringBytes) throw invalid(`string of ${n} bytes exceeds the ${limits.maxStringBytes}-byte cap`);
    need(n);
    pos += n;
    return data.subarray(pos - n, pos);
  };
  const text = (n: number) => {
    try {
      return decoder.decode(bytes(n));
    } catch (error) {
      if (error instanceof HeimdallError) throw error;
      throw invalid(`invalid UTF-8 string at byte ${pos - n}`);
    }
  };
  const line = () => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 4096) throw invalid('unterminated GLOBAL line');
    const s = new TextDecoder('latin1').decode(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const push = (v: StackItem) => {
    if (stack.length >= limits.maxStack) throw invalid(`stack exceeds ${limits.maxStack} items`);
    stack.push(v);
  };
  const pop = (): PickleValue => {
    if (stack.length === 0) throw invalid('stack underflow');
    const v = stack.pop()!;
    if (v === MARK) throw invalid('unexpected MARK on the stack');
    return v;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) throw invalid('stack underflow');
    return v;
  };
  const popMark = (): PickleValue[] => {
    const m = marks.pop();
    if (m === undefined) throw invalid('no MARK to pop to');
    const items = stack.splice(m) as PickleValue[];
    if (items.includes(MARK as never)) throw invalid('nested MARK');
    return items;
  };
  const memoPut = (index: number, value: PickleValue) => {
    if (!memo.has(index) && memo.size >= limits.maxMemo) throw invalid(`memo exceeds ${limits.maxMemo} entries`);
    memo.set(index, value);
  };
  const memoGet = (index: number) => {
    if (!memo.has(index)) throw invalid(`memo has no entry ${index}`);
    push(memo.get(index)!);
  };
  const setItems = (target: PickleValue, items: PickleValue[]) => {
    if (items.length % 2 !== 0) throw invalid('SETITEMS with an odd number of items');
    const map = target instanceof Map ? target : target instanceof OpaqueObject ? target.items : undefined;
    if (!map) throw invalid(`SETITEM on ${describe(target)}`);
    for (let i = 0; i < items.length; i += 2) map.set(items[i]!, items[i + 1]!);
  };
  const appendItems = (target: PickleValue, items: PickleValue[]) => {
    const list = Array.isArray(target) ? target : target instanceof OpaqueObject ? target.listItems : undefined;
    if (!list) throw invalid(`APPEND on ${describe(target)}`);
    list.push(...items);
  };
  const call = (fn: PickleValue, args: PickleValue): PickleValue => {
    if (!Array.isArray(args)) throw invalid(`call of ${describe(fn)} with non-tuple arguments`);
    if (fn instanceof OpaqueObject) return new OpaqueObject(fn.global, args);
    if (isCallable(fn)) return fn.call(args);
    throw invalid(`cannot call ${describe(fn)}`);
  };

  for (;;) {
    const opcode = u8();
    switch (opcode) {
      case 0x80: // PROTO
        if (u8() > 5) throw invalid('pickle protocol above 5');
        break;
      case 0x95: // FRAME: framing is only a hint for readers of streams; we hold the whole pickle.
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) throw invalid(`STOP with ${stack.length} items on the stack`);
        return pop();
      case 0x28: // MARK
        if (marks.length >= limits.maxNesting) throw invalid(`nesting exceeds ${limits.maxNesting} levels`);
        marks.push(stack.length);
        break;
      case 0x30: // POP
        if (stack.length > 0 && stack[stack.length - 1] === MARK) stack.pop();
        else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4a: // BININT
        push(i32());
        break;
      case 0x4b: // BININT1
        push(u8());
        break;
      case 0x4d: // BININT2
        push(u16());
        break;
      case 0x8a: // LONG1
        push(decodeLong(bytes(u8())));
        break;
      case 0x8b: // LONG4
        push(decodeLong(bytes(u32())));
        break;
      case 0x47: // BINFLOAT (big-endian double)
        need(8);
        push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x58: // BINUNICODE
        push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        push(text(u64()));
        break;
      case 0x55: // SHORT_BINSTRING (Python 2 str): latin-1, as Python 3 reads it with encoding='latin1'
        push(new TextDecoder('latin1').decode(bytes(u8())));
        break;
      case 0x54: // BINSTRING
        push(new TextDecoder('latin1').decode(bytes(u32())));
        break;
      case 0x43: // SHORT_BINBYTES
        push(bytes(u8()).slice());
        break;
      case 0x42: // BINBYTES
        push(bytes(u32()).slice());
        break;
      case 0x8e: // BINBYTES8
        push(bytes(u64()).slice());
        break;
      case 0x96: // BYTEARRAY8
        push(bytes(u64()).slice());
        break;
      case 0x5d: // EMPTY_LIST
        push([]);
        break;
      case 0x61: {
        // APPEND
        const item = pop();
        appendItems(top(), [item]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x6c: // LIST
        push(popMark());
        break;
      case 0x29: // EMPTY_TUPLE
        push([]);
        break;
      case 0x74: // TUPLE
        push(popMark());
        break;
      case 0x85: // TUPLE1
        push([pop()]);
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        push([pop(), b]);
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        push([pop(), b, c]);
        break;
      }
      case 0x7d: // EMPTY_DICT
        push(new Map());
        break;
      case 0x64: {
        // DICT
        const map = new Map<PickleValue, PickleValue>();
        setItems(map, popMark());
        push(map);
        break;
      }
      case 0x73: {
        // SETITEM
        const value = pop();
        const key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x8f: // EMPTY_SET
        push(new Set());
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const target = top();
        if (!(target instanceof Set)) throw invalid(`ADDITEMS on ${describe(target)}`);
        for (const item of items) target.add(item);
        break;
      }
      case 0x91: // FROZENSET
        push(new Set(popMark()));
        break;
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line();
        push(options.resolveGlobal(module, line()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw invalid('STACK_GLOBAL needs two strings');
        push(options.resolveGlobal(module, name));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        push(call(pop(), args));
        break;
      }
      case 0x81: {
        // NEWOBJ: cls.__new__(cls, *args); same policy as REDUCE.
        const args = pop();
        push(call(pop(), args));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX
        pop(); // kwargs
        const args = pop();
        push(call(pop(), args));
        break;
      }
      case 0x62: {
        // BUILD: set state. Inert: opaque objects keep it; containers ignore it (e.g. OrderedDict._metadata).
        const state = pop();
        const target = top();
        if (target instanceof OpaqueObject) target.state = state;
        break;
      }
      case 0x51: // BINPERSID
        push(options.persistentLoad(pop()));
        break;
      case 0x68: // BINGET
        memoGet(u8());
        break;
      case 0x6a: // LONG_BINGET
        memoGet(u32());
        break;
      case 0x71: // BINPUT
        memoPut(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memoPut(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size, top());
        break;
      case 0x69: // INST
      case 0x6f: // OBJ
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
      case 0x50: // PERSID (text)
        throw new HeimdallError(
          ErrorCodes.UNSAFE_PICKLE,
          `opcode ${JSON.stringify(String.fromCharCode(opcode))} (0x${opcode.toString(16)}) at byte ${pos - 1} is not allowed`,
        );
      default:
        throw invalid(`unsupported opcode 0x${opcode.toString(16)} at byte ${pos - 1}`);
    }
  }
}

/** Little-endian two's-complement integer; a JS number when it fits exactly. */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let value = 0n;
  for (let i = b.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) value -= 1n << BigInt(8 * b.length);
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

export function describe(value: unknown): string {
  if (value === null) return 'None';
  if (value instanceof OpaqueObject) return `${value.global} object`;
  if (value instanceof Map) return 'dict';
  if (Array.isArray(value)) return 'tuple/list';
  if (value instanceof Uint8Array) return 'bytes';
  if (isCallable(value)) return value.global;
  if (typeof value === 'object' && 'kind' in value) return String((value as { kind: string }).kind);
  return typeof value;
}
