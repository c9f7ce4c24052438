import { open, type FileHandle } from 'node:fs/promises';
import { ModelField, GraphField, TensorField, type Dim } from './model.ts';

/**
 * Reads an ONNX model's structure (not its weights) for our own checks: onnxruntime accepts models
 * that break the spec (unsorted nodes, reassigned names), so validation needs to see the graph.
 * Decodes the protobuf wire format directly; initializer payloads are skipped, never read.
 */

export interface ModelSummary {
  readonly irVersion: number;
  readonly opsets: ReadonlyMap<string, number>;
  readonly producerName: string;
  readonly producerVersion: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly graph: GraphSummary;
}

export interface GraphSummary {
  readonly name: string;
  readonly nodes: readonly { opType: string; name: string; domain: string; inputs: string[]; outputs: string[] }[];
  readonly inputs: readonly ValueSummary[];
  readonly outputs: readonly ValueSummary[];
  readonly initializers: readonly { name: string; dataType: number; dims: number[]; byteLength: number; external: boolean }[];
}

export interface ValueSummary {
  readonly name: string;
  readonly elemType: number;
  readonly shape: readonly Dim[];
}

class Fields {
  private pos = 0;
  private readonly view: DataView;
  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Each field as (number, value): varints as numbers, length-delimited as a sub-array. */
  *[Symbol.iterator](): Generator<[number, number | Uint8Array]> {
    while (this.pos < this.bytes.byteLength) {
      const key = this.varint();
      const field = Math.floor(key / 8);
      switch (key & 7) {
        case 0:
          yield [field, this.varint()];
          break;
        case 1:
          this.pos += 8;
          break;
        case 2: {
          const length = this.varint();
          if (this.pos + length > this.bytes.byteLength) throw new Error(`field ${field} runs past its message`);
          this.pos += length;
          yield [field, this.bytes.subarray(this.pos - length, this.pos)];
          break;
        }
        case 5:
          this.pos += 4;
          break;
        default:
          throw new Error(`unsupported wire type ${key & 7} at byte ${this.pos}`);
      }
    }
  }

  private varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.bytes.byteLength) throw new Error('truncated varint');
      const b = this.view.getUint8(this.pos++);
      if (i < 8) result += (b & 0x7f) * scale;
      scale *= 128;
      if ((b & 0x80) === 0) return result;
    }
    throw new Error('varint longer than 10 bytes');
  }
}

const text = (value: number | Uint8Array) => (typeof value === 'number' ? String(value) : new TextDecoder().decode(value));
const bytesOf = (value: number | Uint8Array) => (typeof value === 'number' ? new Uint8Array() : value);

/**
 * Reads the model's structure from a file without loading its weights: top-level fields and graph
 * fields are walked with positional reads, and initializer payloads (raw_data) are skipped by length.
 */
export async function readModelSummary(path: string): Promise<ModelSummary> {
  const file = await open(path, 'r');
  try {
    const scanner = new FileScanner(file, (await file.stat()).size);
    let irVersion = 0;
    let producerName = '';
    let producerVersion = '';
    const opsets = new Map<string, number>();
    const metadata: Record<string, string> = {};
    let graph: GraphSummary | undefined;
    for await (const f of scanner.fields(0, scanner.size)) {
      if (f.field === ModelField.graph && f.length !== undefined) {
        graph = await readGraph(scanner, f.offset, f.offset + f.length);
        continue;
      }
      const value = f.length === undefined ? f.value! : await scanner.bytes(f.offset, f.length);
      if (f.field === ModelField.irVersion) irVersion = value as number;
      else if (f.field === ModelField.producerName) producerName = text(value);
      else if (f.field === ModelField.producerVersion) producerVersion = text(value);
      else if (f.field === ModelField.opsetImport) {
        let domain = '';
        let version = 0;
        for (const [field, v] of new Fields(bytesOf(value))) {
          if (field === 1) domain = text(v);
          else if (field === 2) version = v as number;
        }
        opsets.set(domain, version);
      } else if (f.field === ModelField.metadataProps) {
        const [key, val] = stringEntry(bytesOf(value));
        metadata[key] = val;
      }
    }
    if (!graph) throw new Error('model has no graph');
    return { irVersion, opsets, producerName, producerVersion, metadata, graph };
  } finally {
    await file.close();
  }
}

async function readGraph(scanner: FileScanner, start: number, end: number): Promise<GraphSummary> {
  const nodes: GraphSummary['nodes'][number][] = [];
  const inputs: ValueSummary[] = [];
  const outputs: ValueSummary[] = [];
  const initializers: GraphSummary['initializers'][number][] = [];
  let name = '';
  for await (const f of scanner.fields(start, end)) {
    if (f.length === undefined) continue;
    if (f.field === GraphField.initializer) {
      initializers.push(await readTensor(scanner, f.offset, f.offset + f.length));
      continue;
    }
    const value = await scanner.bytes(f.offset, f.length);
    if (f.field === GraphField.node) nodes.push(readNode(value));
    else if (f.field === GraphField.name) name = text(value);
    else if (f.field === GraphField.input) inputs.push(readValueInfo(value));
    else if (f.field === GraphField.output) outputs.push(readValueInfo(value));
  }
  return { name, nodes, inputs, outputs, initializers };
}

