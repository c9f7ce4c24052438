import fc from 'fast-check';

/**
 * Mutations of seed inputs, as fast-check arbitraries. An input is a *recipe* — a seed and a short
 * list of mutations — rather than bytes, so that a failure can be minimized (drop mutations one by
 * one) and described ("set u32 central[0].localOffset at 0x2c1 := 0xffffffff") instead of being
 * an opaque blob. `materialize` turns a recipe into the bytes a target reads.
 *
 * Half of the positions are aimed at a seed's *fields* (offsets of lengths, counts, offsets and
 * opcodes that seeds.ts finds by walking the seed's structure), the rest anywhere in the input.
 */

/** A structure field of a seed: where a length, offset, count, opcode or number lives. */
export interface Field {
  readonly at: number;
  /** Fixed-width little-endian integer, protobuf varint, or a decimal number written as text (JSON). */
  readonly width: 1 | 2 | 4 | 8 | 'varint' | 'text';
  readonly label: string;
}

export interface Seed {
  readonly name: string;
  /** What mutations apply to (for wrapped seeds, e.g. a pickle that is put back into a zip, the inner bytes). */
  readonly bytes: Uint8Array;
  readonly fields?: readonly Field[];
  /** JSON seeds: the parsed value, for structure-aware mutations, and how a (mutated) value becomes bytes. */
  readonly json?: { readonly value: unknown; encode(value: unknown): Uint8Array };
  /** Turns the mutated bytes into the target's input (e.g. wraps a pickle into a valid zip, CRCs right). */
  wrap?(mutated: Uint8Array): Uint8Array;
}

/** A position: the n-th field of the seed (plus a small delta), or the n-th byte of the input. */
export interface Pos {
  readonly field: boolean;
  readonly index: number;
  readonly delta: number;
}

/** Integer values written into fields: boundaries, the old value nudged, or sizes relative to the input. */
export type IntValue =
  | { readonly kind: 'const'; readonly value: bigint }
  | { readonly kind: 'old'; readonly delta: number }
  | { readonly kind: 'remaining'; readonly delta: number }
  | { readonly kind: 'size'; readonly delta: number };

export type Mutation =
  | { readonly op: 'flip'; readonly at: Pos; readonly bit: number }
  | { readonly op: 'set-byte'; readonly at: Pos; readonly value: number }
  | { readonly op: 'set-int'; readonly at: Pos; readonly width: 1 | 2 | 4 | 8; readonly value: IntValue }
  | { readonly op: 'set-varint'; readonly at: Pos; readonly value: IntValue }
  | { readonly op: 'set-number-text'; readonly at: Pos; readonly text: string }
  | { readonly op: 'insert'; readonly at: Pos; readonly bytes: readonly number[] }
  | { readonly op: 'delete'; readonly at: Pos; readonly length: number }
  | { readonly op: 'duplicate'; readonly at: Pos; readonly length: number; readonly to: Pos }
  | { readonly op: 'repeat'; readonly at: Pos; readonly length: number; readonly times: number }
  | { readonly op: 'splice'; readonly at: Pos; readonly from: number; readonly fromAt: number; readonly length: number }
  | { readonly op: 'truncate'; readonly at: Pos };

/** Structure-aware mutations of a JSON seed, applied before any byte mutation. */
export type JsonMutation =
  | { readonly op: 'replace'; readonly node: number; readonly value: number }
  | { readonly op: 'delete'; readonly node: number }
  | { readonly op: 'add-key'; readonly node: number; readonly key: number; readonly value: number }
  | { readonly op: 'wrap'; readonly node: number; readonly depth: number }
  | { readonly op: 'grow'; readonly node: number; readonly times: number }
  | { readonly op: 'swap'; readonly node: number; readonly other: number };

export interface Recipe {
  readonly seed: number;
  readonly json: readonly JsonMutation[];
  readonly mutations: readonly Mutation[];
}

