/**
 * The ONNX structure reader on well-formed models, and on the malformed files an upload can be:
 * every fault of the file is INVALID_MODEL (never a plain Error, RangeError or TypeError, which the
 * pipeline would report as a retriable IO_ERROR), found within bounded time and memory.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { HeimdallError, isRetriable } from '../errors/index.ts';
import { encodeNode, encodeOpset, encodeStringEntry, encodeValueInfo } from './model.ts';
import { ProtoMessage } from './protobuf.ts';
import { MAX_ITEMS, MAX_STRING_BYTES, readModelSummary } from './reader.ts';

let dir: string;
let count = 0;
beforeAll(async () => {
  dir = await tempDir('heimdall-onnx-reader-');
});

/** Writes bytes to a fresh file and reads its summary. */
async function read(bytes: Uint8Array) {
  const path = join(dir, `m${count++}.onnx`);
  await writeFile(path, bytes);
  return readModelSummary(path);
}

/** Reads and returns the error, which must be a HeimdallError. */
async function failure(bytes: Uint8Array): Promise<HeimdallError> {
  const error = await read(bytes).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(HeimdallError);
  return error as HeimdallError;
}

const bytes = (...values: number[]) => Uint8Array.from(values);
const concat = (...parts: Uint8Array[]) => Uint8Array.from(parts.flatMap((p) => [...p]));

/** y = MatMul(x, w): a small ModelProto as our exporter lays it out. */
function graph() {
  const weights = new ProtoMessage().varint(1, 2).varint(1, 3).varint(2, 1).string(8, 'w').bytes(9, new Uint8Array(24));
  return new ProtoMessage()
    .message(1, encodeNode({ opType: 'MatMul', name: 'mm', inputs: ['x', 'w'], outputs: ['y'], attributes: {} }))
    .string(2, 'g')
    .message(5, weights)
    .message(11, encodeValueInfo({ name: 'x', elemType: 1, shape: ['batch_size', 2] }))
    .message(12, encodeValueInfo({ name: 'y', elemType: 1, shape: ['batch_size', 3] }));
}
const model = (g: ProtoMessage = graph()) =>
  new ProtoMessage().varint(1, 7).string(2, 'heimdall').string(3, '1').message(7, g).message(8, encodeOpset(14)).message(14, encodeStringEntry('variant', 'tiny')).finish();

describe('readModelSummary on well-formed models', () => {
  it('reads IR version, opsets, producer, metadata and the graph, weights skipped', async () => {
    expect(await read(model())).toEqual({
      irVersion: 7,
      opsets: new Map([['', 14]]),
      producerName: 'heimdall',
      producerVersion: '1',
      metadata: { variant: 'tiny' },
      graph: {
        name: 'g',
        nodes: [{ opType: 'MatMul', name: 'mm', domain: '', inputs: ['x', 'w'], outputs: ['y'] }],
        inputs: [{ name: 'x', elemType: 1, shape: ['batch_size', 2] }],
        outputs: [{ name: 'y', elemType: 1, shape: ['batch_size', 3] }],
        initializers: [{ name: 'w', dataType: 1, dims: [2, 3], byteLength: 24, external: false }],
      },
    });
  });

  it('reads what other writers emit: packed dims, negative dim values, external data, fields it does not know', async () => {
    const packedDims = new ProtoMessage().bytes(1, bytes(2, 3)).varint(2, 1).string(8, 'w').varint(14, 1).message(13, encodeStringEntry('location', 'w.bin')).message(13, encodeStringEntry('offset', '4096')).message(13, encodeStringEntry('length', '24'));
    const unknownShape = encodeValueInfo({ name: 'y', elemType: 1, shape: [-1, 3] });
    const g = new ProtoMessage().message(5, packedDims).message(12, unknownShape).string(10, 'a doc string').float(99, 1.5);
    const summary = await read(new ProtoMessage().varint(1, 8).message(7, g).bytes(20, new Uint8Array(100)).finish());
    expect(summary.graph.initializers).toEqual([{ name: 'w', dataType: 1, dims: [2, 3], byteLength: 24, external: true, location: 'w.bin', offset: 4096 }]);
    expect(summary.graph.outputs[0]!.shape).toEqual([-1, 3]);
  });

  it('keeps a metadata key named __proto__ as an entry, never as the prototype', async () => {
    const summary = await read(new ProtoMessage().message(7, graph()).message(14, encodeStringEntry('__proto__', 'x')).finish());
    expect(Object.getPrototypeOf(summary.metadata)).toBe(Object.prototype);
    expect(Object.entries(summary.metadata)).toEqual([['__proto__', 'x']]);
  });

  it('does not descend into node attributes: a subgraph nested 2000 deep costs nothing', async () => {
    let nested = new ProtoMessage().message(1, encodeNode({ opType: 'Relu', name: 'leaf', inputs: ['x'], outputs: ['y'], attributes: {} }));
    // AttributeProto.g (6) holds a GraphProto, whose nodes hold attributes again: If/Loop bodies.
    for (let depth = 0; depth < 2000; depth++) nested = new ProtoMessage().message(1, new ProtoMessage().string(4, 'If').message(5, new ProtoMessage().string(1, 'then_branch').message(6, nested)));
    const summary = await read(new ProtoMessage().message(7, nested).finish());
    expect(summary.graph.nodes).toEqual([{ opType: 'If', name: '', domain: '', inputs: [], outputs: [] }]);
  });
});

