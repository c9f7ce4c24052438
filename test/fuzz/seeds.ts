import { crc32 } from 'node:zlib';
import type { Field } from './mutations.ts';

/**
 * Structure walkers for seeds: where the lengths, offsets, counts and opcodes of a zip archive, a
 * pickle, an ONNX protobuf and a safetensors header sit, so that mutations can aim at them. They
 * read only our own (valid) seeds; they are not parsers of untrusted input.
 */

const u16 = (b: Uint8Array, at: number) => b[at]! | (b[at + 1]! << 8);
const u32 = (b: Uint8Array, at: number) => (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0;

/** The records of a zip archive (local headers, central directory, end records) and their fields. */
export function zipFields(bytes: Uint8Array): Field[] {
  const fields: Field[] = [];
  const add = (at: number, width: 1 | 2 | 4 | 8, label: string) => {
    if (at + width <= bytes.byteLength) fields.push({ at, width, label });
  };
  let central = 0;
  let local = 0;
  for (let p = 0; p + 4 <= bytes.byteLength; p++) {
    if (bytes[p] !== 0x50 || bytes[p + 1] !== 0x4b) continue;
    const sig = u32(bytes, p);
    if (sig === 0x04034b50) {
      const l = `local[${local++}]`;
      add(p, 4, `${l}.signature`);
      for (const [off, w, name] of [[4, 2, 'version'], [6, 2, 'flags'], [8, 2, 'method'], [14, 4, 'crc32'], [18, 4, 'compressedSize'], [22, 4, 'size'], [26, 2, 'nameLength'], [28, 2, 'extraLength']] as const) {
        add(p + off, w, `${l}.${name}`);
      }
      extraFields(bytes, p + 30 + u16(bytes, p + 26), u16(bytes, p + 28), l, add);
    } else if (sig === 0x02014b50) {
      const c = `central[${central++}]`;
      add(p, 4, `${c}.signature`);
      for (const [off, w, name] of [[8, 2, 'flags'], [10, 2, 'method'], [16, 4, 'crc32'], [20, 4, 'compressedSize'], [24, 4, 'size'], [28, 2, 'nameLength'], [30, 2, 'extraLength'], [32, 2, 'commentLength'], [42, 4, 'localOffset']] as const) {
        add(p + off, w, `${c}.${name}`);
      }
      extraFields(bytes, p + 46 + u16(bytes, p + 28), u16(bytes, p + 30), c, add);
    } else if (sig === 0x06054b50) {
      for (const [off, w, name] of [[0, 4, 'signature'], [4, 2, 'disk'], [6, 2, 'directoryDisk'], [8, 2, 'diskCount'], [10, 2, 'count'], [12, 4, 'directorySize'], [16, 4, 'directoryOffset'], [20, 2, 'commentLength']] as const) {
        add(p + off, w, `eocd.${name}`);
      }
    } else if (sig === 0x06064b50) {
      for (const [off, w, name] of [[0, 4, 'signature'], [4, 8, 'recordSize'], [24, 8, 'diskCount'], [32, 8, 'count'], [40, 8, 'directorySize'], [48, 8, 'directoryOffset']] as const) {
        add(p + off, w, `zip64eocd.${name}`);
      }
    } else if (sig === 0x07064b50) {
      for (const [off, w, name] of [[0, 4, 'signature'], [4, 4, 'disk'], [8, 8, 'recordOffset'], [16, 4, 'disks']] as const) add(p + off, w, `zip64locator.${name}`);
    }
  }
  return fields;
}

function extraFields(bytes: Uint8Array, start: number, length: number, owner: string, add: (at: number, width: 1 | 2 | 4 | 8, label: string) => void) {
  for (let at = start; at + 4 <= start + length && at + 4 <= bytes.byteLength; ) {
    const id = u16(bytes, at);
    const size = u16(bytes, at + 2);
    const name = id === 0x0001 ? 'zip64' : `extra${id.toString(16)}`;
    add(at, 2, `${owner}.${name}.id`);
    add(at + 2, 2, `${owner}.${name}.length`);
    if (id === 0x0001) for (let v = 0; v + 8 <= size; v += 8) add(at + 4 + v, 8, `${owner}.zip64.value${v / 8}`);
    at += 4 + size;
  }
}

/** Argument widths of the pickle opcodes (Lib/pickletools.py) whose argument is a length, index or integer. */
const PICKLE_ARGS: Record<number, { name: string; width?: 1 | 2 | 4 | 8; data?: boolean; line?: number; fixed?: number }> = {
  0x80: { name: 'PROTO', width: 1 },
  0x95: { name: 'FRAME', width: 8 },
  0x4a: { name: 'BININT', width: 4 },
  0x4b: { name: 'BININT1', width: 1 },
  0x4d: { name: 'BININT2', width: 2 },
  0x8a: { name: 'LONG1', width: 1, data: true },
  0x8b: { name: 'LONG4', width: 4, data: true },
  0x47: { name: 'BINFLOAT', fixed: 8 },
  0x58: { name: 'BINUNICODE', width: 4, data: true },
  0x8c: { name: 'SHORT_BINUNICODE', width: 1, data: true },
  0x8d: { name: 'BINUNICODE8', width: 8, data: true },
  0x55: { name: 'SHORT_BINSTRING', width: 1, data: true },
  0x54: { name: 'BINSTRING', width: 4, data: true },
  0x43: { name: 'SHORT_BINBYTES', width: 1, data: true },
  0x42: { name: 'BINBYTES', width: 4, data: true },
  0x8e: { name: 'BINBYTES8', width: 8, data: true },
  0x96: { name: 'BYTEARRAY8', width: 8, data: true },
  0x68: { name: 'BINGET', width: 1 },
  0x6a: { name: 'LONG_BINGET', width: 4 },
  0x71: { name: 'BINPUT', width: 1 },
  0x72: { name: 'LONG_BINPUT', width: 4 },
  0x63: { name: 'GLOBAL', line: 2 },
};

/** Each opcode of a pickle and the integer argument it carries, as fields. */
export function pickleFields(bytes: Uint8Array, base = 0, prefix = 'pickle'): Field[] {
  const fields: Field[] = [];
  let p = 0;
  let count = 0;
  while (p < bytes.byteLength && count < 20_000) {
    const op = bytes[p]!;
    const spec = PICKLE_ARGS[op];
    const name = spec?.name ?? `0x${op.toString(16)}`;
    fields.push({ at: base + p, width: 1, label: `${prefix} op#${count} ${name}` });
    p++;
    count++;
    if (op === 0x2e) break; // STOP
    if (!spec) continue;
    if (spec.width) {
      if (p + spec.width > bytes.byteLength) break;
      fields.push({ at: base + p, width: spec.width, label: `${prefix} op#${count - 1} ${name} argument` });
      let arg = 0;
      for (let i = spec.width - 1; i >= 0; i--) arg = arg * 256 + bytes[p + i]!;
      p += spec.width;
      if (spec.data) p += arg;
    } else if (spec.fixed) p += spec.fixed;
    else if (spec.line) {
      for (let l = 0; l < spec.line; l++) {
        const end = bytes.indexOf(0x0a, p);
        if (end < 0) return fields;
        p = end + 1;
      }
    }
  }
  return fields;
}

/** Message types of the ONNX protobuf we walk into, by field number (onnx/onnx.proto). */
const ONNX_SCHEMA: Record<string, Record<number, string>> = {
  Model: { 7: 'Graph', 8: 'Opset', 14: 'StringEntry' },
  Graph: { 1: 'Node', 5: 'Tensor', 11: 'ValueInfo', 12: 'ValueInfo', 13: 'ValueInfo' },
  Node: { 5: 'Attribute' },
  Attribute: { 5: 'Tensor' },
  Tensor: { 13: 'StringEntry' },
  ValueInfo: { 2: 'Type' },
  Type: { 1: 'TensorType' },
  TensorType: { 2: 'Shape' },
  Shape: { 1: 'Dimension' },
  Opset: {},
  StringEntry: {},
  Dimension: {},
};

function varintAt(bytes: Uint8Array, p: number): { value: number; next: number } {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10 && p + i < bytes.byteLength; i++) {
    const b = bytes[p + i]!;
    value += (b & 0x7f) * scale;
    scale *= 128;
    if ((b & 0x80) === 0) return { value, next: p + i + 1 };
  }
  return { value: -1, next: bytes.byteLength };
}

