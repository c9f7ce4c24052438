import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { openCheckpoint } from './index.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

/** A safetensors file from a header (an object, or JSON text as it is) and a data buffer, laid out as the format specifies. */
async function safetensorsFile(name: string, header: object | string, data: Uint8Array, headerLength?: bigint): Promise<string> {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
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

  it('reads a header padded with spaces, as the reference writer aligns it', async () => {
    const path = await safetensorsFile('padded.safetensors', `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}${' '.repeat(7)}`, f32(3));
    const checkpoint = await openCheckpoint(path);
    expect(Array.from(await checkpoint.tensors.get('a')!.readFloat32())).toEqual([3]);
    await checkpoint.close();
  });

  it('keeps metadata keys as own properties, "__proto__" included', async () => {
    const path = await safetensorsFile('proto-meta.safetensors', '{"__metadata__":{"__proto__":"x","uncertainty_min":"0.1"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', f32(3));
    const checkpoint = await openCheckpoint(path);
    expect(Object.getPrototypeOf(checkpoint.config)).toBe(Object.prototype);
    expect(Object.hasOwn(checkpoint.config, '__proto__')).toBe(true);
    expect(checkpoint.config['uncertainty_min']).toBe('0.1');
    await checkpoint.close();
  });

  describe('refuses headers that could mislead a reader, with SAFETENSORS_INVALID', () => {
    const entry = (fields: string) => `{"a":{${fields}}}`;
    const ok = '"shape":[1],"data_offsets":[0,4]';
    const cases: Array<[string, string, RegExp]> = [
      ['a dtype named __proto__ (walked the prototype chain: "shape needs NaN")', entry(`"dtype":"__proto__",${ok}`), /unsupported dtype "__proto__"/],
      ['a dtype named constructor', entry(`"dtype":"constructor",${ok}`), /unsupported dtype "constructor"/],
      ['a dtype named toString', entry(`"dtype":"toString",${ok}`), /unsupported dtype "toString"/],
      ['a dtype that is not a string', entry(`"dtype":["F32"],${ok}`), /unsupported dtype \["F32"\]/],
      ['a missing dtype', entry(ok), /unsupported dtype \(missing\)/],
      ['a duplicate tensor name', `{"a":{"dtype":"F32",${ok}},"a":{"dtype":"F32",${ok}}}`, /duplicate key "a"/],
      ['a duplicate field', entry(`"dtype":"F32","dtype":"F16",${ok}`), /duplicate key "dtype"/],
      ['two __metadata__', `{"__metadata__":{},"__metadata__":{},"a":{"dtype":"F32",${ok}}}`, /duplicate key "__metadata__"/],
      ['an entry that is a string', '{"a":"F32"}', /tensor a is a string, not an object/],
      ['an entry that is a list', '{"a":["F32",[1],[0,4]]}', /tensor a is an array, not an object/],
      ['an entry that is null', '{"a":null}', /tensor a is null, not an object/],
      ['an entry that is a number', '{"a":1}', /tensor a is a number, not an object/],
      ['metadata that is not a string map', `{"__metadata__":{"k":1},"a":{"dtype":"F32",${ok}}}`, /__metadata__\.k is a number, not a string/],
      ['a huge number', entry('"dtype":"F32","shape":[1e400],"data_offsets":[0,4]'), /number 1e400 out of range/],
      ['an offset past 2^53', entry('"dtype":"F32","shape":[1],"data_offsets":[18446744073709551616,18446744073709551620]'), /invalid data_offsets/],
      ['a fractional dimension', entry('"dtype":"F32","shape":[0.5],"data_offsets":[0,4]'), /invalid shape \[0\.5\]/],
      ['a negative dimension', entry('"dtype":"F32","shape":[-1],"data_offsets":[0,4]'), /invalid shape/],
      ['a shape whose product overflows', entry('"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]'), /too large: its size overflows/],
      ['trailing characters', `${entry(`"dtype":"F32",${ok}`)} x`, /trailing characters/],
      ['a lone value after the object', `${entry(`"dtype":"F32",${ok}`)}{}`, /trailing characters/],
      ['deep nesting', `{"a":${'['.repeat(5000)}${']'.repeat(5000)}}`, /nesting deeper than 16/],
      ['an unterminated string', '{"a', /unterminated string/],
      ['a control character in a string', '{"a\u0001":{}}', /malformed string/],
    ];
    for (const [what, header, message] of cases) {
      it(what, async () => {
        const path = await safetensorsFile(`case-${what.replace(/\W+/g, '-')}.safetensors`, header, f32(1));
        const error = await openCheckpoint(path).then(
          (c) => c.close().then(() => undefined),
          (e: unknown) => e,
        );
        expect(error).toMatchObject({ code: 'SAFETENSORS_INVALID', message: expect.stringMatching(message) });
      });
    }
  });

  it('refuses a declared header length beyond 2^53 without reading anything', async () => {
    const path = await safetensorsFile('huge-length.safetensors', { a: {} }, f32(1), (1n << 63n) + 5n);
    await expect(openCheckpoint(path)).rejects.toMatchObject({ code: 'SAFETENSORS_INVALID', message: expect.stringMatching(/exceeds/) });
  });
});
