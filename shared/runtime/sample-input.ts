import { INPUT_SHAPE } from '../models/localization-net/architecture.ts';

/** A deterministic pseudo-random `[batch, 3, 128, 32]` input in [-1, 1) (mel-spectrogram-like scale). */
export function sampleInput(batch: number, seed = 1): Float32Array {
  const data = new Float32Array(batch * INPUT_SHAPE[0] * INPUT_SHAPE[1] * INPUT_SHAPE[2]);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < data.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    data[i] = (state >>> 0) / 2 ** 31 - 1;
  }
  return data;
}