/** The keys, varint values and length prefixes of an ONNX model, walked along the schema. */
export function protobufFields(bytes: Uint8Array, start = 0, end = bytes.byteLength, type = 'Model', path = 'model', out: Field[] = []): Field[] {
  let p = start;
  const counts = new Map<number, number>();
  while (p < end && out.length < 50_000) {
    const key = varintAt(bytes, p);
    if (key.value < 0) break;
    const field = Math.floor(key.value / 8);
    const wire = key.value % 8;
    const n = counts.get(field) ?? 0;
    counts.set(field, n + 1);
    const label = `${path}.${field}[${n}]`;
    out.push({ at: p, width: 'varint', label: `${label} key` });
    p = key.next;
    if (wire === 0) {
      out.push({ at: p, width: 'varint', label: `${label} value` });
      p = varintAt(bytes, p).next;
    } else if (wire === 2) {
      const length = varintAt(bytes, p);
      out.push({ at: p, width: 'varint', label: `${label} length` });
      p = length.next;
      const child = ONNX_SCHEMA[type]?.[field];
      if (child && length.value >= 0) protobufFields(bytes, p, Math.min(p + length.value, end), child, `${path}.${child.toLowerCase()}${n}`, out);
      p += Math.max(length.value, 0);
    } else if (wire === 1) p += 8;
    else if (wire === 5) p += 4;
    else break;
  }
  return out;
}

