import { execFileSync } from 'node:child_process';
import { lstat, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureOracle } from '../../test/support/oracle.ts';
import { tempDir } from '../../test/support/temp.ts';
import { GraphBuilder } from './graph-builder.ts';
import { EXTERNAL_DATA_SHA256, TensorDataType, type ModelDef } from './model.ts';
import { readModelSummary } from './reader.ts';
import { sha256File } from '../runtime/sha256.ts';
import { checkOutputPath, writeModel } from './writer.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

/** Initializers of mixed sizes (several above the writer's 4 MiB buffer), each with its own pattern. */
const SIZES = [1_500_000, 7, 1_200_000, 3, 64, 2_000_000, 5, 1_100_000, 1_300_000, 9];
const pattern = (k: number, n: number) => Float32Array.from({ length: n }, (_, i) => k * 1000 + (i % 997));

async function roundTrip(externalData: boolean) {
  const g = new GraphBuilder('weights');
  g.input('unused', TensorDataType.FLOAT, [1]);
  SIZES.forEach((n, k) => {
    const name = g.initializer({
      name: `w${k}`,
      dataType: TensorDataType.FLOAT,
      dims: [n],
      byteLength: n * 4,
      // Lends itself to the writer's scratch buffers, as checkpoint tensors do.
      data: async (scratch) => {
        const values = pattern(k, n);
        const bytes = scratch && scratch.byteLength >= n * 4 ? scratch.subarray(0, n * 4) : new Uint8Array(n * 4);
        bytes.set(new Uint8Array(values.buffer));
        await new Promise((resolve) => setTimeout(resolve, 1));
        return bytes;
      },
    });
    g.output(g.node('Identity', [name]), `out${k}`, TensorDataType.FLOAT, [n]);
  });
  const path = join(dir, `weights-${externalData}.onnx`);
  await writeModel({ irVersion: 7, opsetVersion: 14, producerName: 'test', producerVersion: '0', docString: '', metadata: async () => ({}), graph: g.build() }, path, { externalData });
  const session = await ort.InferenceSession.create(path);
  const out = await session.run({ unused: new ort.Tensor('float32', new Float32Array(1), [1]) });
  await session.release();
  return SIZES.map((_, k) => out[`out${k}`]!.data as Float32Array);
}

describe('writeModel', () => {
  for (const external of [false, true]) {
    it(`writes every initializer's bytes exactly, big and small interleaved${external ? ' (external data)' : ''}`, async () => {
      const values = await roundTrip(external);
      SIZES.forEach((n, k) => expect(Buffer.from(values[k]!.buffer).equals(Buffer.from(pattern(k, n).buffer)), `w${k}`).toBe(true));
    });
  }

  it('starts every external tensor on a 4096-byte boundary, as onnx reads the file', async () => {
    // onnxruntime maps external initializers instead of copying them when their offsets are page
    // aligned (include/onnxruntime/core/graph/model_saving_options.h; GetFileContent in
    // core/framework/tensorprotoutils.cc tries MapFileIntoMemory first): what makes such a model load fast.
    await roundTrip(true);
    const { venvPython } = await ensureOracle();
    const script = [
      'import json, sys, onnx',
      'm = onnx.load(sys.argv[1], load_external_data=False)',
      'print(json.dumps({t.name: {e.key: e.value for e in t.external_data} for t in m.graph.initializer}))',
    ].join('\n');
    const entries = JSON.parse(execFileSync(venvPython, ['-c', script, join(dir, 'weights-true.onnx')], { encoding: 'utf8' })) as Record<string, Record<string, string>>;
    expect(Object.keys(entries)).toHaveLength(SIZES.length);
    for (const [name, { location, offset, length }] of Object.entries(entries)) {
      expect(location, name).toBe('weights-true.onnx.data');
      expect(Number(offset) % 4096, `${name} at ${offset}`).toBe(0);
      expect(Number(length), name).toBe(SIZES[Number(name.slice(1))]! * 4);
    }
  });

  it("names the data file's sha256 in the model's metadata, so the model's own digest covers its weights", async () => {
    await roundTrip(true);
    await roundTrip(false);
    const path = join(dir, 'weights-true.onnx');
    const { metadata } = await readModelSummary(path);
    expect(metadata[EXTERNAL_DATA_SHA256]).toBe(await sha256File(`${path}.data`));
    expect((await readModelSummary(join(dir, 'weights-false.onnx'))).metadata).toEqual({});
  });
});

/** A small model whose initializer `w<failAt>` fails to read (or that calls `during` while writing `w<at>`). */
function smallModel(options: { failAt?: number; during?: { at: number; run: () => void } } = {}): ModelDef {
  const g = new GraphBuilder('small');
  g.input('unused', TensorDataType.FLOAT, [1]);
  for (let k = 0; k < 4; k++) {
    const name = g.initializer({
      name: `w${k}`,
      dataType: TensorDataType.FLOAT,
      dims: [1000],
      byteLength: 4000,
      data: async () => {
        if (k === options.failAt) throw new Error(`cannot read w${k}`);
        if (k === options.during?.at) options.during.run();
        return new Uint8Array(4000);
      },
    });
    g.output(g.node('Identity', [name]), `out${k}`, TensorDataType.FLOAT, [1000]);
  }
  return { irVersion: 7, opsetVersion: 14, producerName: 'test', producerVersion: '0', docString: '', metadata: async () => ({}), graph: g.build() };
}

