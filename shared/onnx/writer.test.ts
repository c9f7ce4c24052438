import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { GraphBuilder } from './graph-builder.ts';
import { TensorDataType } from './model.ts';
import { writeModel } from './writer.ts';

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
});
