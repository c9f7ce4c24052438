import { open, stat, type FileHandle } from 'node:fs/promises';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { ModelField, GraphField, TensorField, type Dim } from './model.ts';

/**
 * Reads an ONNX model's structure (not its weights) for our own checks: onnxruntime accepts models
 * that break the spec (unsorted nodes, reassigned names), so validation needs to see the graph.
 * Decodes the protobuf wire format (https://protobuf.dev/programming-guides/encoding/) directly
 * from the file with positional reads; initializer payloads and every field it does not report are
 * skipped by length, never read.
 *
 * The file is content from outside (an uploaded `.onnx`), so every fault in it is INVALID_MODEL
 * with the byte where it was found: a truncated varint, a length past the end of its message, a
 * wire type other than the field's, a group, a name that is not UTF-8. Reading is bounded by the
 * file, not by what it claims: no read is longer than the bytes left in the enclosing message, no
 * string longer than MAX_STRING_BYTES is decoded, the summary holds at most MAX_ITEMS nodes, values,
 * names and dims, and there is no recursion: subgraphs (If/Loop bodies) live in node attributes,
 * which are skipped, so the nesting depth is this reader's own, whatever the file holds.
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
  readonly initializers: readonly InitializerSummary[];
}

export interface InitializerSummary {
  readonly name: string;
  readonly dataType: number;
  readonly dims: number[];
  readonly byteLength: number;
  readonly external: boolean;
  /** Where an external initializer's bytes are: the file (relative to the model's folder) and the offset in it ('' and 0 when not given). */
  readonly location?: string;
  readonly offset?: number;
}

export interface ValueSummary {
  readonly name: string;
  readonly elemType: number;
  readonly shape: readonly Dim[];
}

/** The longest string (name, metadata value) decoded; a JS string cannot hold more than ~512 MiB anyway. */
export const MAX_STRING_BYTES = 16 * 1024 * 1024;
/** Nodes, node inputs and outputs, values, initializers, dims, opsets and metadata entries, all together. */
export const MAX_ITEMS = 1 << 21;
const WINDOW_BYTES = 64 * 1024;

const enum Wire {
  Varint = 0,
  Fixed64 = 1,
  Len = 2,
  Fixed32 = 5,
}

/** One field of a message: its number and wire type, and where its value lies in the file. */
interface Field {
  readonly field: number;
  readonly wire: Wire;
  /** The varint value (wire type 0). */
  readonly value: number;
  /** The payload's first byte (wire types 1, 2, 5). */
  readonly offset: number;
  readonly length: number;
  /** Where the field's tag starts, for messages. */
  readonly at: number;
}

/** A message's byte range in the file. */
interface Region {
  readonly start: number;
  readonly end: number;
}

const invalid = (message: string) => new HeimdallError(ErrorCodes.INVALID_MODEL, `not a valid ONNX model: ${message}`);
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reads the model's structure from a file without loading its weights: top-level fields and graph
 * fields are walked with positional reads, and initializer payloads (raw_data) are skipped by length.
 * INVALID_MODEL for anything that is not a well-formed ModelProto with a graph; NOT_A_FILE for a path
 * that is not a regular file.
 */
export async function readModelSummary(path: string): Promise<ModelSummary> {
  const info = await stat(path);
  // A FIFO would block the read forever; a directory is no model.
  if (!info.isFile()) throw new HeimdallError(ErrorCodes.NOT_A_FILE, `${path} is not a regular file`);
  const file = await open(path, 'r');
  try {
    const scanner = new FileScanner(file, (await file.stat()).size);
    let irVersion = 0;
    let producerName = '';
    let producerVersion = '';
    const opsets = new Map<string, number>();
    const metadata = new Map<string, string>();
    let graph: GraphSummary | undefined;
    for await (const f of scanner.fields({ start: 0, end: scanner.size }, 'ModelProto')) {
      switch (f.field) {
        case ModelField.irVersion:
          irVersion = scanner.int(f, 'ModelProto.ir_version');
          break;
        case ModelField.producerName:
          producerName = await scanner.string(f, 'ModelProto.producer_name');
          break;
        case ModelField.producerVersion:
          producerVersion = await scanner.string(f, 'ModelProto.producer_version');
          break;
        case ModelField.graph:
          graph = await readGraph(scanner, scanner.message(f, 'ModelProto.graph'));
          break;
        case ModelField.opsetImport: {
          scanner.budget.take('opset imports');
          let domain = '';
          let version = 0;
          for await (const g of scanner.fields(scanner.message(f, 'ModelProto.opset_import'), 'OperatorSetIdProto')) {
            if (g.field === 1) domain = await scanner.string(g, 'OperatorSetIdProto.domain');
            else if (g.field === 2) version = scanner.int(g, 'OperatorSetIdProto.version');
          }
          opsets.set(domain, version);
          break;
        }
        case ModelField.metadataProps: {
          scanner.budget.take('metadata entries');
          const [key, value] = await stringEntry(scanner, scanner.message(f, 'ModelProto.metadata_props'));
          metadata.set(key, value);
          break;
        }
      }
    }
    if (!graph) throw invalid(scanner.size === 0 ? 'the file is empty' : 'the model has no graph');
    // fromEntries: a key such as `__proto__` is an entry like any other, never the object's prototype.
    return { irVersion, opsets, producerName, producerVersion, metadata: Object.fromEntries(metadata), graph };
  } finally {
    await file.close();
  }
}