async function readTensor(scanner: FileScanner, start: number, end: number) {
  const tensor = { name: '', dataType: 0, dims: [] as number[], byteLength: 0, external: false };
  for await (const f of scanner.fields(start, end)) {
    if (f.field === TensorField.rawData) {
      tensor.byteLength = f.length ?? 0;
      continue;
    }
    const value = f.length === undefined ? f.value! : await scanner.bytes(f.offset, f.length);
    if (f.field === TensorField.dims) tensor.dims.push(value as number);
    else if (f.field === TensorField.dataType) tensor.dataType = value as number;
    else if (f.field === TensorField.name) tensor.name = text(value);
    else if (f.field === TensorField.dataLocation) tensor.external = value === 1;
    else if (f.field === TensorField.externalData) {
      const [key, val] = stringEntry(bytesOf(value));
      if (key === 'length') tensor.byteLength = Number(val);
    }
  }
  return tensor;
}

/** Walks protobuf fields of a file region with positional reads through a 64 KiB window. */
class FileScanner {
  private window: Uint8Array = new Uint8Array(0);
  private windowStart = 0;

  constructor(
    private readonly file: FileHandle,
    readonly size: number,
  ) {}

  async *fields(start: number, end: number): AsyncGenerator<{ field: number; value?: number; offset: number; length?: number }> {
    let pos = start;
    while (pos < end) {
      const key = await this.varint(pos);
      pos = key.next;
      const field = Math.floor(key.value / 8);
      const wire = key.value & 7;
      if (wire === 0) {
        const v = await this.varint(pos);
        pos = v.next;
        yield { field, value: v.value, offset: pos };
      } else if (wire === 2) {
        const length = await this.varint(pos);
        pos = length.next;
        if (pos + length.value > end) throw new Error(`field ${field} runs past its message`);
        yield { field, offset: pos, length: length.value };
        pos += length.value;
      } else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else throw new Error(`unsupported wire type ${wire} at byte ${pos}`);
    }
  }

  async bytes(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    const { bytesRead } = await this.file.read(out, 0, length, offset);
    if (bytesRead !== length) throw new Error(`file ends inside a field at ${offset}`);
    return out;
  }

  private async varint(pos: number): Promise<{ value: number; next: number }> {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = await this.byteAt(pos + i);
      if (i < 8) result += (b & 0x7f) * scale;
      scale *= 128;
      if ((b & 0x80) === 0) return { value: result, next: pos + i + 1 };
    }
    throw new Error('varint longer than 10 bytes');
  }

  private async byteAt(pos: number): Promise<number> {
    if (pos < this.windowStart || pos >= this.windowStart + this.window.byteLength) {
      if (pos >= this.size) throw new Error('truncated varint');
      this.window = await this.bytes(pos, Math.min(64 * 1024, this.size - pos));
      this.windowStart = pos;
    }
    return this.window[pos - this.windowStart]!;
  }
}

function readNode(bytes: Uint8Array) {
  const node = { opType: '', name: '', domain: '', inputs: [] as string[], outputs: [] as string[] };
  for (const [field, value] of new Fields(bytes)) {
    if (field === 1) node.inputs.push(text(value));
    else if (field === 2) node.outputs.push(text(value));
    else if (field === 3) node.name = text(value);
    else if (field === 4) node.opType = text(value);
    else if (field === 7) node.domain = text(value);
  }
  return node;
}

function readValueInfo(bytes: Uint8Array): ValueSummary {
  let name = '';
  let elemType = 0;
  const shape: Dim[] = [];
  for (const [field, value] of new Fields(bytes)) {
    if (field === 1) name = text(value);
    if (field !== 2) continue;
    for (const [typeField, tensorType] of new Fields(bytesOf(value))) {
      if (typeField !== 1) continue;
      for (const [f, v] of new Fields(bytesOf(tensorType))) {
        if (f === 1) elemType = v as number;
        if (f !== 2) continue;
        for (const [, dim] of new Fields(bytesOf(v))) {
          let d: Dim = '?';
          for (const [df, dv] of new Fields(bytesOf(dim))) d = df === 1 ? (dv as number) : df === 2 ? text(dv) : d;
          shape.push(d);
        }
      }
    }
  }
  return { name, elemType, shape };
}

function stringEntry(bytes: Uint8Array): [string, string] {
  let key = '';
  let value = '';
  for (const [field, v] of new Fields(bytes)) {
    if (field === 1) key = text(v);
    else if (field === 2) value = text(v);
  }
  return [key, value];
}
