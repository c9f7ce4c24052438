import type { LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';

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