/** Largest input a recipe may grow to (repeat/duplicate stop there): keeps runs fast and memory sane. */
export const MAX_INPUT_BYTES = 2 * 1024 * 1024;
/** What a JSON mutation may grow a value to (characters of its JSON text). */
const MAX_JSON_CHARS = 256_000;
/** How deep JSON mutations may nest a value (the encoder, JSON.stringify, recurses). */
const MAX_JSON_DEPTH = 1_200;

export const BOUNDARY_INTS: readonly bigint[] = [
  0n, 1n, 2n, 0x7fn, 0x80n, 0xffn, 0x100n, 0x7fffn, 0x8000n, 0xffffn, 0x10000n, 0x7fffffffn, 0x80000000n, 0xfffffffen, 0xffffffffn,
  0x100000000n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 2n, 2n ** 64n - 1n,
];

/** Numbers written as JSON text (safetensors offsets and shapes): boundaries, overflows and non-integers. */
export const NUMBER_TEXTS: readonly string[] = [
  '0', '1', '-1', '2', '255', '65535', '4294967295', '4294967296', '2147483648', '9007199254740991', '9007199254740992', '9007199254740993',
  '18446744073709551615', '18446744073709551616', '1e308', '1e309', '-0', '0.5', '1e-400', '100000000', '99999999', '1e2',
];

/** Values JSON mutations substitute: wrong types, boundary numbers, hostile strings. */
export const JSON_VALUES: readonly unknown[] = [
  null, true, false, 0, -1, 1.5, 1e308, 2 ** 53 + 2, -(2 ** 63), 4294967296, '', ' ', '%', '%zz', '%E0%A4%A', '%00', '\ud800', '\u0000',
  'é', '😀', 'a'.repeat(70_000), '../../etc/passwd', 'runs/a b+c%2Bd.pth', 's3:ObjectCreated:Put', 's3:ObjectRemoved:Delete',
  'heimdall.checkpoint.created', 'heimdall.pipeline.failed', '1.0', '0.3', 'application/json', 'application/cloudevents+json', 'text/plain',
  '2024-02-30T25:61:61Z', '2024-06-01T10:00:00.123456789+02:00', 'ab'.repeat(32), '0123456789abcdef', 'AB'.repeat(32), 'x..y', 'a',
  {}, [], [null], [[]], { a: 1 }, JSON.parse('{"__proto__":{"polluted":true}}'), { toString: 1, valueOf: 'x', constructor: null },
];

export const JSON_KEYS: readonly string[] = [
  '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'Records', 'data', 'specversion', 'type', 'id', 'source', 'time',
  'subject', 'datacontenttype', 'runId', 'size', 's3', 'bucket', 'object', 'key', 'eTag', 'versionId', 'eventName', '', ' ', 'é',
];

// ---------------------------------------------------------------------------------------------
// Arbitraries

const posArb: fc.Arbitrary<Pos> = fc.record({
  field: fc.boolean(),
  index: fc.nat({ max: 0x7fffffff }),
  delta: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -4, max: 4 }) }),
});

const intValueArb: fc.Arbitrary<IntValue> = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom(...BOUNDARY_INTS).map((value) => ({ kind: 'const' as const, value })) },
  { weight: 2, arbitrary: fc.integer({ min: -2, max: 2 }).map((delta) => ({ kind: 'old' as const, delta })) },
  { weight: 2, arbitrary: fc.integer({ min: -2, max: 2 }).map((delta) => ({ kind: 'remaining' as const, delta })) },
  { weight: 1, arbitrary: fc.integer({ min: -2, max: 2 }).map((delta) => ({ kind: 'size' as const, delta })) },
);

/** Mostly short ranges, sometimes long ones. */
const lengthArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 16 }) },
  { weight: 3, arbitrary: fc.integer({ min: 17, max: 512 }) },
  { weight: 1, arbitrary: fc.integer({ min: 513, max: 65_536 }) },
);

