import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openCheckpoint } from '../../shared/checkpoint/index.ts';
import { pickle, pyDict, pyFloat, pyOrderedDict, pyTuple, tensor, type PickleValue as WriterValue } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import { StorageType, torchGlobalPolicy } from '../../shared/checkpoint/torch-globals.ts';
import { describe as describeValue, unpickle, type PickleValue } from '../../shared/checkpoint/unpickler.ts';
import { ErrorCodes, HeimdallError } from '../../shared/errors/index.ts';
import { createEvent, fromMessage, runIdOf, toBinary, type AnyCloudEvent } from '../../shared/events/index.ts';
import { parseNotification } from '../../shared/events/minio.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { inferArchitecture } from '../../shared/models/localization-net/infer.ts';
import { sampleCheckpointRoot } from '../../shared/models/localization-net/sample-weights.ts';
import { GraphBuilder } from '../../shared/onnx/graph-builder.ts';
import { attr, TensorDataType } from '../../shared/onnx/model.ts';
import { readModelSummary } from '../../shared/onnx/reader.ts';
import { structuralProblems } from '../../shared/onnx/structure.ts';
import { writeModel } from '../../shared/onnx/writer.ts';
import { benchmarkedEvent, latency, registeredEvent } from '../support/events.ts';
import { SMALL_SPEC, writeSmallCheckpoint } from '../support/small-model.ts';
import type { Seed } from './mutations.ts';
import { pickleFields, protobufFields, safetensorsFields, storedZip, zipEntries, zipFields } from './seeds.ts';

/**
 * What the fuzzer feeds: each target names a reader of untrusted bytes, the seeds its inputs are
 * mutated from (made by the project's own writers, kilobytes each), and how one input is run. The
 * harness (harness.ts) runs `run` in a worker thread and judges the outcome: returning is fine, so
 * is a HeimdallError with a non-retriable code; anything else, or too much time or memory, is a
 * failure.
 */
export interface TargetInput {
  readonly bytes: Uint8Array;
  /** For file targets: a file holding `bytes` (one path per worker and target, rewritten per input). */
  readonly path: string;
}

