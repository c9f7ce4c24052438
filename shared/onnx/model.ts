import { ProtoMessage, varintSize } from './protobuf.ts';

/**
 * The ONNX data model we emit, with field numbers from onnx/onnx.proto (IR version 7–9).
 * Only what the exporter needs: no sparse tensors, no subgraphs, no functions.
 */

/** `producer_name` of the models our exporter writes (shared/models/localization-net/export.ts). */
export const HEIMDALL_PRODUCER = 'heimdall-exporter';

export const TensorDataType = { FLOAT: 1, INT8: 3, INT64: 7 } as const;
export type TensorDataType = (typeof TensorDataType)[keyof typeof TensorDataType];

export type AttributeValue =
  | { readonly type: 'int'; readonly value: number }
  | { readonly type: 'float'; readonly value: number }
  | { readonly type: 'ints'; readonly value: readonly number[] }
  | { readonly type: 'string'; readonly value: string };

export const attr = {
  int: (value: number): AttributeValue => ({ type: 'int', value }),
  float: (value: number): AttributeValue => ({ type: 'float', value }),
  ints: (value: readonly number[]): AttributeValue => ({ type: 'ints', value }),
  string: (value: string): AttributeValue => ({ type: 'string', value }),
};

export interface NodeDef {
  readonly opType: string;
  readonly name: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attributes: Readonly<Record<string, AttributeValue>>;
}

/** A dimension is fixed (number) or symbolic (dim_param, e.g. `batch_size`). */
export type Dim = number | string;

export interface ValueInfo {
  readonly name: string;
  readonly elemType: TensorDataType;
  readonly shape: readonly Dim[];
}

/**
 * An initializer whose bytes are produced only when the writer reaches it. The writer may lend a
 * `scratch` buffer to produce them in; it reuses it only after those bytes are written.
 */
export interface InitializerDef {
  readonly name: string;
  readonly dataType: TensorDataType;
  readonly dims: readonly number[];
  readonly byteLength: number;
  data(scratch?: Uint8Array): Promise<Uint8Array>;
}

export interface GraphDef {
  readonly name: string;
  readonly nodes: readonly NodeDef[];
  readonly inputs: readonly ValueInfo[];
  readonly outputs: readonly ValueInfo[];
  readonly initializers: readonly InitializerDef[];
}

export interface ModelDef {
  readonly irVersion: number;
  readonly opsetVersion: number;
  readonly producerName: string;
  readonly producerVersion: string;
  readonly docString: string;
  /** Metadata properties, asked for once the weights are written (values such as digests may come late). */
  readonly metadata: () => Promise<Readonly<Record<string, string>>>;
  readonly graph: GraphDef;
}

/**
 * Metadata key naming the sha256 of the external data file: the model file's own digest (the
 * registry's identity of a model) then covers its weights too, and the data file a stage is handed
 * is checked against it (shared/onnx/structure.ts externalDataProblems).
 */
export const EXTERNAL_DATA_SHA256 = 'external_data_sha256';
/** The external data file of the model at `path`: beside it, named after it (what writeModel writes). */
export const externalDataName = (modelName: string) => `${modelName}.data`;

/** ModelProto fields. */
export const ModelField = { irVersion: 1, producerName: 2, producerVersion: 3, docString: 6, graph: 7, opsetImport: 8, metadataProps: 14 } as const;
/** GraphProto fields. */
export const GraphField = { node: 1, name: 2, initializer: 5, input: 11, output: 12 } as const;
/** TensorProto fields. */
export const TensorField = { dims: 1, dataType: 2, name: 8, rawData: 9, externalData: 13, dataLocation: 14 } as const;
const EXTERNAL_LOCATION = 1;

export function encodeNode(node: NodeDef): ProtoMessage {
  const m = new ProtoMessage();
  for (const input of node.inputs) m.string(1, input);
  for (const output of node.outputs) m.string(2, output);
  m.string(3, node.name).string(4, node.opType);
  for (const [name, value] of Object.entries(node.attributes)) m.message(5, encodeAttribute(name, value));
  return m;
}

// AttributeProto: name 1, f 2, i 3, s 4, ints 8, type 20 (FLOAT 1, INT 2, STRING 3, INTS 7).
function encodeAttribute(name: string, value: AttributeValue): ProtoMessage {
  const m = new ProtoMessage().string(1, name);
  switch (value.type) {
    case 'float':
      return m.float(2, value.value).varint(20, 1);
    case 'int':
      return m.varint(3, value.value).varint(20, 2);
    case 'string':
      return m.string(4, value.value).varint(20, 3);
    case 'ints':
      for (const v of value.value) m.varint(8, v);
      return m.varint(20, 7);
  }
}

// ValueInfoProto{name 1, type 2} > TypeProto{tensor_type 1} > Tensor{elem_type 1, shape 2} > TensorShapeProto{dim 1} > Dimension{dim_value 1, dim_param 2}
export function encodeValueInfo(info: ValueInfo): ProtoMessage {
  const shape = new ProtoMessage();
  for (const dim of info.shape) shape.message(1, typeof dim === 'number' ? new ProtoMessage().varint(1, dim) : new ProtoMessage().string(2, dim));
  const tensorType = new ProtoMessage().varint(1, info.elemType).message(2, shape);
  return new ProtoMessage().string(1, info.name).message(2, new ProtoMessage().message(1, tensorType));
}

export function encodeOpset(version: number): ProtoMessage {
  return new ProtoMessage().string(1, '').varint(2, version);
}

export function encodeStringEntry(key: string, value: string): ProtoMessage {
  return new ProtoMessage().string(1, key).string(2, value);
}

/** Where an initializer's bytes go: inline `raw_data`, or a range of the external data file. */
export type Placement = { readonly kind: 'inline' } | { readonly kind: 'external'; readonly location: string; readonly offset: number };

/** The TensorProto up to (not including) its payload; `payloadLength` is what follows it. */
export function encodeTensorHeader(init: InitializerDef, placement: Placement): { header: Uint8Array; payloadLength: number } {
  const m = new ProtoMessage();
  for (const d of init.dims) m.varint(TensorField.dims, d);
  m.varint(TensorField.dataType, init.dataType).string(TensorField.name, init.name);
  if (placement.kind === 'external') {
    m.message(TensorField.externalData, encodeStringEntry('location', placement.location));
    m.message(TensorField.externalData, encodeStringEntry('offset', String(placement.offset)));
    m.message(TensorField.externalData, encodeStringEntry('length', String(init.byteLength)));
    m.varint(TensorField.dataLocation, EXTERNAL_LOCATION);
    return { header: m.finish(), payloadLength: 0 };
  }
  m.lengthPrefix(TensorField.rawData, init.byteLength);
  return { header: m.finish(), payloadLength: init.byteLength };
}

/** Size of a length-delimited field holding `length` bytes. */
export const fieldSize = (field: number, length: number) => varintSize(field * 8 + 2) + varintSize(length) + length;