export const mutationArb = (seedCount: number): fc.Arbitrary<Mutation> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.record({ op: fc.constant('flip' as const), at: posArb, bit: fc.integer({ min: 0, max: 7 }) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('set-byte' as const), at: posArb, value: fc.constantFrom(0, 1, 0x7f, 0x80, 0xff, 0x0a, 0x2e, 0x7b) }) },
    { weight: 6, arbitrary: fc.record({ op: fc.constant('set-int' as const), at: posArb, width: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const), value: intValueArb }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('set-varint' as const), at: posArb, value: intValueArb }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('set-number-text' as const), at: posArb, text: fc.constantFrom(...NUMBER_TEXTS) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('insert' as const), at: posArb, bytes: fc.array(fc.nat({ max: 255 }), { minLength: 1, maxLength: 32 }) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), at: posArb, length: lengthArb }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('duplicate' as const), at: posArb, length: lengthArb, to: posArb }) },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant('repeat' as const),
        at: posArb,
        length: fc.integer({ min: 1, max: 16 }),
        times: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1000, max: 300_000 })),
      }),
    },
    {
      weight: seedCount > 1 ? 1 : 0,
      arbitrary: fc.record({ op: fc.constant('splice' as const), at: posArb, from: fc.nat({ max: Math.max(0, seedCount - 1) }), fromAt: fc.nat({ max: 0x7fffffff }), length: lengthArb }),
    },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('truncate' as const), at: posArb }) },
  );

const nodeArb = fc.nat({ max: 0x7fffffff });

export const jsonMutationArb: fc.Arbitrary<JsonMutation> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('replace' as const), node: nodeArb, value: fc.nat({ max: JSON_VALUES.length - 1 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('delete' as const), node: nodeArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('add-key' as const), node: nodeArb, key: fc.nat({ max: JSON_KEYS.length - 1 }), value: fc.nat({ max: JSON_VALUES.length - 1 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('wrap' as const), node: nodeArb, depth: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 100, max: 1000 })) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('grow' as const), node: nodeArb, times: fc.oneof(fc.integer({ min: 2, max: 8 }), fc.integer({ min: 1000, max: 20_000 })) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('swap' as const), node: nodeArb, other: nodeArb }) },
);

/** Mostly one or two mutations: each one more is another chance to fail early, before the deeper checks. */
const countArb = (max: number) =>
  fc.oneof({ weight: 5, arbitrary: fc.constant(1) }, { weight: 3, arbitrary: fc.constant(Math.min(2, max)) }, { weight: 2, arbitrary: fc.integer({ min: Math.min(3, max), max }) });

/** Recipes over `seeds`: JSON seeds get 1–3 JSON mutations, or up to 2 and then 1–2 byte mutations; other seeds 1–6 byte mutations. */
export function recipeArb(seeds: readonly Seed[]): fc.Arbitrary<Recipe> {
  const bytesOnly = (n: number) => fc.array(mutationArb(seeds.length), { minLength: n, maxLength: n });
  return fc.nat({ max: seeds.length - 1 }).chain((seed) =>
    seeds[seed]!.json
      ? fc.oneof(
          { weight: 3, arbitrary: fc.record({ seed: fc.constant(seed), json: countArb(3).chain((n) => fc.array(jsonMutationArb, { minLength: n, maxLength: n })), mutations: fc.constant([] as Mutation[]) }) },
          { weight: 1, arbitrary: fc.record({ seed: fc.constant(seed), json: fc.array(jsonMutationArb, { maxLength: 2 }), mutations: countArb(2).chain(bytesOnly) }) },
        )
      : fc.record({ seed: fc.constant(seed), json: fc.constant([] as JsonMutation[]), mutations: countArb(6).chain(bytesOnly) }),
  );
}

// ---------------------------------------------------------------------------------------------
// Applying

export interface Materialized {
  /** The target's input. */
  readonly input: Uint8Array;
  /** What each mutation did, with resolved offsets (for reports). */
  readonly log: readonly string[];
}