export interface Target {
  readonly name: string;
  readonly description: string;
  /** The input is written to a file first (`input.path`). */
  readonly file: boolean;
  /** The seed corpus, made in `dir` (a scratch directory). */
  seeds(dir: string): Promise<Seed[]>;
  run(input: TargetInput): Promise<unknown>;
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

/** Opens a checkpoint as export does: its index, every tensor's values, the architecture off the weights. */
async function readCheckpoint(path: string): Promise<unknown> {
  const checkpoint = await openCheckpoint(path);
  try {
    let values = 0;
    for (const [name, t] of [...checkpoint.tensors, ...(checkpoint.parity ?? [])]) {
      const data = await t.readFloat32();
      // A reader's own invariant: what it hands out matches the shape it announced.
      if (data.length !== t.numel || t.numel !== t.shape.reduce((a, b) => a * b, 1)) {
        throw new Error(`tensor ${name} [${t.shape.join(', ')}] (numel ${t.numel}) read as ${data.length} values`);
      }
      values += data.length;
    }
    try {
      inferArchitecture(checkpoint.tensors, checkpoint.config);
    } catch (error) {
      // Not a LocalizationNet is a fine answer for a mutated checkpoint, and says nothing of the reader.
      if (!(error instanceof HeimdallError)) throw error;
    }
    return { layout: checkpoint.layout, tensors: checkpoint.tensors.size, values, warnings: checkpoint.warnings.length };
  } finally {
    await checkpoint.close();
  }
}

/** A small checkpoint of every dtype, odd shapes (0-d, empty, non-contiguous-free), config and parity samples. */
function tinyRoot(): WriterValue {
  const f32 = (n: number) => Float32Array.from({ length: n }, (_, i) => i * 0.5 - 1);
  return pyDict({
    model_state_dict: pyOrderedDict(
      [
        ['w.f32', tensor('float32', [2, 3], f32(6))],
        ['w.f16', tensor('float16', [3], Uint16Array.from([0x3c00, 0xc000, 0x7c00]))],
        ['w.bf16', tensor('bfloat16', [2], Uint16Array.from([0x3f80, 0x7fc0]))],
        ['w.f64', tensor('float64', [2], Float64Array.from([1.5, -2]))],
        ['w.i64', tensor('int64', [], BigInt64Array.from([9999n]))],
        ['w.i32', tensor('int32', [2], Int32Array.from([1, -1]))],
        ['w.i16', tensor('int16', [1], Int16Array.from([7]))],
        ['w.i8', tensor('int8', [2], Int8Array.from([-3, 3]))],
        ['w.u8', tensor('uint8', [3], Uint8Array.from([0, 128, 255]))],
        ['w.bool', tensor('bool', [2], Uint8Array.from([0, 1]))],
        ['w.empty', tensor('float32', [0, 4], new Float32Array(0))],
      ],
      pyDict({ _metadata: pyOrderedDict([['', pyDict({ version: 1 })]]) }),
    ),
    config: pyDict({ uncertainty_min: pyFloat(0.05), uncertainty_max: pyFloat(2), backbone_size: 'custom', nested: [1, pyTuple('a', null, true), 2n ** 70n] }),
    parity: pyDict({ inputs: tensor('float32', [1, 4], f32(4)), positions: tensor('float32', [1, 2], f32(2)) }),
    epoch: 3,
  });
}

interface CheckpointSeed {
  readonly name: string;
  readonly bytes: Uint8Array;
}

/** Torch zip seeds: the tiny LocalizationNet in each layout, the every-dtype checkpoint, and a ZIP64 one. */
async function torchSeeds(dir: string): Promise<CheckpointSeed[]> {
  const out: CheckpointSeed[] = [];
  const add = async (name: string, write: (path: string) => Promise<unknown>) => {
    const path = join(dir, `${name}.pth`);
    await write(path);
    out.push({ name, bytes: new Uint8Array(await readFile(path)) });
  };
  await add('tiny-dtypes', (p) => writeTorchCheckpoint(p, tinyRoot()));
  await add('tiny-dtypes-zip64', (p) => writeTorchCheckpoint(p, tinyRoot(), { archiveName: 'archive', zip: { zip64SizeThreshold: 1, zip64OffsetThreshold: 1, zip64CountThreshold: 1 } }));
  await add('small-bare', (p) => writeSmallCheckpoint(p));
  for (const layout of ['model_state_dict', 'lightning'] as const) {
    await add(`small-${layout}`, (p) => writeTorchCheckpoint(p, sampleCheckpointRoot({ variant: 'custom', spec: SMALL_SPEC, seed: 1, layout }).root));
  }
  return out;
}

function dataPkl(zip: Uint8Array): { name: string; bytes: Uint8Array; entries: Array<[string, Uint8Array]> } {
  const entries = zipEntries(zip);
  const found = entries.find(([name]) => name.endsWith('/data.pkl'));
  if (!found) throw new Error('seed checkpoint has no data.pkl');
  return { name: found[0], bytes: found[1], entries };
}

const zipTarget: Target = {
  name: 'zip',
  description: 'torch zip checkpoints through openCheckpoint (zip reader, unpickler, tensor bounds), every tensor read, inferArchitecture',
  file: true,
  async seeds(dir) {
    // Only the archive's own fields: a mutated pickle fails its record's CRC here (torch-pickle goes past it).
    return (await torchSeeds(dir)).map(({ name, bytes }) => ({ name, bytes, fields: zipFields(bytes) }));
  },
  run: ({ path }) => readCheckpoint(path),
};

const torchPickleTarget: Target = {
  name: 'torch-pickle',
  description: "mutated data.pkl put back into a valid torch zip (CRCs right) with the seed's storages, through openCheckpoint",
  file: true,
  async seeds(dir) {
    return (await torchSeeds(dir))
      .filter((s) => !s.name.includes('zip64'))
      .map(({ name, bytes }) => {
        const pkl = dataPkl(bytes);
        return {
          name: `${name}/data.pkl`,
          bytes: pkl.bytes,
          fields: pickleFields(pkl.bytes),
          wrap: (mutated: Uint8Array) => storedZip(pkl.entries.map(([n, b]) => [n, n === pkl.name ? mutated : b] as const)),
        };
      });
  },
  run: ({ path }) => readCheckpoint(path),
};

/** Pickles beyond what torch.save writes (protocol 4/5 opcodes, sets, NEWOBJ, BUILD on placeholders...). */
function handPickles(): Array<[string, Uint8Array]> {
  const b = (...parts: Array<number | string | number[]>) =>
    Uint8Array.from(parts.flatMap((p) => (typeof p === 'number' ? [p] : typeof p === 'string' ? [...Buffer.from(p, 'latin1')] : p)));
  const sbu = (s: string) => [0x8c, Buffer.byteLength(s), ...Buffer.from(s, 'utf8')];
  const u64 = (n: number) => [...Buffer.from(new BigUint64Array([BigInt(n)]).buffer)];
  const u32 = (n: number) => [...Buffer.from(new Uint32Array([n]).buffer)];
  return [
    // Protocol 4: FRAME, MEMOIZE, STACK_GLOBAL collections.OrderedDict, REDUCE, SETITEMS, BINGET.
    ['p4-ordered-dict', b(0x80, 4, 0x95, u64(60), sbu('collections'), 0x94, sbu('OrderedDict'), 0x94, 0x93, 0x94, 0x29, 0x52, 0x94, 0x28, sbu('a'), 0x94, 0x4b, 1, sbu('b'), 0x94, 0x68, 2, 0x75, 0x2e)],
    // Protocol 5: BINUNICODE8, BINBYTES8, BYTEARRAY8, sets, frozensets, LONG4, BINFLOAT, TUPLE3, DICT.
    [
      'p5-containers',
      b(0x80, 5, 0x28, 0x8d, u64(3), 'abc', 0x8e, u64(2), [1, 2], 0x96, u64(1), [9], 0x8f, 0x28, 0x4b, 1, 0x4b, 2, 0x90, 0x28, 0x4b, 3, 0x91,
        0x8b, u32(9), [1, 0, 0, 0, 0, 0, 0, 0, 0x80], 0x47, [0x3f, 0xf8, 0, 0, 0, 0, 0, 0], 0x88, 0x89, 0x4e, 0x87, 0x4d, [0xff, 0xff], 0x4a, u32(0x80000000), 0x64, 0x2e),
    ],
    // An unknown trainer global: NEWOBJ, BUILD with state, SETITEMS/APPENDS on the placeholder, NEWOBJ_EX.
    [
      'p4-placeholder',
      b(0x80, 4, sbu('pytorch_lightning.utilities.parsing'), sbu('AttributeDict'), 0x93, 0x94, 0x29, 0x81, 0x94, 0x28, sbu('lr'), 0x47, [0x3f, 0x50, 0x62, 0x4d, 0xd2, 0xf1, 0xa9, 0xfc], 0x75,
        0x7d, 0x62, 0x68, 0, 0x29, 0x7d, 0x92, 0x86, 0x2e),
    ],
    // Protocol 2 with GLOBAL lines, BINPUT/LONG_BINPUT/LONG_BINGET, DUP, POP, POP_MARK, SHORT_BINSTRING, BINSTRING, SHORT_BINBYTES, BINBYTES.
    [
      'p2-misc',
      b(0x80, 2, 'ccollections\nOrderedDict\n', 0x71, 0, 0x29, 0x52, 0x72, u32(1), 0x28, 0x55, 2, 'hi', 0x54, u32(2), 'yo', 0x43, 1, [7], 0x42, u32(2), [8, 9],
        0x32, 0x30, 0x31, 0x6a, u32(1), 0x30, 0x5d, 0x4b, 5, 0x61, 0x28, 0x4b, 6, 0x4b, 7, 0x65, 0x86, 0x2e),
    ],
    // A refused global (torch.load's weights_only refuses it too): UNSAFE_PICKLE.
    ['p2-unsafe', b(0x80, 2, 'cposix\nsystem\n', 0x58, u32(4), 'true', 0x85, 0x52, 0x2e)],
  ];
}

/** The same storage checks torch-zip.ts makes, without a zip behind them: the unpickler alone is under test. */
function unpickleWithTorchPolicy(bytes: Uint8Array): PickleValue {
  const policy = torchGlobalPolicy((args, global) => {
    if (!(args[0] && typeof args[0] === 'object' && 'kind' in args[0] && args[0].kind === 'storage')) {
      throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `${global} without a storage`);
    }
    return { kind: 'tensor' };
  });
  return unpickle(bytes, {
    resolveGlobal: policy.resolve,
    persistentLoad: (pid) => {
      if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length !== 5 || !(pid[1] instanceof StorageType)) {
        throw new HeimdallError(ErrorCodes.PICKLE_INVALID, `unknown persistent id ${describeValue(pid)}`);
      }
      return { kind: 'storage' };
    },
  });
}

