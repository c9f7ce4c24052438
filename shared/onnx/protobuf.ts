/**
 * A minimal protobuf encoder for the ONNX messages we write. A generated protobuf library would need
 * the whole ModelProto in memory; we stream multi-GB initializers straight from the checkpoint, which
 * needs sizes computed ahead and raw bytes appended by hand. Encoding per
 * https://protobuf.dev/programming-guides/encoding/ (varints, wire types 0, 2 and 5).
 */

const enum WireType {
  Varint = 0,
  LengthDelimited = 2,
  Fixed32 = 5,
}

/** Bytes needed for `value` as a varint (non-negative, or negative as 10-byte two's complement). */
export function varintSize(value: number): number {
  if (value < 0) return 10;
  let size = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

function encodeVarint(value: number, out: number[]): void {
  if (value < 0) {
    let v = BigInt.asUintN(64, BigInt(value));
    for (let i = 0; i < 9; i++) {
      out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    out.push(Number(v));
    return;
  }
  while (value >= 0x80) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
}

const tag = (field: number, wire: WireType) => field * 8 + wire;

/** Builds one message in memory. Use for everything but initializer payloads. */
export class ProtoMessage {
  private readonly parts: Uint8Array[] = [];
  private pending: number[] = [];
  private length = 0;

  get byteLength(): number {
    return this.length + this.pending.length;
  }

  varint(field: number, value: number): this {
    encodeVarint(tag(field, WireType.Varint), this.pending);
    encodeVarint(value, this.pending);
    return this;
  }

  float(field: number, value: number): this {
    encodeVarint(tag(field, WireType.Fixed32), this.pending);
    const bytes = new Uint8Array(new Float32Array([value]).buffer);
    this.pending.push(...bytes);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  bytes(field: number, value: Uint8Array): this {
    this.lengthPrefix(field, value.byteLength);
    this.flush();
    this.parts.push(value);
    this.length += value.byteLength;
    return this;
  }

  message(field: number, value: ProtoMessage): this {
    return this.bytes(field, value.finish());
  }

  /** Tag and length of a length-delimited field whose payload the caller writes itself. */
  lengthPrefix(field: number, length: number): this {
    encodeVarint(tag(field, WireType.LengthDelimited), this.pending);
    encodeVarint(length, this.pending);
    return this;
  }

  finish(): Uint8Array {
    this.flush();
    if (this.parts.length === 1) return this.parts[0]!;
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const part of this.parts) {
      out.set(part, at);
      at += part.byteLength;
    }
    this.parts.splice(0, this.parts.length, out);
    return out;
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    this.parts.push(Uint8Array.from(this.pending));
    this.length += this.pending.length;
    this.pending = [];
  }
}