export function materialize(recipe: Recipe, seeds: readonly Seed[]): Materialized {
  const seed = seeds[recipe.seed];
  if (!seed) throw new RangeError(`recipe names seed ${recipe.seed} of ${seeds.length}`);
  const log: string[] = [`seed ${seed.name} (${seed.bytes.byteLength} bytes)`];
  let bytes = seed.bytes;
  if (recipe.json.length > 0 && seed.json) {
    let value = structuredClone(seed.json.value);
    for (const m of recipe.json) {
      const result = applyJson(value, m);
      value = result.value;
      log.push(result.log);
    }
    bytes = seed.json.encode(value);
  }
  // The seed's fields apply only as long as the bytes are the seed's (JSON mutations re-encode).
  const buffer = new Bytes(bytes, recipe.json.length === 0 ? (seed.fields ?? []) : []);
  for (const m of recipe.mutations) log.push(buffer.apply(m, seeds));
  const mutated = buffer.result();
  return { input: seed.wrap ? seed.wrap(mutated) : mutated, log };
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

class Bytes {
  private data: Uint8Array;
  /** Field offsets, kept in step with inserts and deletes (-1 once deleted). */
  private readonly offsets: number[];

  constructor(
    seed: Uint8Array,
    private readonly fields: readonly Field[],
  ) {
    this.data = seed.slice();
    this.offsets = fields.map((f) => f.at);
  }

  result(): Uint8Array {
    return this.data;
  }

  /** A resolved position (clamped into the input; `end` allows the position just past the last byte). */
  private resolve(pos: Pos, end = false): { at: number; field?: Field } {
    const length = this.data.byteLength + (end ? 1 : 0);
    if (length === 0) return { at: 0 };
    if (pos.field && this.fields.length > 0) {
      const i = pos.index % this.fields.length;
      const at = this.offsets[i]!;
      if (at >= 0) return { at: Math.min(Math.max(at + pos.delta, 0), length - 1), field: this.fields[i]! };
    }
    return { at: pos.index % length };
  }

  private where(r: { at: number; field?: Field }): string {
    return r.field ? `${r.field.label} (${r.field.width === 'text' ? 'text' : r.field.width === 'varint' ? 'varint' : `u${8 * (r.field.width as number)}`} at ${hex(r.at)})` : `byte ${hex(r.at)}`;
  }

  private shift(at: number, removed: number, inserted: number): void {
    for (let i = 0; i < this.offsets.length; i++) {
      const o = this.offsets[i]!;
      if (o < at) continue;
      if (o < at + removed) this.offsets[i] = -1;
      else this.offsets[i] = o - removed + inserted;
    }
  }

  private replace(at: number, removed: number, inserted: Uint8Array): void {
    const out = new Uint8Array(this.data.byteLength - removed + inserted.byteLength);
    out.set(this.data.subarray(0, at));
    out.set(inserted, at);
    out.set(this.data.subarray(at + removed), at + inserted.byteLength);
    this.data = out;
    this.shift(at, removed, inserted.byteLength);
  }

  private intValue(value: IntValue, at: number, width: number, old: bigint): bigint {
    switch (value.kind) {
      case 'const':
        return value.value;
      case 'old':
        return old + BigInt(value.delta);
      case 'remaining':
        return BigInt(Math.max(0, this.data.byteLength - at - width + value.delta));
      case 'size':
        return BigInt(Math.max(0, this.data.byteLength + value.delta));
    }
  }

  /** An integer aimed at a field is written the field's way: fixed width, varint, or decimal text. */
  private fitToField(m: Mutation): Mutation {
    if (m.op !== 'set-int' && m.op !== 'set-varint') return m;
    const width = this.resolve(m.at).field?.width;
    if (width === 'text') {
      const value = m.value.kind === 'const' ? m.value.value : BigInt(Math.max(0, this.data.byteLength + m.value.delta));
      return { op: 'set-number-text', at: m.at, text: value.toString() };
    }
    if (width === 'varint' && m.op === 'set-int') return { op: 'set-varint', at: m.at, value: m.value };
    if (typeof width === 'number' && m.op === 'set-varint') return { op: 'set-int', at: m.at, width, value: m.value };
    return m;
  }

  apply(mutation: Mutation, seeds: readonly Seed[]): string {
    const n = this.data.byteLength;
    if (n === 0 && mutation.op !== 'insert' && mutation.op !== 'splice') return `${mutation.op}: input is empty, skipped`;
    const m = this.fitToField(mutation);
    switch (m.op) {
      case 'flip': {
        const r = this.resolve(m.at);
        this.data[r.at] = this.data[r.at]! ^ (1 << m.bit);
        return `flip bit ${m.bit} of ${this.where(r)}`;
      }
      case 'set-byte': {
        const r = this.resolve(m.at);
        const old = this.data[r.at]!;
        this.data[r.at] = m.value;
        return `set ${this.where(r)} := ${hex(m.value)} (was ${hex(old)})`;
      }
      case 'set-int': {
        const r = this.resolve(m.at);
        const width = typeof r.field?.width === 'number' ? r.field.width : m.width;
        const w = Math.min(width, n - r.at);
        const old = readLE(this.data, r.at, w);
        const value = this.intValue(m.value, r.at, w, old) & ((1n << BigInt(8 * w)) - 1n);
        writeLE(this.data, r.at, w, value);
        return `set u${8 * w} ${this.where(r)} := ${hex(value)} (was ${hex(old)})`;
      }
      case 'set-varint': {
        const r = this.resolve(m.at);
        let end = r.at;
        while (end < n && end - r.at < 10 && this.data[end]! & 0x80) end++;
        end = Math.min(end + 1, n);
        const old = readVarint(this.data.subarray(r.at, end));
        const value = this.intValue(m.value, r.at, end - r.at, old) & ((1n << 64n) - 1n);
        this.replace(r.at, end - r.at, encodeVarint(value));
        return `set varint ${this.where(r)} := ${value} (was ${old})`;
      }
      case 'set-number-text': {
        const r = this.resolve(m.at);
        let start = r.at;
        while (start < n && start - r.at < 64 && !isDigit(this.data[start]!)) start++;
        if (start >= n || !isDigit(this.data[start]!)) return `set number near ${this.where(r)}: no number there, skipped`;
        while (start > 0 && isNumberChar(this.data[start - 1]!)) start--;
        let end = start;
        while (end < n && isNumberChar(this.data[end]!)) end++;
        const old = new TextDecoder().decode(this.data.subarray(start, end));
        this.replace(start, end - start, new TextEncoder().encode(m.text));
        return `set number ${r.field ? `${r.field.label} ` : ''}at ${hex(start)} := ${m.text} (was ${old})`;
      }
      case 'insert': {
        const r = this.resolve(m.at, true);
        this.replace(r.at, 0, Uint8Array.from(m.bytes));
        return `insert ${m.bytes.length} bytes [${m.bytes.slice(0, 8).map((b) => hex(b)).join(' ')}${m.bytes.length > 8 ? ' …' : ''}] at ${this.where(r)}`;
      }
      case 'delete': {
        const r = this.resolve(m.at);
        const length = Math.min(m.length, n - r.at);
        this.replace(r.at, length, new Uint8Array(0));
        return `delete ${length} bytes at ${this.where(r)}`;
      }
      case 'duplicate': {
        const r = this.resolve(m.at);
        const length = Math.min(m.length, n - r.at, MAX_INPUT_BYTES - n);
        if (length <= 0) return 'duplicate: input at its size cap, skipped';
        const chunk = this.data.slice(r.at, r.at + length);
        const to = this.resolve(m.to, true);
        this.replace(to.at, 0, chunk);
        return `copy ${length} bytes from ${this.where(r)} to ${this.where(to)}`;
      }
      case 'repeat': {
        const r = this.resolve(m.at);
        const length = Math.min(m.length, n - r.at);
        const times = Math.min(m.times, Math.floor((MAX_INPUT_BYTES - n) / length));
        if (times <= 0) return 'repeat: input at its size cap, skipped';
        const chunk = this.data.subarray(r.at, r.at + length);
        const run = new Uint8Array(length * times);
        for (let i = 0; i < times; i++) run.set(chunk, i * length);
        this.replace(r.at + length, 0, run);
        return `repeat the ${length} bytes at ${this.where(r)} ${times} more times`;
      }
      case 'splice': {
        const other = seeds[m.from % seeds.length]!.bytes;
        if (other.byteLength === 0) return 'splice: other seed is empty, skipped';
        const fromAt = m.fromAt % other.byteLength;
        const length = Math.min(m.length, other.byteLength - fromAt, MAX_INPUT_BYTES - n);
        const r = this.resolve(m.at, true);
        const removed = Math.min(length, n - r.at);
        this.replace(r.at, removed, other.subarray(fromAt, fromAt + length));
        return `overwrite ${length} bytes at ${this.where(r)} with bytes ${hex(fromAt)}.. of seed ${seeds[m.from % seeds.length]!.name}`;
      }
      case 'truncate': {
        const r = this.resolve(m.at);
        this.data = this.data.slice(0, r.at);
        this.shift(r.at, n - r.at, 0);
        return `truncate to ${r.at} bytes (at ${this.where(r)})`;
      }
    }
  }
}

const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isNumberChar = (b: number) => isDigit(b) || b === 0x2d || b === 0x2b || b === 0x2e || b === 0x65 || b === 0x45;

function readLE(data: Uint8Array, at: number, width: number): bigint {
  let v = 0n;
  for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[at + i] ?? 0);
  return v;
}