const pickleTarget: Target = {
  name: 'pickle',
  description: "the restricted unpickler (unpickle with torch-globals' policy), in memory",
  file: false,
  async seeds(dir) {
    const values: Array<[string, WriterValue]> = [
      ['values', pyDict({ int: 5, neg: -70000, big: 2n ** 100n, huge: -(2n ** 500n), f: pyFloat(1), nan: pyFloat(Number.NaN), s: 'é😀', t: pyTuple(1, pyTuple(), [null, true, false]), list: Array.from({ length: 1005 }, (_, i) => i) })],
      ['dict-int-keys', pyDict([[1, 'a'], [2n ** 64n, 'b'], [pyTuple(1, 2), 'c'], [null, 'd'], [true, 'e'], [pyFloat(0.5), 'f']])],
    ];
    const torch = (await torchSeeds(dir)).filter((s) => !s.name.includes('zip64')).map((s) => [`${s.name}/data.pkl`, dataPkl(s.bytes).bytes] as [string, Uint8Array]);
    return [...torch, ...values.map(([n, v]) => [n, pickle(v).bytes] as [string, Uint8Array]), ...handPickles()].map(([name, bytes]) => ({ name, bytes, fields: pickleFields(bytes) }));
  },
  run: async ({ bytes }) => describeValue(unpickleWithTorchPolicy(bytes)),
};

