import { describe, expect, it } from 'vitest';
import type { LazyTensor } from '../../checkpoint/index.ts';
import { CONVNEXT_PRESETS, specForVariant, stateDictEntries } from './architecture.ts';
import { inferArchitecture, parameterCount } from './infer.ts';

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

  it('takes the uncertainty range from the checkpoint config, numbers or strings', () => {
    const tensors = shapesOf(stateDictEntries(specForVariant('tiny')));
    expect(inferArchitecture(tensors, { uncertainty_min: '0.05', uncertainty_max: 0.8 })).toMatchObject({ uncertaintyMin: 0.05, uncertaintyMax: 0.8 });
    expect(inferArchitecture(tensors)).toMatchObject({ uncertaintyMin: 0.01, uncertaintyMax: 1 });
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
