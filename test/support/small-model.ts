import { pyOrderedDict } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import type { LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';
import { sampleStateDict } from '../../shared/models/localization-net/sample-weights.ts';

/** A LocalizationNet with a miniature ConvNeXt: same structure as the real variants, kilobytes of weights. */
export const SMALL_SPEC: LocalizationNetSpec = {
  variant: 'custom',
  dims: [8, 16, 24, 32],
  depths: [1, 2, 1, 1],
  positionHidden: [16, 8],
  uncertaintyHidden: [12, 6],
  uncertaintyMin: 0.01,
  uncertaintyMax: 1.0,
};

/** A SMALL_SPEC checkpoint (bare state dict) whose tensor `poisoned` starts with the given values (NaN, Inf). */
export async function writeSmallCheckpoint(path: string, options: { seed?: number; poisoned?: string; values?: number[] } = {}): Promise<void> {
  const entries = sampleStateDict(SMALL_SPEC, options.seed ?? 5).map(({ name, tensor }) => {
    if (name !== options.poisoned) return [name, tensor] as const;
    const data = tensor.data() as Float32Array;
    data.set(options.values ?? [Number.NaN]);
    return [name, { ...tensor, data }] as const;
  });
  await writeTorchCheckpoint(path, pyOrderedDict(entries));
}