// ---------------------------------------------------------------------------------------------
// safetensors

function safetensorsBytes(tensors: ReadonlyArray<readonly [string, string, readonly number[], Uint8Array]>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let offset = 0;
  for (const [name, dtype, shape, data] of tensors) {
    header[name] = { dtype, shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.byteLength));
  return Buffer.concat([prefix, json, ...tensors.map((t) => t[3])]);
}

const raw = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

const safetensorsTarget: Target = {
  name: 'safetensors',
  description: 'safetensors through openCheckpoint (header, offsets, metadata), every tensor read, inferArchitecture',
  file: true,
  async seeds() {
    const { sample } = sampleCheckpointRoot({ variant: 'custom', spec: SMALL_SPEC, seed: 2, layout: 'bare' });
    const small = safetensorsBytes(
      sample.map((s) => {
        const data = s.tensor.data();
        return [s.name, data instanceof BigInt64Array ? 'I64' : 'F32', s.tensor.shape, raw(data)] as const;
      }),
      { uncertainty_min: '0.02', uncertainty_max: '1.5', format: 'pt' },
    );
    const tiny = safetensorsBytes(
      [
        ['a', 'F32', [2], raw(Float32Array.from([1.5, -2]))],
        ['half', 'F16', [2], raw(Uint16Array.from([0x3c00, 0xc000]))],
        ['brain', 'BF16', [1], raw(Uint16Array.from([0x3fc0]))],
        ['d', 'F64', [], raw(Float64Array.from([3]))],
        ['i', 'I64', [1, 1], raw(BigInt64Array.from([5n]))],
        ['j', 'I32', [1], raw(Int32Array.from([-5]))],
        ['k', 'I16', [1], raw(Int16Array.from([5]))],
        ['b', 'I8', [2], raw(Int8Array.from([1, -1]))],
        ['u', 'U8', [1], Uint8Array.from([200])],
        ['t', 'BOOL', [1], Uint8Array.from([1])],
        ['e', 'F32', [0, 3], new Uint8Array(0)],
      ],
      { note: 'tiny' },
    );
    const files = [
      { name: 'tiny-dtypes', bytes: tiny },
      { name: 'small-localization-net', bytes: small },
      { name: 'metadata-only', bytes: safetensorsBytes([], { a: 'b' }) },
    ];
    // The files as they are (header length, JSON text and data all mutable)...
    const whole: Seed[] = files.filter((f) => f.bytes.byteLength > 64).map((f) => ({ ...f, fields: safetensorsFields(f.bytes) }));
    // ...and their JSON headers alone, put back with a length prefix that matches and the data after:
    // mutations then reach the checks of dtypes, shapes and offsets instead of failing at the prefix.
    const headers: Seed[] = files.map((f) => {
      const length = Number(Buffer.from(f.bytes).readBigUInt64LE(0));
      const header = f.bytes.subarray(8, 8 + length);
      const data = f.bytes.subarray(8 + length);
      const encode = (v: unknown) => utf8(JSON.stringify(v) ?? '');
      const wrap = (mutated: Uint8Array) => {
        const prefix = Buffer.alloc(8);
        prefix.writeBigUInt64LE(BigInt(mutated.byteLength));
        return Buffer.concat([prefix, mutated, data]);
      };
      return { name: `${f.name}/header`, bytes: header, json: { value: JSON.parse(text(header)), encode }, wrap };
    });
    return [...whole, ...headers];
  },
  run: ({ path }) => readCheckpoint(path),
};

