import { AsyncLocalStorage } from 'node:async_hooks';
import type { ChildProcess } from 'node:child_process';
import { ErrorCodes, HeimdallError, type ErrorCode } from '../errors/index.ts';
import type { ExecutionProvider, SessionOptions } from './session.ts';
import type { TimingSettings } from './timing.ts';
import { startChild } from './worker.ts';

/**
 * The environment of the processes our sessions run in. glibc serves big allocations from mmap and
 * gives them back on free, but after the first such free it raises that threshold (up to 32 MiB),
 * and from then on a session's weights land in the heap, which is not given back: a large model's
 * session then peaked at 1.4 GB instead of 0.95 GB, about half of it still held after release(). A
 * fixed threshold (set before the process starts: glibc reads it once) keeps both the peak and what
 * release() leaves near the weights' own size.
 */
const SESSION_PROCESS_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: String(128 * 1024) };

/** A tensor as it crosses the process boundary: onnxruntime's element type, dims and values. */
export interface TensorValue {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: unknown;
}

export type ModelOutputs = Readonly<Record<string, TensorValue>>;
export type ModelFeeds = Readonly<Record<string, { readonly data: Float32Array; readonly dims: readonly number[] }>>;

/** What the benchmark asks of a hosted model: batch sizes in order, how long to time each, and the models to interleave with. */
export interface TimingRequest extends TimingSettings {
  readonly batches: readonly number[];
  /** Opened beside the model (same options) and timed interleaved with it, round by round: the alias holder, variants, their holders. */
  readonly companions?: readonly Companion[];
}

/** A model timed beside the hosted one. */
export interface Companion {
  readonly path: string;
  /** The warning when it does not load here (its figures are then absent): `no latency baseline: the alias holder's model does not load here`. */
  readonly unloadable: string;
}

/** One batch size's timings: the model's and each companion's, in the request's order (null: it did not load); every series has the same number of runs. */
export interface BatchTimed {
  readonly batch: number;
  readonly warmup: { readonly runs: number; readonly settled: boolean };
  readonly measureMs: number;
  readonly candidate: number[];
  readonly companions: (number[] | null)[];
}

export type HostRequest =
  | { kind: 'open'; path: string; options: SessionOptions }
  | { kind: 'run'; feeds: ModelFeeds }
  | { kind: 'time'; request: TimingRequest };

export type HostReply =
  | { kind: 'opened'; provider: ExecutionProvider; threads: number; createMs: number; warnings: readonly string[] }
  | { kind: 'outputs'; outputs: ModelOutputs }
  | ({ kind: 'batch' } & BatchTimed)
  | { kind: 'timed'; warnings: readonly string[] }
  | { kind: 'failed'; message: string; code?: ErrorCode };

/** An onnxruntime session in a process of its own (see openModel). */
export interface HostedModel {
  /** The process the session lives in. */
  readonly pid: number;
  /** The provider actually used: `cuda` falls back to `cpu` where CUDA is unavailable. */
  readonly provider: ExecutionProvider;
  readonly threads: number;
  /** How long creating the session took, when it was created. */
  readonly createMs: number;
  readonly warnings: readonly string[];
  /** The model's outputs for float32 inputs; rejects with onnxruntime's message when it cannot run them. */
  run(feeds: ModelFeeds): Promise<ModelOutputs>;
  /** The benchmark's timing loop (timing.ts) next to the session; `onBatch` as each batch size is done. Resolves to warnings about companions that did not load. */
  time(request: TimingRequest, onBatch: (timed: BatchTimed) => void): Promise<readonly string[]>;
  /** Done with it: the process ends (all the session's memory back with the system), unless a `withSharedModels` scope keeps it for the next stage. */
  close(): Promise<void>;
}

export interface OpenModelOptions {
  /** Ends the process and rejects what is pending with the signal's reason. */
  readonly signal?: AbortSignal;
  /** The model's sha256: inside a `withSharedModels` scope, a model opened with the same sha256 and options is the same session. */
  readonly sha256?: string;
}

/**
 * Opens a session on the model at `path` (session.ts's options) in a child process, and serves
 * runs and the benchmark's timing from there: inference is off this event loop, a native crash in
 * onnxruntime is an error of this run (IO_ERROR) rather than the end of the worker, and closing gives
 * every byte back, where a released session leaves much of its memory with the allocator of the
 * process it ran in. A model onnxruntime refuses is INVALID_MODEL.
 */
export async function openModel(path: string, options: SessionOptions = {}, open: OpenModelOptions = {}): Promise<HostedModel> {
  open.signal?.throwIfAborted();
  const shared = sharedModels.getStore();
  if (!shared || !open.sha256) return lease(await ModelHost.start().open(path, options, open.signal), open.signal, true);
  // The options as openSession reads them: an absent provider is the CPU, 0 threads one per core.
  const key = `${open.sha256} ${options.provider ?? 'cpu'} ${options.threads || 0}`;
  return lease(await shared.open(key, (host) => host.open(path, options, open.signal)), open.signal, false);
}

/**
 * Runs `work` with one session per model and options for all its stages (`heimdall run`: validate,
 * parity and the benchmark open the run's model once instead of three times), and ends them all
 * when it settles. A process for the first model is started at once, so that it has loaded
 * onnxruntime by the time the model exists (while ingest and export run).
 */
export async function withSharedModels<T>(work: () => Promise<T>): Promise<T> {
  const scope = new SharedModels();
  try {
    return await sharedModels.run(scope, work);
  } finally {
    await scope.close();
  }
}

const sharedModels = new AsyncLocalStorage<SharedModels>();

class SharedModels {
  private readonly hosts = new Map<string, Promise<ModelHost>>();
  /** Started, not yet serving a model. */
  private spare: ModelHost | undefined = ModelHost.start();