describe('writeModel output safety', () => {
  it('refuses to replace a device, FIFO, directory or socket, and writes nothing beside it', async () => {
    const folder = join(dir, 'not-files');
    await mkdir(folder);
    execFileSync('mkfifo', [join(folder, 'fifo.onnx')]);
    await mkdir(join(folder, 'dir.onnx'));
    const server = createServer().listen(join(folder, 'socket.onnx'));
    await new Promise((resolve) => server.once('listening', resolve));
    await symlink('/dev/null', join(folder, 'to-device.onnx'));
    try {
      // A device node itself is only checked, never written at: were the check broken, a test run as root would replace it.
      await expect(checkOutputPath('/dev/null')).rejects.toMatchObject({ code: 'NOT_A_FILE', message: expect.stringMatching(/is a character device/) });
      const cases: Array<[string, RegExp]> = [
        [join(folder, 'fifo.onnx'), /is a FIFO/],
        [join(folder, 'dir.onnx'), /is a directory/],
        [join(folder, 'socket.onnx'), /is a socket/],
        [join(folder, 'to-device.onnx'), /is a symbolic link to a character device/],
      ];
      for (const [path, kind] of cases) {
        await expect(checkOutputPath(path), path).rejects.toMatchObject({ code: 'NOT_A_FILE', message: expect.stringMatching(kind) });
        await expect(writeModel(smallModel(), path), path).rejects.toMatchObject({ code: 'NOT_A_FILE' });
      }
      // `<out>.data` is replaced (external data) or removed (inline) by a write: it is checked too.
      execFileSync('mkfifo', [join(folder, 'model.onnx.data')]);
      await expect(writeModel(smallModel(), join(folder, 'model.onnx'))).rejects.toMatchObject({ code: 'NOT_A_FILE', message: expect.stringContaining('model.onnx.data is a FIFO') });
      expect((await lstat(join(folder, 'fifo.onnx'))).isFIFO()).toBe(true);
      expect((await lstat(join(folder, 'model.onnx.data'))).isFIFO()).toBe(true);
      expect((await readdir(folder)).sort()).toEqual(['dir.onnx', 'fifo.onnx', 'model.onnx.data', 'socket.onnx', 'to-device.onnx']);
    } finally {
      server.close();
    }
  });

  it('replaces a symlink to a regular file with the model, and leaves the file it pointed at alone', async () => {
    const folder = join(dir, 'links');
    await mkdir(folder);
    await writeFile(join(folder, 'target.onnx'), 'someone else\'s file');
    await symlink(join(folder, 'target.onnx'), join(folder, 'out.onnx'));
    await writeModel(smallModel(), join(folder, 'out.onnx'));
    expect((await lstat(join(folder, 'out.onnx'))).isFile()).toBe(true);
    expect(await readFile(join(folder, 'target.onnx'), 'utf8')).toBe("someone else's file");
    // A link planted at the temporary's name is not written through either.
    await writeFile(join(folder, 'victim'), 'precious');
    await symlink(join(folder, 'victim'), join(folder, 'again.onnx.partial'));
    await writeModel(smallModel(), join(folder, 'again.onnx'));
    expect(await readFile(join(folder, 'victim'), 'utf8')).toBe('precious');
    expect((await readdir(folder)).sort()).toEqual(['again.onnx', 'out.onnx', 'target.onnx', 'victim']);
  });

  for (const external of [false, true]) {
    it(`leaves no partial file and the previous model intact when a tensor fails or the write is aborted${external ? ' (external data)' : ''}`, async () => {
      const folder = join(dir, `failures-${external}`);
      await mkdir(folder);
      const out = join(folder, 'model.onnx');
      await writeModel(smallModel(), out, { externalData: external });
      const before = await readFile(out);
      await expect(writeModel(smallModel({ failAt: 2 }), out, { externalData: external })).rejects.toThrow('cannot read w2');
      const controller = new AbortController();
      const aborted = writeModel(smallModel({ during: { at: 1, run: () => controller.abort() } }), out, { externalData: external, signal: controller.signal });
      await expect(aborted).rejects.toMatchObject({ code: 'ABORTED' });
      expect((await readdir(folder)).sort()).toEqual(external ? ['model.onnx', 'model.onnx.data'] : ['model.onnx']);
      expect((await readFile(out)).equals(before)).toBe(true);
    });
  }

  it('writes to any legal file name: a 251-character one has no room for `.partial`, its temporary a short name', async () => {
    const folder = join(dir, 'long-name');
    await mkdir(folder);
    const out = join(folder, `${'m'.repeat(246)}.onnx`);
    const written = await writeModel(smallModel(), out);
    expect(written.bytes).toBeGreaterThan(16_000);
    expect(await readdir(folder)).toEqual([`${'m'.repeat(246)}.onnx`]);
    await expect(writeModel(smallModel(), out, { externalData: true })).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/longer than 255 bytes/) });
  });
});