// ---------------------------------------------------------------------------------------------
// ONNX

const onnxTarget: Target = {
  name: 'onnx',
  description: 'ONNX protobuf through readModelSummary (file scanner, nested messages) and structuralProblems',
  file: true,
  async seeds(dir) {
    const checkpoint = join(dir, 'onnx-source.pth');
    await writeSmallCheckpoint(checkpoint);
    const seeds: Seed[] = [];
    const add = async (name: string, path: string) => {
      const bytes = new Uint8Array(await readFile(path));
      seeds.push({ name, bytes, fields: protobufFields(bytes) });
    };
    await exportCheckpoint(checkpoint, join(dir, 'small.onnx'));
    await add('small-localization-net-opset14', join(dir, 'small.onnx'));
    // A hand-made graph: every attribute type, symbolic and fixed dims, metadata, external data.
    const g = new GraphBuilder('mini');
    const x = g.input('x', TensorDataType.FLOAT, ['batch_size', 3, 0, 2 ** 40]);
    const w = g.constant('w', [1, 2, 3, 4], [2, 2]);
    const i = g.initializer({ name: 'shape', dataType: TensorDataType.INT64, dims: [2], byteLength: 16, data: async () => raw(BigInt64Array.from([1n, -1n])) });
    const y = g.node('Add', [x, w], { attributes: { alpha: attr.float(0.5), axis: attr.int(-1), pads: attr.ints([0, 1, 2 ** 33]), mode: attr.string('constant') } });
    const z = g.node('Reshape', [y, i, ''], { scope: 'block' });
    g.output(z, 'out', TensorDataType.FLOAT, ['batch_size', 'n']);
    for (const external of [false, true]) {
      const path = join(dir, `mini-${external}.onnx`);
      await writeModel(
        { irVersion: 8, opsetVersion: 17, producerName: 'fuzz', producerVersion: '1', docString: 'mini', metadata: async () => ({ source_sha256: 'ab'.repeat(32), note: 'é' }), graph: g.build() },
        path,
        { externalData: external },
      );
      await add(external ? 'mini-external-data' : 'mini', path);
    }
    return seeds;
  },
  run: async ({ path }) => structuralProblems(await readModelSummary(path)).length,
};

