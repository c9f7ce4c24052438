import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { RandomAccessFile } from './random-access-file.ts';
import { toFloat32 } from './tensor-data.ts';
import { DTYPE_BYTES, readerError, type DType, type LazyTensor } from './types.ts';

/**
 * safetensors (https://github.com/huggingface/safetensors, README "Format"): u64 header length, a JSON
 * header of `{name: {dtype, shape, data_offsets}}` plus optional `__metadata__`, then the byte buffer.
 * Validated as the reference implementation does: header size cap, offsets inside the buffer, no
 * overlaps or gaps, and the buffer ending exactly at the file's end. Stricter than JSON.parse where
 * a file could mislead us: duplicate keys, numbers that are not exact integers where sizes belong,
 * sizes whose product overflows; and keys from the file are only ever looked up as own entries (a
 * dtype named "__proto__" is just an unknown dtype).
 */

/** The reference implementation's cap (safetensors/src/tensor.rs MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;
/** Nesting the header needs: the root object, a tensor's object, its shape array. */
const MAX_JSON_DEPTH = 16;

const DTYPES: ReadonlyMap<string, DType> = new Map([
  ['F32', 'float32'],
  ['F16', 'float16'],
  ['BF16', 'bfloat16'],
  ['F64', 'float64'],
  ['I64', 'int64'],
  ['I32', 'int32'],
  ['I16', 'int16'],
  ['I8', 'int8'],
  ['U8', 'uint8'],
  ['BOOL', 'bool'],
]);

const invalid = (message: string) => new HeimdallError(ErrorCodes.SAFETENSORS_INVALID, message);

export interface SafetensorsFile {
  readonly tensors: Map<string, LazyTensor>;
  readonly metadata: Record<string, string>;
}