function writeLE(data: Uint8Array, at: number, width: number, value: bigint): void {
  for (let i = 0; i < width; i++) data[at + i] = Number((value >> BigInt(8 * i)) & 0xffn);
}

function readVarint(bytes: Uint8Array): bigint {
  let v = 0n;
  for (let i = bytes.byteLength - 1; i >= 0; i--) v = (v << 7n) | BigInt(bytes[i]! & 0x7f);
  return v;
}

export function encodeVarint(value: bigint): Uint8Array {
  const out: number[] = [];
  let v = value;
  do {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v > 0n ? b | 0x80 : b);
  } while (v > 0n);
  return Uint8Array.from(out);
}

// ---------------------------------------------------------------------------------------------
// JSON mutations

interface Slot {
  readonly up?: Slot;
  readonly key?: string | number;
  get(): unknown;
  set(v: unknown): void;
  remove(): void;
}

/** `$.a.b[0][0][0]…`, long runs of the same index written once with a count. */
function pathOf(slot: Slot): string {
  const parts: string[] = [];
  for (let s: Slot | undefined = slot; s?.up; s = s.up) parts.push(typeof s.key === 'number' ? `[${s.key}]` : `.${s.key}`);
  parts.reverse();
  let out = '$';
  for (let i = 0; i < parts.length; ) {
    let j = i;
    while (j < parts.length && parts[j] === parts[i]) j++;
    out += j - i > 3 ? `${parts[i]}×${j - i}` : parts.slice(i, j).join('');
    i = j;
  }
  return out;
}

