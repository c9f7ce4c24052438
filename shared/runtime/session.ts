import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';

export type ExecutionProvider = 'cpu' | 'cuda';

export interface OpenedSession {
  readonly session: ort.InferenceSession;
  /** The provider actually used: `cuda` falls back to `cpu` where CUDA is unavailable. */
  readonly provider: ExecutionProvider;
  readonly threads: number;
  readonly createMs: number;
  readonly warnings: readonly string[];
}

/**
 * Opens an inference session on the requested provider, timing its creation. `cuda` falls back to
 * `cpu` with a warning when the CUDA provider cannot load here (no GPU, or the CUDA binaries of
 * onnxruntime-node not installed: onnxruntime lists the backend either way, so only a try tells).
 */
export async function openSession(path: string, options: { provider?: ExecutionProvider; threads?: number; spinning?: boolean } = {}): Promise<OpenedSession> {
  const warnings: string[] = [];
  const threads = options.threads && options.threads > 0 ? options.threads : availableParallelism();
  const create = async (provider: ExecutionProvider) => {
    const started = performance.now();
    const session = await ort.InferenceSession.create(path, {
      executionProviders: [provider],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      // onnxruntime's intra-op threads busy-wait for work after each run unless told not to.
      ...(options.spinning === false ? { extra: { session: { intra_op: { allow_spinning: '0' } } } } : {}),
    });
    return { session, provider, threads, createMs: performance.now() - started, warnings };
  };
  if (options.provider === 'cuda') {
    try {
      return await create('cuda');
    } catch (error) {
      warnings.push(`CUDA execution provider unavailable (${firstLine(error)}); ran on CPU`);
    }
  }
  try {
    return await create('cpu');
  } catch (error) {
    throw new HeimdallError(ErrorCodes.INVALID_MODEL, `onnxruntime cannot load ${path}: ${firstLine(error)}`, { cause: error });
  }
}

const firstLine = (error: unknown) => (error instanceof Error ? error.message : String(error)).split('\n')[0]!.slice(0, 300);

/** A deterministic pseudo-random input batch in [-1, 1) (mel-spectrogram-like scale). */
export function sampleInput(batch: number, seed = 1): ort.Tensor {
  const data = new Float32Array(batch * 3 * 128 * 32);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < data.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    data[i] = (state >>> 0) / 2 ** 31 - 1;
  }
  return new ort.Tensor('float32', data, [batch, 3, 128, 32]);
}
