import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';

export type ExecutionProvider = 'cpu' | 'cuda';

export interface SessionOptions {
  readonly provider?: ExecutionProvider;
  /** Intra-op threads; 0 or absent: one per core. */
  readonly threads?: number;
}

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
export async function openSession(path: string, options: SessionOptions = {}): Promise<OpenedSession> {
  const warnings: string[] = [];
  const threads = options.threads && options.threads > 0 ? options.threads : availableParallelism();
  const create = async (provider: ExecutionProvider) => {
    const started = performance.now();
    const session = await ort.InferenceSession.create(path, {
      executionProviders: [provider],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      // onnxruntime's intra-op threads busy-wait for work after each run unless told not to. They
      // must not: a session kept between stages (model-host.ts) would take a core from the next
      // stage's own work, and with the alias holder's session beside the candidate's, the idle
      // one's spinning threads take the cores the other is timed on (the same model against
      // itself, 20 runs of 250 ms at 2 threads on a loaded 2-core machine: ratios 0.65-1.52
      // spinning, 0.995-1.008 not).
      extra: { session: { intra_op: { allow_spinning: '0' } } },
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