async function readGraph(scanner: FileScanner, region: Region): Promise<GraphSummary> {
  const nodes: GraphSummary['nodes'][number][] = [];
  const inputs: ValueSummary[] = [];
  const outputs: ValueSummary[] = [];
  const initializers: GraphSummary['initializers'][number][] = [];
  let name = '';
  for await (const f of scanner.fields(region, 'GraphProto')) {
    switch (f.field) {
      case GraphField.node:
        scanner.budget.take('nodes');
        nodes.push(await readNode(scanner, scanner.message(f, 'GraphProto.node')));
        break;
      case GraphField.name:
        name = await scanner.string(f, 'GraphProto.name');
        break;
      case GraphField.initializer:
        scanner.budget.take('initializers');
        initializers.push(await readTensor(scanner, scanner.message(f, 'GraphProto.initializer')));
        break;
      case GraphField.input:
        scanner.budget.take('graph inputs');
        inputs.push(await readValueInfo(scanner, scanner.message(f, 'GraphProto.input')));
        break;
      case GraphField.output:
        scanner.budget.take('graph outputs');
        outputs.push(await readValueInfo(scanner, scanner.message(f, 'GraphProto.output')));
        break;
    }
  }
  return { name, nodes, inputs, outputs, initializers };
}

// NodeProto: input 1, output 2, name 3, op_type 4, attribute 5 (skipped: attribute tensors and subgraphs), domain 7.
async function readNode(scanner: FileScanner, region: Region) {
  const node = { opType: '', name: '', domain: '', inputs: [] as string[], outputs: [] as string[] };
  for await (const f of scanner.fields(region, 'NodeProto')) {
    if (f.field === 1) {
      scanner.budget.take('node inputs');
      node.inputs.push(await scanner.string(f, 'NodeProto.input'));
    } else if (f.field === 2) {
      scanner.budget.take('node outputs');
      node.outputs.push(await scanner.string(f, 'NodeProto.output'));
    } else if (f.field === 3) node.name = await scanner.string(f, 'NodeProto.name');
    else if (f.field === 4) node.opType = await scanner.string(f, 'NodeProto.op_type');
    else if (f.field === 7) node.domain = await scanner.string(f, 'NodeProto.domain');
  }
  return node;
}

async function readTensor(scanner: FileScanner, region: Region) {
  const tensor: { -readonly [K in keyof InitializerSummary]: InitializerSummary[K] } = { name: '', dataType: 0, dims: [], byteLength: 0, external: false };
  for await (const f of scanner.fields(region, 'TensorProto')) {
    switch (f.field) {
      case TensorField.rawData:
        // Skipped by length: the weights are never read.
        tensor.byteLength = f.length;
        scanner.message(f, 'TensorProto.raw_data');
        break;
      case TensorField.dims:
        // A repeated int64: one varint per field, or packed into one length-delimited field.
        for (const dim of await scanner.ints(f, 'TensorProto.dims')) tensor.dims.push(dim);
        break;
      case TensorField.dataType:
        tensor.dataType = scanner.int(f, 'TensorProto.data_type');
        break;
      case TensorField.name:
        tensor.name = await scanner.string(f, 'TensorProto.name');
        break;
      case TensorField.dataLocation:
        tensor.external = scanner.int(f, 'TensorProto.data_location') === 1;
        break;
      case TensorField.externalData: {
        scanner.budget.take('external data entries');
        const [key, value] = await stringEntry(scanner, scanner.message(f, 'TensorProto.external_data'));
        if (key === 'location') tensor.location = value;
        if (key !== 'length' && key !== 'offset') break;
        const count = Number(value);
        if (!/^\d+$/.test(value) || !Number.isSafeInteger(count)) throw invalid(`initializer ${JSON.stringify(tensor.name)} gives external data ${key} ${JSON.stringify(value)}, not a byte count`);
        if (key === 'length') tensor.byteLength = count;
        else tensor.offset = count;
        break;
      }
    }
  }
  return tensor;
}

