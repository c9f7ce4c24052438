import { ModelField, GraphField, TensorField, type Dim } from './model.ts';

/**
 * Reads an ONNX model's structure (not its weights) for our own checks: onnxruntime accepts models
 * that break the spec (unsorted nodes, reassigned names), so validation needs to see the graph.
 * Decodes the protobuf wire format directly; initializer payloads are skipped, never copied.
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

export function readModelSummary(bytes: Uint8Array): ModelSummary {
  let irVersion = 0;
  let producerName = '';
  let producerVersion = '';
  const opsets = new Map<string, number>();
  const metadata: Record<string, string> = {};
  let graph: GraphSummary | undefined;
  for (const [field, value] of new Fields(bytes)) {
    if (field === ModelField.irVersion) irVersion = value as number;
    else if (field === ModelField.producerName) producerName = text(value);
    else if (field === ModelField.producerVersion) producerVersion = text(value);
    else if (field === ModelField.opsetImport) {
      let domain = '';
      let version = 0;
      for (const [f, v] of new Fields(bytesOf(value))) {
        if (f === 1) domain = text(v);
        else if (f === 2) version = v as number;
      }
      opsets.set(domain, version);
    } else if (field === ModelField.metadataProps) {
      const [key, val] = stringEntry(bytesOf(value));
      metadata[key] = val;
    } else if (field === ModelField.graph) graph = readGraph(bytesOf(value));
  }
  if (!graph) throw new Error('model has no graph');
  return { irVersion, opsets, producerName, producerVersion, metadata, graph };
}

function readGraph(bytes: Uint8Array): GraphSummary {
  const nodes: GraphSummary['nodes'][number][] = [];
  const inputs: ValueSummary[] = [];
  const outputs: ValueSummary[] = [];
  const initializers: GraphSummary['initializers'][number][] = [];
  let name = '';
  for (const [field, value] of new Fields(bytes)) {
    if (field === GraphField.node) nodes.push(readNode(bytesOf(value)));
    else if (field === GraphField.name) name = text(value);
    else if (field === GraphField.input) inputs.push(readValueInfo(bytesOf(value)));
    else if (field === GraphField.output) outputs.push(readValueInfo(bytesOf(value)));
    else if (field === GraphField.initializer) initializers.push(readTensor(bytesOf(value)));
  }
  return { name, nodes, inputs, outputs, initializers };
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

function readTensor(bytes: Uint8Array) {
  const tensor = { name: '', dataType: 0, dims: [] as number[], byteLength: 0, external: false };
  for (const [field, value] of new Fields(bytes)) {
    if (field === TensorField.dims) tensor.dims.push(value as number);
    else if (field === TensorField.dataType) tensor.dataType = value as number;
    else if (field === TensorField.name) tensor.name = text(value);
    else if (field === TensorField.rawData) tensor.byteLength = bytesOf(value).byteLength;
    else if (field === TensorField.dataLocation) tensor.external = value === 1;
    else if (field === TensorField.externalData) {
      const [key, val] = stringEntry(bytesOf(value));
      if (key === 'length') tensor.byteLength = Number(val);
    }
  }
  return tensor;
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