describe('readModelSummary on malformed files: INVALID_MODEL, not retriable, naming the fault', () => {
  const graphField = (content: Uint8Array) => concat(bytes(0x3a, content.length), content);
  const cases: [string, Uint8Array, RegExp][] = [
    ['an empty file', bytes(), /the file is empty/],
    ['text', new TextEncoder().encode('not an onnx model at all'), /wire type|field numbered|past the end|truncated/],
    ['no graph', bytes(0x08, 0x07), /has no graph/],
    ['a truncated varint', bytes(0x08, 0x80), /truncated varint at byte 1/],
    ['a truncated tag', bytes(0x80), /truncated varint at byte 0/],
    ['a varint of 11 bytes', bytes(0x08, ...new Array(10).fill(0xff), 0x01), /varint longer than 10 bytes/],
    ['a length past the end of the file', bytes(0x3a, 0x05, 0x00), /ModelProto field 7 at byte 0 claims 5 bytes, past the end of its file/],
    ['a length of 2^63 - 1', bytes(0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f), /claims .* bytes, past the end/],
    ['a length of 2^64 - 1 (negative as int64)', bytes(0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), /claims -1 bytes/],
    ['a node longer than its graph', concat(graphField(bytes(0x0a, 0x0a, 0x00)), new Uint8Array(16)), /GraphProto field 1 at byte 2 claims 10 bytes, past the end of its message \(byte 5\)/],
    ['a fixed64 past the end', bytes(0x09, 0x00, 0x00), /claims 8 bytes/],
    ['ir_version as bytes', bytes(0x0a, 0x01, 0x07), /ModelProto.ir_version at byte 0 has wire type 2, expected 0/],
    ['the graph as a number', bytes(0x38, 0x01), /ModelProto.graph at byte 0 has wire type 0, expected 2/],
    ['a node name as a number', graphField(bytes(0x0a, 0x02, 0x18, 0x01)), /NodeProto.name at byte 4 has wire type 0/],
    ['a group (wire type 3)', bytes(0x0b), /wire type 3 \(a group/],
    ['wire type 7', bytes(0x0f), /wire type 7/],
    ['field number 0', bytes(0x00, 0x00), /field numbered 0/],
    ['a node name that is not UTF-8', graphField(bytes(0x0a, 0x04, 0x1a, 0x02, 0xc3, 0x28)), /NodeProto.name at byte 4 is not valid UTF-8/],
    ['a metadata value that is a lone surrogate', new ProtoMessage().message(7, graph()).message(14, new ProtoMessage().string(1, 'k').bytes(2, bytes(0xed, 0xa0, 0x80))).finish(), /StringStringEntryProto.value .* not valid UTF-8/],
    ['an external data length that is no number', new ProtoMessage().message(7, new ProtoMessage().message(5, new ProtoMessage().string(8, 'w').message(13, encodeStringEntry('length', '12abc')))).finish(), /initializer "w" gives external data length "12abc"/],
    ['a packed dim cut short', new ProtoMessage().message(7, new ProtoMessage().message(5, new ProtoMessage().bytes(1, bytes(0x02, 0x80)))).finish(), /TensorProto.dims: truncated varint/],
  ];
  for (const [what, content, message] of cases) {
    it(what, async () => {
      const error = await failure(content);
      expect({ code: error.code, retriable: isRetriable(error.code) }).toEqual({ code: 'INVALID_MODEL', retriable: false });
      expect(error.message).toMatch(message);
    });
  }

  it('a name longer than MAX_STRING_BYTES, without decoding it', async () => {
    const name = new Uint8Array(MAX_STRING_BYTES + 1).fill(0x61);
    const error = await failure(new ProtoMessage().bytes(2, name).message(7, graph()).finish());
    expect(error).toMatchObject({ code: 'INVALID_MODEL', message: expect.stringMatching(/ModelProto.producer_name at byte 0 is 16777217 bytes long/) });
  });

  it('more items than MAX_ITEMS (a few bytes each), before holding them all', async () => {
    // One initializer whose packed dims are MAX_ITEMS + 1 one-byte varints.
    const dims = new ProtoMessage().bytes(1, new Uint8Array(MAX_ITEMS + 1).fill(1));
    const error = await failure(new ProtoMessage().message(7, new ProtoMessage().message(5, dims)).finish());
    expect(error).toMatchObject({ code: 'INVALID_MODEL', message: expect.stringMatching(/more than 2097152 nodes, values and names/) });
  }, 30_000);

  it('every truncation of a valid model reads or fails with INVALID_MODEL', async () => {
    const whole = model();
    for (let length = 0; length < whole.length; length++) {
      const outcome = await read(whole.subarray(0, length)).then(
        () => 'read',
        (e: unknown) => (e instanceof HeimdallError ? e.code : String(e)),
      );
      expect([length, outcome]).toEqual([length, expect.stringMatching(/^(read|INVALID_MODEL)$/)]);
    }
  });

  it('any byte changed, inserted or removed: a summary or INVALID_MODEL, nothing else', async () => {
    const whole = model();
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.nat(whole.length - 1), fc.integer({ min: 0, max: 255 }), fc.constantFrom('set', 'insert', 'delete')), { minLength: 1, maxLength: 4 }), async (edits) => {
        const mutated = [...whole];
        for (const [at, value, edit] of edits) {
          if (edit === 'set') mutated[at % mutated.length] = value;
          else if (edit === 'insert') mutated.splice(at % (mutated.length + 1), 0, value);
          else mutated.splice(at % mutated.length, 1);
        }
        await read(Uint8Array.from(mutated)).catch((error: unknown) => {
          if (!(error instanceof HeimdallError) || error.code !== 'INVALID_MODEL') throw error;
        });
      }),
      { numRuns: 300 },
    );
  }, 60_000);

  it('NOT_A_FILE for a directory where the model should be', async () => {
    const path = join(dir, 'a-directory.onnx');
    await mkdir(path);
    await expect(readModelSummary(path)).rejects.toMatchObject({ code: 'NOT_A_FILE' });
  });
});