// ValueInfoProto{name 1, type 2} > TypeProto{tensor_type 1} > Tensor{elem_type 1, shape 2} > TensorShapeProto{dim 1} > Dimension{dim_value 1, dim_param 2}
async function readValueInfo(scanner: FileScanner, region: Region): Promise<ValueSummary> {
  let name = '';
  let elemType = 0;
  const shape: Dim[] = [];
  for await (const f of scanner.fields(region, 'ValueInfoProto')) {
    if (f.field === 1) name = await scanner.string(f, 'ValueInfoProto.name');
    if (f.field !== 2) continue;
    for await (const t of scanner.fields(scanner.message(f, 'ValueInfoProto.type'), 'TypeProto')) {
      // Other types (sequence, map, optional) are reported as element type 0 with no shape.
      if (t.field !== 1) continue;
      for await (const v of scanner.fields(scanner.message(t, 'TypeProto.tensor_type'), 'TypeProto.Tensor')) {
        if (v.field === 1) elemType = scanner.int(v, 'TypeProto.Tensor.elem_type');
        if (v.field !== 2) continue;
        for await (const d of scanner.fields(scanner.message(v, 'TypeProto.Tensor.shape'), 'TensorShapeProto')) {
          if (d.field !== 1) continue;
          scanner.budget.take('shape dims');
          let dim: Dim = '?';
          for await (const x of scanner.fields(scanner.message(d, 'TensorShapeProto.dim'), 'Dimension')) {
            if (x.field === 1) dim = scanner.int(x, 'Dimension.dim_value');
            else if (x.field === 2) dim = await scanner.string(x, 'Dimension.dim_param');
          }
          shape.push(dim);
        }
      }
    }
  }
  return { name, elemType, shape };
}

// StringStringEntryProto: key 1, value 2.
async function stringEntry(scanner: FileScanner, region: Region): Promise<[string, string]> {
  let key = '';
  let value = '';
  for await (const f of scanner.fields(region, 'StringStringEntryProto')) {
    if (f.field === 1) key = await scanner.string(f, 'StringStringEntryProto.key');
    else if (f.field === 2) value = await scanner.string(f, 'StringStringEntryProto.value');
  }
  return [key, value];
}

/** How many items the summary may still hold (MAX_ITEMS in all): its memory is bounded whatever the file says. */
class Budget {
  private left = MAX_ITEMS;
  take(what: string): void {
    if (--this.left < 0) throw invalid(`more than ${MAX_ITEMS} nodes, values and names in all (at ${what})`);
  }
}

/**
 * Walks protobuf fields of file regions with positional reads through a 64 KiB window; every length
 * is checked against the message that holds it before anything is read or skipped.
 */
class FileScanner {
  readonly budget = new Budget();
  private window: Uint8Array = new Uint8Array(0);
  private windowStart = 0;

  constructor(
    private readonly file: FileHandle,
    readonly size: number,
  ) {}

  async *fields(region: Region, message: string): AsyncGenerator<Field> {
    let pos = region.start;
    while (pos < region.end) {
      const at = pos;
      const key = await this.varint(pos, region.end, message);
      pos = key.next;
      const field = Math.floor(key.value / 8);
      const wire = key.value % 8;
      if (field < 1 || field > 0x1fffffff) throw invalid(`${message} has a field numbered ${field} at byte ${at}`);
      let value = 0;
      let offset = pos;
      let length = 0;
      if (wire === Wire.Varint) {
        const v = await this.varint(pos, region.end, `${message} field ${field}`);
        value = v.value;
        pos = offset = v.next;
      } else if (wire === Wire.Len) {
        const v = await this.varint(pos, region.end, `${message} field ${field} length`);
        offset = v.next;
        length = v.value;
      } else if (wire === Wire.Fixed64) length = 8;
      else if (wire === Wire.Fixed32) length = 4;
      else throw invalid(`${message} field ${field} at byte ${at} has wire type ${wire}${wire === 3 || wire === 4 ? ' (a group, which ONNX never uses)' : ''}`);
      if (length < 0 || offset + length > region.end) {
        throw invalid(`${message} field ${field} at byte ${at} claims ${length} bytes, past the end of its ${region.end === this.size ? 'file' : 'message'} (byte ${region.end})`);
      }
      if (wire !== Wire.Varint) pos = offset + length;
      yield { field, wire: wire as Wire, value, offset, length, at };
    }
  }

