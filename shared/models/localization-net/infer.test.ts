import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/support/temp.ts';
import { SMALL_SPEC } from '../../../test/support/small-model.ts';
import type { LazyTensor } from '../../checkpoint/index.ts';
import { CONVNEXT_PRESETS, specForVariant, stateDictEntries } from './architecture.ts';
import { exportCheckpoint } from './export.ts';
import { inferArchitecture, parameterCount } from './infer.ts';
import { writeSampleCheckpoint } from './sample-weights.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

/** Shapes only: inference never reads values. */
const shapesOf = (entries: { name: string; shape: readonly number[] }[]) =>
  new Map<string, LazyTensor>(
    entries.map((e) => [e.name, { dtype: 'float32', shape: e.shape, numel: 0, readFloat32: () => Promise.reject(new Error('not read')) }]),
  );

describe('inferArchitecture', () => {
  for (const variant of Object.keys(CONVNEXT_PRESETS)) {
    it(`recognises ConvNeXt-${variant} from names and shapes alone`, () => {
      const spec = inferArchitecture(shapesOf(stateDictEntries(specForVariant(variant, { positionHidden: [64, 32], uncertaintyHidden: [48, 24] }))));
      expect(spec).toMatchObject({ variant, ...CONVNEXT_PRESETS[variant], positionHidden: [64, 32], uncertaintyHidden: [48, 24] });
    });
  }

  it('counts parameters as torch does (running statistics excluded)', () => {
    // torchvision convnext_tiny has 28,589,128 parameters; minus its classifier (768*1000 + 1000 + 2*768 LayerNorm) = 27,818,592.
    const backbone = 27_818_592;
    const heads = (768 * 256 + 256 + 2 * 256) + (256 * 128 + 128 + 2 * 128) + (128 * 2 + 2);
    expect(parameterCount(specForVariant('tiny'))).toBe(backbone + 2 * heads);
  });

  it('takes the uncertainty range from the checkpoint config, numbers or decimal strings (safetensors metadata)', () => {
    const tensors = shapesOf(stateDictEntries(specForVariant('tiny')));
    expect(inferArchitecture(tensors, { uncertainty_min: '0.05', uncertainty_max: 0.8 })).toMatchObject({ uncertaintyMin: 0.05, uncertaintyMax: 0.8 });
    expect(inferArchitecture(tensors, { uncertainty_min: '5e-3', uncertainty_max: '+2.5' })).toMatchObject({ uncertaintyMin: 0.005, uncertaintyMax: 2.5 });
    expect(inferArchitecture(tensors, { uncertainty_min: null, lr: 'not a number' })).toMatchObject({ uncertaintyMin: 0.01, uncertaintyMax: 1 });
    expect(inferArchitecture(tensors)).toMatchObject({ uncertaintyMin: 0.01, uncertaintyMax: 1 });
  });

  describe('refuses a config the clamp range cannot come from, with INVALID_CONFIG naming the key', () => {
    const tensors = shapesOf(stateDictEntries(specForVariant('tiny')));
    const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
      ['hex string (was read as 16)', { uncertainty_min: '0x10' }, 'uncertainty_min', /must be a number, got "0x10"/],
      ['"Infinity" string', { uncertainty_max: 'Infinity' }, 'uncertainty_max', /must be a number/],
      ['blank string', { uncertainty_max: ' ' }, 'uncertainty_max', /must be a number/],
      ['boolean', { uncertainty_max: true }, 'uncertainty_max', /must be a number, got true/],
      ['list', { uncertainty_min: [0.1] }, 'uncertainty_min', /must be a number, got a list of 1/],
      ['object', { uncertainty_max: { value: 1 } }, 'uncertainty_max', /must be a number, got an object/],
      ['NaN', { uncertainty_min: Number.NaN }, 'uncertainty_min', /must be a finite number/],
      ['infinite', { uncertainty_max: Number.POSITIVE_INFINITY }, 'uncertainty_max', /must be a finite number/],
      ['negative range (was registered)', { uncertainty_min: -5, uncertainty_max: -1 }, 'uncertainty_min', /must be greater than 0/],
      ['zero minimum', { uncertainty_min: 0 }, 'uncertainty_min', /must be greater than 0/],
      ['minimum that float32 rounds to 0', { uncertainty_min: 1e-50 }, 'uncertainty_min', /must be greater than 0 \(in float32\)/],
      ['maximum that is Inf in float32 (was exported as Inf)', { uncertainty_max: 1e308 }, 'uncertainty_max', /must be finite in float32, got 1e\+308/],
      ['-1e308', { uncertainty_min: -1e308 }, 'uncertainty_min', /must be finite in float32/],
      ['empty range', { uncertainty_min: 0.5, uncertainty_max: 0.5 }, 'uncertainty_max', /must be greater than uncertainty_min/],
      ['range empty in float32', { uncertainty_min: 1, uncertainty_max: 1 + 1e-12 }, 'uncertainty_max', /must be greater than uncertainty_min \(1\) in float32/],
      ['minimum above the default maximum', { uncertainty_min: 2 }, 'uncertainty_min', /must be below uncertainty_max \(not given: 1 by default\)/],
    ];
    for (const [what, config, key, message] of cases) {
      it(what, () => {
        expect(() => inferArchitecture(tensors, config)).toThrowError(
          expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(new RegExp(`^config ${key} ${message.source}`)) }),
        );
      });
    }

    it('as export meets it: a checkpoint whose config registers a negative range exports nothing', async () => {
      const path = join(dir, 'negative.pth');
      await writeSampleCheckpoint(path, { variant: 'custom', spec: { ...SMALL_SPEC, uncertaintyMin: -5, uncertaintyMax: -1 }, seed: 1, layout: 'model_state_dict' });
      await expect(exportCheckpoint(path, join(dir, 'never.onnx'))).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: expect.stringMatching(/^config uncertainty_min must be greater than 0/) });
      expect(existsSync(join(dir, 'never.onnx'))).toBe(false);
    });

    it('reads only own keys: a config without them gets the defaults, whatever Object.prototype holds', () => {
      const config = Object.create({ uncertainty_min: 0.5, uncertainty_max: 0.6 }) as Record<string, unknown>;
      expect(inferArchitecture(tensors, config)).toMatchObject({ uncertaintyMin: 0.01, uncertaintyMax: 1 });
    });
  });

  it('names a custom width/depth "custom" and still builds it', () => {
    const spec = inferArchitecture(shapesOf(stateDictEntries({ ...specForVariant('tiny'), dims: [32, 64, 96, 128], depths: [2, 2, 4, 2] })));
    expect(spec).toMatchObject({ variant: 'custom', dims: [32, 64, 96, 128], depths: [2, 2, 4, 2] });
  });

  it('fails on missing head weights with INVALID_STATE_DICT', () => {
    const entries = stateDictEntries(specForVariant('tiny')).filter((e) => !e.name.startsWith('uncertainty_head.8'));
    expect(() => inferArchitecture(shapesOf(entries))).toThrowError(expect.objectContaining({ code: 'INVALID_STATE_DICT', message: expect.stringMatching(/uncertainty_head\.8\.weight/) }));
  });

  it('fails on another architecture with UNSUPPORTED_ARCHITECTURE, listing what it found', () => {
    const resnet = [
      { name: 'conv1.weight', shape: [64, 3, 7, 7] },
      { name: 'bn1.weight', shape: [64] },
      { name: 'layer1.0.conv1.weight', shape: [64, 64, 3, 3] },
      { name: 'fc.weight', shape: [1000, 512] },
    ];
    expect(() => inferArchitecture(shapesOf(resnet))).toThrowError(
      expect.objectContaining({ code: 'UNSUPPORTED_ARCHITECTURE', message: expect.stringMatching(/found 4 tensors: conv1\.weight \(1\), bn1\.weight \(1\), layer1\.0 \(1\), fc\.weight \(1\)/) }),
    );
  });

  it('fails on a weight with the wrong shape', () => {
    const entries = stateDictEntries(specForVariant('tiny')).map((e) => (e.name === 'backbone.0.1.0.block.3.weight' ? { ...e, shape: [100, 96] } : e));
    expect(() => inferArchitecture(shapesOf(entries))).toThrowError(expect.objectContaining({ code: 'UNSUPPORTED_ARCHITECTURE', message: expect.stringMatching(/block\.3\.weight \[100, 96\]/) }));
  });
});