/** The header length and every number in the JSON header of a safetensors file. */
export function safetensorsFields(bytes: Uint8Array): Field[] {
  const fields: Field[] = [{ at: 0, width: 8, label: 'header length' }];
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
  // Numbers in data_offsets and shapes, labelled with the tensor they belong to.
  let tensor = '';
  for (let i = 0; i < header.length; i++) {
    const c = header.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const close = header.indexOf('"', i + 1);
      const name = header.slice(i + 1, close);
      if (header[close + 1] === ':' && header[close + 2] === '{') tensor = name;
      i = close;
    } else if (c >= 0x30 && c <= 0x39) {
      let j = i;
      while (j < header.length && /[0-9]/.test(header[j]!)) j++;
      fields.push({ at: 8 + Buffer.byteLength(header.slice(0, i)), width: 'text', label: `tensor ${tensor} number` });
      i = j - 1;
    }
  }
  return fields;
}

/** A stored (uncompressed) zip of `entries`, as torch writes them (64-byte aligned data, no ZIP64). */
export function storedZip(entries: ReadonlyArray<readonly [string, Uint8Array]>): Uint8Array {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const [name, data] of entries) {
    const nameBytes = Buffer.from(name, 'utf8');
    const headerEnd = offset + 30 + nameBytes.byteLength + 4;
    const padding = (64 - (headerEnd % 64)) % 64;
    const crc = crc32(data) >>> 0;
    const local = Buffer.alloc(30 + nameBytes.byteLength + 4 + padding);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x800, 6);
    local.writeUInt16LE(0, 8);
    local.writeUInt16LE(0x21, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.byteLength, 18);
    local.writeUInt32LE(data.byteLength, 22);
    local.writeUInt16LE(nameBytes.byteLength, 26);
    local.writeUInt16LE(4 + padding, 28);
    nameBytes.copy(local, 30);
    local.writeUInt16LE(0x4246, 30 + nameBytes.byteLength);
    local.writeUInt16LE(padding, 32 + nameBytes.byteLength);
    const c = Buffer.alloc(46 + nameBytes.byteLength);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(0x800, 8);
    c.writeUInt16LE(0x21, 14);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(data.byteLength, 20);
    c.writeUInt32LE(data.byteLength, 24);
    c.writeUInt16LE(nameBytes.byteLength, 28);
    c.writeUInt32LE(offset, 42);
    nameBytes.copy(c, 46);
    central.push(c);
    parts.push(local, data);
    offset += local.byteLength + data.byteLength;
  }
  const directorySize = central.reduce((n, c) => n + c.byteLength, 0);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(directorySize, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, ...central, eocd]);
}

/** The stored entries of a zip our own writer made (read through its central directory). */
export function zipEntries(bytes: Uint8Array): Array<[string, Uint8Array]> {
  let eocd = bytes.byteLength - 22;
  while (eocd >= 0 && u32(bytes, eocd) !== 0x06054b50) eocd--;
  const count = u16(bytes, eocd + 10);
  let at = u32(bytes, eocd + 16);
  // A ZIP64 archive: the locator before the EOCD points at the ZIP64 record holding the offset.
  if (eocd >= 20 && u32(bytes, eocd - 20) === 0x07064b50) {
    const record = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(eocd - 12, true));
    at = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(record + 48, true));
  }
  const out: Array<[string, Uint8Array]> = [];
  for (let i = 0; i < count; i++) {
    const nameLength = u16(bytes, at + 28);
    const extraLength = u16(bytes, at + 30);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    let size = u32(bytes, at + 24);
    let local = u32(bytes, at + 42);
    if (size === 0xffffffff || local === 0xffffffff) {
      const view = new DataView(bytes.buffer, bytes.byteOffset);
      const extra = at + 46 + nameLength;
      for (let e = extra; e + 4 <= extra + extraLength; e += 4 + u16(bytes, e + 2)) {
        if (u16(bytes, e) !== 0x0001) continue;
        let z = e + 4;
        if (size === 0xffffffff) {
          size = Number(view.getBigUint64(z, true));
          z += 16; // size, then compressed size (saturated together: entries are stored)
        }
        if (local === 0xffffffff) local = Number(view.getBigUint64(z, true));
      }
    }
    const dataOffset = local + 30 + u16(bytes, local + 26) + u16(bytes, local + 28);
    out.push([name, bytes.slice(dataOffset, dataOffset + size)]);
    at += 46 + nameLength + extraLength + u16(bytes, at + 32);
  }
  return out;
}