// ---------------------------------------------------------------------------------------------
// Events

const utf8 = (s: string) => new TextEncoder().encode(s);
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** One valid event of every type, with what other producers may send (subject, charset parameter). */
function sampleEvents(): AnyCloudEvent[] {
  const runId = runIdOf('ab'.repeat(32));
  const sha = 'cd'.repeat(32);
  const checkpoint = { uri: `s3://heimdall-checkpoints/runs/${runId}/model.pth`, sha256: 'ab'.repeat(32), format: 'torch-zip' as const };
  const onnx = { uri: `s3://heimdall-models/models/localization/${runId}/model.onnx`, sha256: sha, bytes: 149_376, opset: 14, irVersion: 7 };
  const time = new Date('2024-06-01T10:00:00Z');
  const parity = { reference: 'reference-impl' as const, samples: 4, perOutput: { positions: { maxAbs: 4.8e-7, meanAbs: 1e-7 }, uncertainties: { maxAbs: 2e-7, meanAbs: 5e-8 } }, tolerance: 1e-5, passed: true };
  const io = { name: 'mel_spectrogram', dtype: 'float32', shape: ['batch_size', 3, 128, 32] };
  return [
    createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', subject: 'runs/épreuve 3.pth', time, data: { bucket: 'heimdall-checkpoints', key: 'runs/épreuve 3.pth', size: 142_954, etag: 'e1', versionId: 'v1', runId, sha256: 'ab'.repeat(32) } }),
    createEvent('heimdall.model.exported', { stage: 'export', source: 'heimdall/export', time, data: { runId, checkpoint, onnx, architecture: { name: 'LocalizationNet', variant: 'custom', params: 31_000 }, warnings: ['unknown pickle global x.Y kept as an inert placeholder'], durationMs: 356.2 } }),
    createEvent('heimdall.model.validated', { stage: 'validate', source: 'heimdall/validate', time, data: { runId, checkpoint, onnx, io: { inputs: [io], outputs: [{ ...io, name: 'positions', shape: ['batch_size', 2] }] }, batchSizesChecked: [1, 2, 8, 32], checks: [{ name: 'structure', passed: true, detail: 'topological' }] } }),
    createEvent('heimdall.model.parity-checked', { stage: 'parity', source: 'heimdall/parity', time, data: { runId, checkpoint, onnx, ...parity } }),
    { ...benchmarkedEvent(runId, [latency(1, 41.1), latency(8, 216.8), latency(32, 686.5)], { version: '3', p50: 40, threshold: 0.1 }), time: time.toISOString() },
    { ...registeredEvent(runId, '4'), time: time.toISOString() },
    createEvent('heimdall.pipeline.failed', { stage: 'export', source: 'heimdall/export', time, data: { runId, stage: 'export', error: { code: 'CHECKPOINT_CORRUPT', message: 'CRC mismatch in archive/data/0' }, attempt: 1, retriable: false } }),
  ];
}

const jsonSeed = (name: string, value: unknown): Seed => {
  const encode = (v: unknown) => utf8(JSON.stringify(v) ?? '');
  return { name, bytes: encode(value), json: { value, encode } };
};

const structuredTarget: Target = {
  name: 'cloudevent-structured',
  description: 'structured-mode CloudEvents (application/cloudevents+json body) through fromMessage/parseEvent, accepted ones published again',
  file: false,
  async seeds() {
    return sampleEvents().map((e) => jsonSeed(e.type, JSON.parse(JSON.stringify(e))));
  },
  run: async ({ bytes }) => republish(fromMessage([['content-type', 'application/cloudevents+json; charset=utf-8']], text(bytes))),
};