/** Every value of a JSON tree (pre-order, at most 10 000), each with a way to replace or remove it. The root first. */
function slots(root: { value: unknown }): Slot[] {
  const out: Slot[] = [];
  // Iterative: mutated trees can be thousands of levels deep.
  const pending: Slot[] = [{ get: () => root.value, set: (v) => (root.value = v), remove: () => (root.value = undefined) }];
  while (pending.length > 0 && out.length < 10_000) {
    const slot = pending.pop()!;
    out.push(slot);
    const value = slot.get();
    const children: Slot[] = [];
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length && i < 10_000; i++) {
        children.push({ up: slot, key: i, get: () => value[i], set: (v) => (value[i] = v), remove: () => value.splice(i, 1) });
      }
    } else if (value !== null && typeof value === 'object') {
      const object = value as Record<string, unknown>;
      for (const key of Object.keys(object)) {
        children.push({ up: slot, key, get: () => object[key], set: (v) => (object[key] = v), remove: () => delete object[key] });
      }
    }
    for (let i = children.length - 1; i >= 0; i--) pending.push(children[i]!);
  }
  return out;
}

const short = (v: unknown) => {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 37)}…(${s.length} chars)` : s;
};

function applyJson(value: unknown, m: JsonMutation): { value: unknown; log: string } {
  const root = { value };
  const all = slots(root);
  const slot = all[m.node % all.length]!;
  switch (m.op) {
    case 'replace': {
      const v = structuredClone(JSON_VALUES[m.value]);
      slot.set(v);
      return { value: root.value, log: `json: ${pathOf(slot)} := ${short(v)}` };
    }
    case 'delete':
      slot.remove();
      return { value: root.value, log: `json: delete ${pathOf(slot)}` };
    case 'add-key': {
      const target = slot.get();
      const key = JSON_KEYS[m.key]!;
      const v = structuredClone(JSON_VALUES[m.value]);
      if (target !== null && typeof target === 'object' && !Array.isArray(target)) {
        Object.defineProperty(target, key, { value: v, enumerable: true, writable: true, configurable: true });
        return { value: root.value, log: `json: ${pathOf(slot)}[${JSON.stringify(key)}] := ${short(v)}` };
      }
      if (Array.isArray(target)) {
        target.push(v);
        return { value: root.value, log: `json: append ${short(v)} to ${pathOf(slot)}` };
      }
      return { value: root.value, log: `json: add-key on ${pathOf(slot)} (not an object), skipped` };
    }
    case 'wrap': {
      // JSON.stringify recurses: keep the whole tree within MAX_JSON_DEPTH.
      const depth = Math.min(m.depth, Math.max(0, MAX_JSON_DEPTH - depthOf(root.value)));
      let v = slot.get();
      for (let i = 0; i < depth; i++) v = [v];
      slot.set(v);
      return { value: root.value, log: `json: wrap ${pathOf(slot)} in ${depth} arrays` };
    }
    case 'grow': {
      const target = slot.get();
      // Up to about MAX_JSON_CHARS of text, whatever the value holds.
      const size = Math.max(1, (JSON.stringify(target) ?? '').length);
      const times = Math.max(1, Math.min(m.times, Math.floor(MAX_JSON_CHARS / size)));
      if (Array.isArray(target) && target.length > 0) {
        const items = target.slice();
        for (let i = 1; i < times; i++) for (const item of items) target.push(structuredClone(item));
        return { value: root.value, log: `json: repeat the items of ${pathOf(slot)} ${times} times (${target.length} items)` };
      }
      if (typeof target === 'string' && target.length > 0) {
        slot.set(target.repeat(times));
        return { value: root.value, log: `json: repeat the string ${pathOf(slot)} ${times} times` };
      }
      return { value: root.value, log: `json: grow ${pathOf(slot)} (nothing to repeat), skipped` };
    }
    case 'swap': {
      const other = all[m.other % all.length]!;
      const a = slot.get();
      const b = other.get();
      if ((JSON.stringify(a) ?? '').length + (JSON.stringify(b) ?? '').length > MAX_JSON_CHARS) return { value: root.value, log: `json: swap ${pathOf(slot)} and ${pathOf(other)} (too big), skipped` };
      // Swapping a node with one of its ancestors would make a cycle: copy instead.
      slot.set(structuredClone(b));
      if (!contains(a, b)) other.set(structuredClone(a));
      return { value: root.value, log: `json: swap ${pathOf(slot)} and ${pathOf(other)}` };
    }
  }
}

function depthOf(tree: unknown): number {
  let max = 0;
  const pending: Array<[unknown, number]> = [[tree, 1]];
  while (pending.length > 0) {
    const [t, d] = pending.pop()!;
    max = Math.max(max, d);
    if (t !== null && typeof t === 'object') for (const v of Object.values(t as object).slice(0, 10_000)) pending.push([v, d + 1]);
  }
  return max;
}

function contains(tree: unknown, node: unknown): boolean {
  const pending = [tree];
  while (pending.length > 0) {
    const t = pending.pop();
    if (t === node) return true;
    if (t !== null && typeof t === 'object') pending.push(...Object.values(t as object).slice(0, 10_000));
  }
  return false;
}
