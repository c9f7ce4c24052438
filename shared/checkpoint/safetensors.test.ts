import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { openCheckpoint } from './index.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

/** A safetensors file from a header object and a data buffer, laid out as the format specifies. */
async function safetensorsFile(name: string, header: object, data: Uint8Array, headerLength?: bigint): Promise<string> {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, headerLength ?? BigInt(json.byteLength), true);
  const path = join(dir, name);
  await writeFile(path, Buffer.concat([prefix, json, data]));
  return path;
}

const f32 = (...values: number[]) => new Uint8Array(new Float32Array(values).buffer);
const f16 = (...bits: number[]) => new Uint8Array(new Uint16Array(bits).buffer);

describe('safetensors checkpoints', () => {
  it('reads tensors lazily and metadata as config, converting f16 and bf16 to f32', async () => {
    const path = await safetensorsFile(
      'ok.safetensors',
      {
        __metadata__: { uncertainty_min: '0.05' },
        a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        half: { dtype: 'F16', shape: [2], data_offsets: [8, 12] },
        brain: { dtype: 'BF16', shape: [1], data_offsets: [12, 14] },
      },
      Buffer.concat([f32(1.5, -2), f16(0x3c00, 0xc000), f16(0x3fc0)]),
    );
    const checkpoint = await openCheckpoint(path);
    expect(checkpoint.format).toBe('safetensors');
    expect(checkpoint.config).toEqual({ uncertainty_min: '0.05' });
    expect(Array.from(await checkpoint.tensors.get('a')!.readFloat32())).toEqual([1.5, -2]);
    expect(Array.from(await checkpoint.tensors.get('half')!.readFloat32())).toEqual([1, -2]);
    expect(Array.from(await checkpoint.tensors.get('brain')!.readFloat32())).toEqual([1.5]);
    await checkpoint.close();
  });

  it('rejects overlapping offsets', async () => {
    const path = await safetensorsFile(
      'overlap.safetensors',
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
      f32(1, 2, 3),
    );
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'SAFETENSORS_INVALID', message: expect.stringMatching(/overlaps/) });
  });

  it('rejects a header over the 100 MB limit without reading it', async () => {
    const path = await safetensorsFile('huge-header.safetensors', { a: {} }, f32(1), 200_000_000n);
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'SAFETENSORS_INVALID', message: expect.stringMatching(/exceeds/) });
  });

  it('rejects trailing bytes after the last tensor', async () => {
    const path = await safetensorsFile('trailing.safetensors', { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(1, 2));
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'SAFETENSORS_INVALID', message: expect.stringMatching(/4 trailing bytes/) });
  });

  it('rejects offsets that disagree with the shape', async () => {
    const path = await safetensorsFile('shape.safetensors', { a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32(1, 2));
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'SAFETENSORS_INVALID', message: expect.stringMatching(/shape needs 12/) });
  });
});