/** An accepted event is published again by the next stage: it must encode and decode to itself. */
function republish(event: AnyCloudEvent): AnyCloudEvent {
  let again: AnyCloudEvent;
  try {
    const { headers, body } = toBinary(event);
    again = fromMessage(Object.entries(headers), body);
  } catch (error) {
    // Not a fault of the input (it was accepted): a failure of the decoder, whatever its type.
    throw new Error(`event ${event.id} was accepted but is refused when published again: ${(error as Error).message}`);
  }
  for (const field of ['id', 'type', 'source', 'time', 'subject', 'data'] as const) {
    const [before, after] = [JSON.stringify(event[field]) ?? 'undefined', JSON.stringify(again[field]) ?? 'undefined'];
    if (before !== after) throw new Error(`accepted event changes when published again: ${field} ${before.slice(0, 60)} becomes ${after.slice(0, 60)}`);
  }
  return again;
}

/** Binary-mode messages as bytes: `name: value` header lines, a blank line, the body. */
function encodeBinary(value: unknown): Uint8Array {
  const message = (value ?? {}) as { headers?: unknown; body?: unknown };
  const headers = Array.isArray(message.headers) ? message.headers : [];
  const str = (v: unknown) => (typeof v === 'string' ? v : (JSON.stringify(v) ?? ''));
  const lines = headers.map((h) => (Array.isArray(h) ? `${str(h[0])}: ${str(h[1])}` : str(h)));
  return utf8(`${lines.join('\n')}\n\n${JSON.stringify(message.body) ?? ''}`);
}

function decodeBinary(bytes: Uint8Array): { headers: Array<[string, string]>; body: string } {
  const all = text(bytes);
  const split = all.indexOf('\n\n');
  const head = split < 0 ? all : all.slice(0, split);
  const headers = head
    .split('\n')
    .filter((l) => l.length > 0)
    .map((line): [string, string] => {
      const colon = line.indexOf(':');
      return colon < 0 ? [line, ''] : [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, '')];
    });
  return { headers, body: split < 0 ? '' : all.slice(split + 2) };
}

const binaryTarget: Target = {
  name: 'cloudevent-binary',
  description: 'binary-mode CloudEvents (ce-* headers, percent-encoded, JSON body) through fromMessage, accepted ones published again',
  file: false,
  async seeds() {
    return sampleEvents().map((e) => {
      const { headers, body } = toBinary(e);
      const value = { headers: Object.entries(headers), body: JSON.parse(body) as unknown };
      return { name: e.type, bytes: encodeBinary(value), json: { value, encode: encodeBinary } };
    });
  },
  run: async ({ bytes }) => {
    const { headers, body } = decodeBinary(bytes);
    return republish(fromMessage(headers, body));
  },
};

/** A bucket notification as MinIO sends it (S3 event structure, the fields MinIO fills in). */
function notification(records: Array<{ event: string; key: string; size?: number; versionId?: string }>, bucket = 'heimdall-checkpoints') {
  return {
    EventName: records[0]!.event,
    Key: `${bucket}/${records[0]!.key}`,
    Records: records.map((r) => ({
      eventVersion: '2.0',
      eventSource: 'minio:s3',
      awsRegion: '',
      eventTime: '2024-06-01T10:00:00.000Z',
      eventName: r.event,
      userIdentity: { principalId: 'minioadmin' },
      requestParameters: { principalId: 'minioadmin', region: '', sourceIPAddress: '10.0.0.1' },
      responseElements: { 'x-amz-id-2': 'dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8', 'x-amz-request-id': '17D6B4C1E1C0A7E5', 'x-minio-origin-endpoint': 'http://10.0.0.2:9000' },
      s3: {
        s3SchemaVersion: '1.0',
        configurationId: 'Config',
        bucket: { name: bucket, ownerIdentity: { principalId: 'minioadmin' }, arn: `arn:aws:s3:::${bucket}` },
        object: {
          key: r.key,
          ...(r.size !== undefined ? { size: r.size } : {}),
          eTag: '"d41d8cd98f00b204e9800998ecf8427e"',
          contentType: 'application/octet-stream',
          userMetadata: { 'content-type': 'application/octet-stream' },
          ...(r.versionId ? { versionId: r.versionId } : {}),
          sequencer: '17D6B4C1E2A1B2C3',
        },
      },
      source: { host: '10.0.0.1', port: '', userAgent: 'MinIO (linux; amd64) minio-go/v7.0.70' },
    })),
  };
}