  async open(key: string, open: (host: ModelHost) => Promise<ModelHost>): Promise<ModelHost> {
    const known = this.hosts.get(key);
    // One that failed to open, or whose process has died since, is opened afresh.
    if (known && !(await known.then((host) => host.gone !== undefined, () => true))) return known;
    const spare = this.spare?.gone ? undefined : this.spare;
    this.spare = undefined;
    const opening = open(spare ?? ModelHost.start());
    this.hosts.set(key, opening);
    return opening;
  }

  async close(): Promise<void> {
    const hosts = [...this.hosts.values()];
    this.hosts.clear();
    await Promise.all([this.spare?.close(), ...hosts.map((h) => h.then((host) => host.close(), () => undefined))]);
    this.spare = undefined;
  }
}

function lease(host: ModelHost, signal: AbortSignal | undefined, owned: boolean): HostedModel {
  const { provider, threads, createMs, warnings } = host.opened;
  return {
    pid: host.pid,
    provider,
    threads,
    createMs,
    warnings,
    run: async (feeds) => {
      const reply = await host.request({ kind: 'run', feeds }, { signal });
      if (reply.kind !== 'outputs') throw new Error(`model host answered ${reply.kind} to run`);
      return reply.outputs;
    },
    time: async (request, onBatch) => {
      const reply = await host.request({ kind: 'time', request }, { signal, onBatch, failure: ErrorCodes.BENCHMARK_FAILED });
      if (reply.kind !== 'timed') throw new Error(`model host answered ${reply.kind} to time`);
      return reply.warnings;
    },
    close: async () => {
      if (owned) await host.close();
    },
  };
}

/** The parent's end of a model host process: one request at a time, answered by one reply (after `batch` messages, for timing). */
/** How long a failed request waits for the process's exit to be reported, which names its cause. */
const EXIT_REPORT_WAIT_MS = 2_000;

class ModelHost {
  /** Set once the process is gone: every request from then on rejects with it. */
  gone?: HeimdallError;
  private pending?: { resolve: (reply: HostReply) => void; reject: (error: unknown) => void };
  private readonly exited: Promise<void>;
  private info?: Extract<HostReply, { kind: 'opened' }>;

  private constructor(private readonly child: ChildProcess) {
    // A process that never started has no exit to wait for.
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()).once('error', () => resolve()));
    child.on('message', (reply: HostReply) => this.pending?.resolve(reply));
    child.once('exit', (code, signalName) => this.fail(new HeimdallError(ErrorCodes.IO_ERROR, `the onnxruntime process exited (${signalName ?? `code ${code}`}; out of memory?)`)));
    child.once('error', (error) => {
      const failure = new HeimdallError(ErrorCodes.IO_ERROR, `cannot run the onnxruntime process: ${error.message}`, { cause: error });
      // A request sent to a process that has just died fails before its exit is reported; the exit
      // says why (the signal, the code), so it goes first when it comes soon. A spawn that failed has no exit.
      if (child.pid === undefined) return this.fail(failure);
      const timer = setTimeout(() => this.fail(failure), EXIT_REPORT_WAIT_MS);
      child.once('exit', () => clearTimeout(timer));
    });
  }

  /** A process, started: it loads onnxruntime while the caller gets on with its work. */
  static start(): ModelHost {
    return new ModelHost(startChild(new URL('./model-host-process.ts', import.meta.url), SESSION_PROCESS_ENV));
  }

  /** Opens the session this process serves; on failure the process is ended. */
  async open(path: string, options: SessionOptions, signal: AbortSignal | undefined): Promise<ModelHost> {
    try {
      const reply = await this.request({ kind: 'open', path, options }, { signal, failure: ErrorCodes.INVALID_MODEL });
      if (reply.kind !== 'opened') throw new Error(`model host answered ${reply.kind} to open`);
      this.info = reply;
      return this;
    } catch (error) {
      await this.close();
      throw error;
    }
  }

  get opened(): Extract<HostReply, { kind: 'opened' }> {
    return this.info!;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /**
   * Sends `request` and resolves to its reply; `batch` messages before it go to `onBatch`. A `failed`
   * reply rejects, with its code or `failure` (a run's failure is the caller's to name). When
   * `signal` fires, the process ends and the request rejects with the signal's reason.
   */
  request(request: HostRequest, { signal, failure, onBatch }: { signal?: AbortSignal | undefined; failure?: ErrorCode; onBatch?: (timed: BatchTimed) => void } = {}): Promise<HostReply> {
    if (this.pending) return Promise.reject(new Error('model host: one request at a time'));
    if (this.gone) return Promise.reject(this.gone);
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<HostReply>((resolve, reject) => {
      const abort = () => {
        this.fail(signal!.reason);
        this.child.kill('SIGKILL');
      };
      const done = () => {
        this.pending = undefined;
        signal?.removeEventListener('abort', abort);
      };
      this.pending = {
        resolve: (reply) => {
          if (reply.kind === 'batch') return onBatch?.(reply);
          done();
          if (reply.kind !== 'failed') return resolve(reply);
          const code = reply.code ?? failure;
          reject(code ? new HeimdallError(code, reply.message) : new Error(reply.message));
        },
        reject: (error) => {
          done();
          reject(error);
        },
      };
      signal?.addEventListener('abort', abort, { once: true });
      this.child.send(request);
    });
  }

  async close(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }

  private fail(error: unknown): void {
    if (error instanceof HeimdallError) this.gone ??= error;
    else this.gone ??= new HeimdallError(ErrorCodes.ABORTED, 'the onnxruntime process was stopped');
    this.pending?.reject(error);
  }
}