export async function readSafetensors(file: RandomAccessFile): Promise<SafetensorsFile> {
  if (file.size < 8) throw invalid(`file of ${file.size} bytes is too short for a header`);
  const prefix = await file.read(0, 8);
  const declared = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (declared > BigInt(MAX_HEADER_BYTES)) throw invalid(`header of ${declared} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const headerLength = Number(declared);
  if (8 + headerLength > file.size) throw invalid(`header of ${headerLength} bytes runs past the end of the file (truncated?)`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(await file.read(8, headerLength));
  } catch (error) {
    if (error instanceof HeimdallError) throw error;
    throw invalid('header is not valid UTF-8');
  }
  const header = parseJson(text);
  if (!(header instanceof Map)) throw invalid('header is not a JSON object');

  const dataStart = 8 + headerLength;
  const dataLength = file.size - dataStart;
  const entries: Array<{ name: string; dtype: DType; shape: number[]; begin: number; end: number }> = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of header) {
    if (name === '__metadata__') {
      metadata = parseMetadata(raw);
      continue;
    }
    if (!(raw instanceof Map)) throw invalid(`tensor ${name} is ${kindOf(raw)}, not an object`);
    const dtypeName = raw.get('dtype');
    const dtype = typeof dtypeName === 'string' ? DTYPES.get(dtypeName) : undefined;
    if (!dtype) throw invalid(`tensor ${name} has unsupported dtype ${describeJson(dtypeName)}`);
    const shape = raw.get('shape');
    const offsets = raw.get('data_offsets');
    if (!Array.isArray(shape) || !shape.every(isSize)) throw invalid(`tensor ${name} has an invalid shape ${describeJson(shape)}`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSize)) {
      throw invalid(`tensor ${name} has invalid data_offsets ${describeJson(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    let expected = DTYPE_BYTES[dtype];
    for (const d of shape as number[]) {
      expected *= d;
      if (!Number.isSafeInteger(expected)) throw invalid(`tensor ${name} of shape [${shape.join(', ')}] is too large: its size overflows`);
    }
    if (end < begin || end - begin !== expected) {
      throw invalid(`tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape needs ${expected}`);
    }
    if (end > dataLength) throw invalid(`tensor ${name} ends at ${end}, past the ${dataLength}-byte buffer (truncated?)`);
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }

  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const entry of sorted) {
    if (entry.begin < cursor) throw invalid(`tensor ${entry.name} overlaps the tensor before it (offset ${entry.begin} < ${cursor})`);
    if (entry.begin > cursor) throw invalid(`gap of ${entry.begin - cursor} bytes before tensor ${entry.name}`);
    cursor = entry.end;
  }
  if (cursor !== dataLength) throw invalid(`${dataLength - cursor} trailing bytes after the last tensor`);

  const tensors = new Map<string, LazyTensor>();
  for (const entry of entries) {
    tensors.set(entry.name, {
      dtype: entry.dtype,
      shape: entry.shape,
      numel: entry.shape.reduce((a, b) => a * b, 1),
      readFloat32: async (scratch) => {
        try {
          return toFloat32(await file.read(dataStart + entry.begin, entry.end - entry.begin, scratch), entry.dtype);
        } catch (error) {
          throw readerError(error, ErrorCodes.SAFETENSORS_INVALID);
        }
      },
    });
  }
  return { tensors, metadata };
}

const isSize = (d: Json) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0;

function parseMetadata(raw: Json): Record<string, string> {
  if (!(raw instanceof Map)) throw invalid(`__metadata__ is ${kindOf(raw)}, not an object`);
  const out: Record<string, string> = {};
  for (const [key, value] of raw) {
    if (typeof value !== 'string') throw invalid(`__metadata__.${key} is ${kindOf(value)}, not a string`);
    // An own property whatever the key ("__proto__" included).
    Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/** JSON values with objects as Maps (no prototype to walk into, duplicate keys detectable). */
type Json = null | boolean | number | string | Json[] | Map<string, Json>;

const kindOf = (value: Json | undefined) =>
  value === undefined ? 'missing' : value === null ? 'null' : Array.isArray(value) ? 'an array' : value instanceof Map ? 'an object' : `a ${typeof value}`;

function describeJson(value: Json | undefined): string {
  if (value === undefined) return '(missing)';
  if (value instanceof Map) return 'an object';
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 60)}...` : text;
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/** RFC 8259 JSON, strictly: one value, no duplicate keys, nesting capped; SAFETENSORS_INVALID on any fault. */
export function parseJson(text: string): Json {
  let at = 0;
  const fail = (what: string): never => {
    throw invalid(`header is not valid JSON: ${what} at character ${at}`);
  };
  const skipSpace = () => {
    for (;;) {
      const c = text.charCodeAt(at);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) at++;
      else return;
    }
  };
  const string = (): string => {
    const start = at;
    let escaped = false;
    for (at++; at < text.length; at++) {
      const c = text.charCodeAt(at);
      if (c === 0x5c /* \ */) {
        escaped = true;
        at++;
      } else if (c === 0x22 /* " */) break;
    }
    if (at >= text.length) fail('unterminated string');
    at++;
    const token = text.slice(start, at);
    if (!escaped && !/[\u0000-\u001f]/.test(token)) return token.slice(1, -1);
    try {
      return JSON.parse(token) as string;
    } catch {
      return fail('malformed string');
    }
  };
  const value = (depth: number): Json => {
    if (depth > MAX_JSON_DEPTH) fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    skipSpace();
    const c = text[at];
    if (c === '{') {
      at++;
      const object = new Map<string, Json>();
      skipSpace();
      if (text[at] === '}') {
        at++;
        return object;
      }
      for (;;) {
        skipSpace();
        if (text[at] !== '"') fail('expected a key');
        const key = string();
        if (object.has(key)) fail(`duplicate key ${JSON.stringify(key.slice(0, 60))}`);
        skipSpace();
        if (text[at] !== ':') fail('expected ":"');
        at++;
        object.set(key, value(depth + 1));
        skipSpace();
        if (text[at] === ',') at++;
        else if (text[at] === '}') {
          at++;
          return object;
        } else fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      at++;
      const array: Json[] = [];
      skipSpace();
      if (text[at] === ']') {
        at++;
        return array;
      }
      for (;;) {
        array.push(value(depth + 1));
        skipSpace();
        if (text[at] === ',') at++;
        else if (text[at] === ']') {
          at++;
          return array;
        } else fail('expected "," or "]"');
      }
    }
    if (c === '"') return string();
    for (const [literal, result] of [['true', true], ['false', false], ['null', null]] as const) {
      if (text.startsWith(literal, at)) {
        at += literal.length;
        return result;
      }
    }
    NUMBER.lastIndex = at;
    const number = NUMBER.exec(text);
    if (!number) return fail('unexpected character');
    at += number[0].length;
    const n = Number(number[0]);
    // 1e400 is Infinity: no size or offset, and no JSON number either.
    if (!Number.isFinite(n)) fail(`number ${number[0].slice(0, 40)} out of range`);
    return n;
  };
  const result = value(0);
  skipSpace();
  if (at !== text.length) fail('trailing characters');
  return result;
}