const minioTarget: Target = {
  name: 'minio',
  description: 'MinIO bucket notifications through parseNotification',
  file: false,
  async seeds() {
    return [
      jsonSeed('put', notification([{ event: 's3:ObjectCreated:Put', key: 'runs%2Fepoch+3.pth', size: 142954 }])),
      jsonSeed('multipart-versioned', notification([{ event: 's3:ObjectCreated:CompleteMultipartUpload', key: 'runs%2F%C3%A9preuve%2B1.ckpt', size: 1_073_741_824, versionId: '3b1e7c2a-0f4e-4d8b-9a77-1c2d3e4f5a6b' }])),
      jsonSeed('several', notification([
        { event: 's3:ObjectCreated:Put', key: 'a.safetensors', size: 10 },
        { event: 's3:ObjectRemoved:Delete', key: 'old.pth' },
        { event: 's3:ObjectCreated:Copy', key: 'models%2Fm.onnx', size: 0 },
      ])),
    ];
  },
  run: async ({ bytes }) => parseNotification(text(bytes)),
};

export const TARGETS: readonly Target[] = [zipTarget, torchPickleTarget, pickleTarget, safetensorsTarget, onnxTarget, structuredTarget, binaryTarget, minioTarget];

/**
 * Targets with planted bugs, for the harness's own test (harness.test.ts): each breaks one property
 * on inputs that mutations reach at once, so a harness that misses them is broken.
 */
const canarySeeds = async (): Promise<Seed[]> => [{ name: 'text', bytes: utf8('a fuzz canary, 32 bytes of text.') }];
export const CANARY_TARGETS: readonly Target[] = [
  {
    name: 'canary-untyped',
    description: 'throws a TypeError on any input shorter than its seed',
    file: false,
    seeds: canarySeeds,
    run: async ({ bytes }) => {
      if (bytes.byteLength < 32) throw new TypeError(`input of ${bytes.byteLength} bytes`);
    },
  },
  {
    name: 'canary-retriable',
    description: 'throws IO_ERROR (retriable) for content whose first byte changed',
    file: true,
    seeds: canarySeeds,
    run: async ({ bytes }) => {
      if (bytes[0] !== 0x61) throw new HeimdallError(ErrorCodes.IO_ERROR, 'bad first byte');
    },
  },
  {
    name: 'canary-hang',
    description: 'never returns when the input holds a byte 0xff or 0x00',
    file: false,
    seeds: canarySeeds,
    run: async ({ bytes }) => {
      if (bytes.includes(0xff) || bytes.includes(0x00)) for (;;);
    },
  },
  {
    name: 'canary-memory',
    description: 'allocates 300 MB for an input longer or shorter than its seed',
    file: false,
    seeds: canarySeeds,
    run: async ({ bytes }) => (bytes.byteLength !== 32 ? new Uint8Array(300 * 1024 * 1024) : undefined),
  },
];

export function targetNamed(name: string): Target {
  const target = [...TARGETS, ...CANARY_TARGETS].find((t) => t.name === name);
  if (!target) throw new Error(`no fuzz target ${name} (targets: ${TARGETS.map((t) => t.name).join(', ')})`);
  return target;
}