  /** An integer field (int32, int64, enum): wire type 0. */
  int(f: Field, name: string): number {
    this.expect(f, Wire.Varint, name);
    return f.value;
  }

  /** A repeated integer field, packed (one length-delimited field) or not (one varint). */
  async ints(f: Field, name: string): Promise<number[]> {
    if (f.wire !== Wire.Len) return [this.int(f, name)];
    const values: number[] = [];
    const end = f.offset + f.length;
    for (let pos = f.offset; pos < end; ) {
      this.budget.take(name);
      const v = await this.varint(pos, end, name);
      values.push(v.value);
      pos = v.next;
    }
    return values;
  }

  /** The region of an embedded message (or bytes) field: wire type 2. */
  message(f: Field, name: string): Region {
    this.expect(f, Wire.Len, name);
    return { start: f.offset, end: f.offset + f.length };
  }

  /** A string field: wire type 2, valid UTF-8, at most MAX_STRING_BYTES. */
  async string(f: Field, name: string): Promise<string> {
    this.expect(f, Wire.Len, name);
    if (f.length > MAX_STRING_BYTES) throw invalid(`${name} at byte ${f.at} is ${f.length} bytes long, more than the ${MAX_STRING_BYTES} a name may have`);
    const bytes = await this.read(f.offset, f.length);
    try {
      return utf8.decode(bytes);
    } catch {
      throw invalid(`${name} at byte ${f.at} is not valid UTF-8`);
    }
  }

  private expect(f: Field, wire: Wire, name: string): void {
    if (f.wire !== wire) throw invalid(`${name} at byte ${f.at} has wire type ${f.wire}, expected ${wire}`);
  }

  /** `length` bytes at `offset`, which callers have checked lie inside the file. */
  private async read(offset: number, length: number): Promise<Uint8Array> {
    if (!this.covers(offset, length) && length <= WINDOW_BYTES) await this.fill(offset);
    if (this.covers(offset, length)) return this.window.slice(offset - this.windowStart, offset - this.windowStart + length);
    const out = new Uint8Array(length);
    const { bytesRead } = await this.file.read(out, 0, length, offset);
    if (bytesRead !== length) throw invalid(`the file ends at byte ${offset + bytesRead}, inside a field that should end at byte ${offset + length} (was it truncated while being read?)`);
    return out;
  }

  /**
   * A varint at `pos` that must end before `end`. int64 fields are two's complement in 10 bytes when
   * negative; values past 2^53 lose precision, as any number in JavaScript does.
   */
  private async varint(pos: number, end: number, what: string): Promise<{ value: number; next: number }> {
    const available = Math.min(10, end - pos);
    if (!this.covers(pos, available)) await this.fill(pos);
    const base = pos - this.windowStart;
    const n = Math.min(available, this.window.byteLength - base);
    let value = 0;
    let scale = 1;
    for (let i = 0; i < n; i++) {
      const b = this.window[base + i]!;
      if (i < 7) {
        value += (b & 0x7f) * scale;
        scale *= 128;
      }
      if ((b & 0x80) === 0) return { value: i < 7 ? value : this.wide(base, i + 1), next: pos + i + 1 };
    }
    if (n === 10) throw invalid(`${what}: a varint longer than 10 bytes at byte ${pos}`);
    throw invalid(`${what}: truncated varint at byte ${pos} (its ${end === this.size ? 'file' : 'message'} ends at byte ${end})`);
  }

  /** A varint of 8 to 10 bytes, as a signed 64-bit integer. */
  private wide(base: number, bytes: number): number {
    let v = 0n;
    for (let i = bytes - 1; i >= 0; i--) v = (v << 7n) | BigInt(this.window[base + i]! & 0x7f);
    return Number(BigInt.asIntN(64, v));
  }

  private covers(pos: number, length: number): boolean {
    return pos >= this.windowStart && pos + length <= this.windowStart + this.window.byteLength;
  }

  private async fill(pos: number): Promise<void> {
    const length = Math.max(0, Math.min(WINDOW_BYTES, this.size - pos));
    const window = new Uint8Array(length);
    const { bytesRead } = await this.file.read(window, 0, length, pos);
    this.window = window.subarray(0, bytesRead);
    this.windowStart = pos;
  }
}
