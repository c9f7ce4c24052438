import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { ErrorCodes, isRetriable, type ErrorCode } from '../../shared/errors/index.ts';
import { materialize, recipeArb, type Recipe, type Seed } from './mutations.ts';
import type { Target } from './targets.ts';
import type { Outcome, RunReply } from './worker.ts';

/**
 * The fuzzing loop shared by the short test (fuzz.test.ts) and the long runner (run.ts): inputs
 * from fast-check's arbitraries over a target's seeds, run one at a time in a worker thread, each
 * judged against the properties below; distinct failures are minimized and can be kept as
 * regression fixtures in test/fuzz/regressions/<target>/.
 *
 * Properties, per input (DESIGN §4 Bounds, §6):
 *   - only a HeimdallError escapes, with a known, non-retriable code (bad content is never IO_ERROR);
 *   - it takes at most `timeMs` of CPU (and is stopped as a hang after `hangMs` of wall time);
 *   - it grows neither the heap (+ array buffers) nor the process's peak RSS by more than `memoryBytes`.
 */

export interface Limits {
  /** Most CPU time one input may take. */
  readonly timeMs: number;
  /** Most memory one input may add (heap + external while its result is held, or peak RSS). */
  readonly memoryBytes: number;
  /** An input still running after this long is stopped (its worker is terminated): a hang. */
  readonly hangMs: number;
}

/** Growth past which the next input starts with a garbage collection. */
const DIRTY_BYTES = 16 * 1024 * 1024;

export const DEFAULT_LIMITS: Limits = { timeMs: 2_000, memoryBytes: 256 * 1024 * 1024, hangMs: 15_000 };

export type RunResult =
  | RunReply
  | { readonly outcome: { readonly kind: 'hang' | 'crash'; readonly message: string }; readonly ms: number; readonly cpuMs: number; readonly heapGrowth: 0; readonly peakRssGrowth: 0 };

export type VerdictKind = 'crash' | 'hang' | 'untyped-error' | 'unknown-code' | 'retriable-code' | 'memory' | 'slow';

export interface Verdict {
  readonly kind: VerdictKind;
  /** One line: what went wrong. */
  readonly summary: string;
  /** What makes two failures the same bug (message with its numbers masked, plus where it was thrown). */
  readonly signature: string;
}

const KNOWN_CODES = new Set<string>(Object.values(ErrorCodes));
/** Errors that mean the code itself went wrong, not the input (even when re-thrown under a code). */
const PROGRAMMING_ERRORS = new Set(['TypeError', 'RangeError', 'ReferenceError', 'AssertionError']);

/** The first frame of the project's own code in a stack, as `function (file)`. */
function projectFrame(stack: string): string {
  for (const line of stack.split('\n').slice(1)) {
    const m = /at (?:(.+?) \()?.*?\/((?:shared|functions|test)\/[^:)]+)/.exec(line);
    if (m && !m[2]!.startsWith('test/fuzz/')) return `${m[1] ?? '<anonymous>'} (${m[2]})`;
  }
  return '';
}

const mask = (message: string) =>
  message
    .replace(/0x[0-9a-f]+/gi, '#')
    .replace(/\d+(\.\d+)?(e[+-]?\d+)?/gi, '#')
    .replace(/"[^"]*"|'[^']*'/g, (s) => (s.length > 24 ? `${s[0]}…${s[0]}` : s))
    .slice(0, 160);

function outcomeLine(outcome: Outcome | RunResult['outcome']): string {
  switch (outcome.kind) {
    case 'ok':
      return 'returned';
    case 'heimdall':
      return `${outcome.code}: ${outcome.message}`;
    case 'error':
      return `${outcome.name}: ${outcome.message}`;
    default:
      return `${outcome.kind}: ${outcome.message}`;
  }
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

/** The first property the result breaks, or undefined when it keeps them all. */
export function judge(result: RunResult, limits: Limits = DEFAULT_LIMITS): Verdict | undefined {
  const o = result.outcome;
  const what = o.kind === 'heimdall' ? o.code : o.kind === 'error' ? o.name : o.kind;
  if (o.kind === 'crash' || o.kind === 'hang') {
    const kind = o.kind === 'crash' && /OUT_OF_MEMORY|heap out of memory/i.test(o.message) ? 'memory' : o.kind;
    return { kind, summary: `${o.kind}: ${o.message}`, signature: `${kind}:${mask(o.message)}` };
  }
  if (o.kind === 'error') {
    const frame = projectFrame(o.stack);
    return { kind: 'untyped-error', summary: `${o.name}: ${o.message}${frame ? ` at ${frame}` : ''}`, signature: `untyped-error:${o.name}:${mask(o.message)}:${frame}` };
  }
  if (o.kind === 'heimdall') {
    if (!KNOWN_CODES.has(o.code)) return { kind: 'unknown-code', summary: `unknown error code ${o.code}: ${o.message}`, signature: `unknown-code:${o.code}` };
    if (isRetriable(o.code as ErrorCode)) return { kind: 'retriable-code', summary: `retriable ${o.code} for bad content: ${o.message}`, signature: `retriable-code:${o.code}:${mask(o.message)}` };
  }
  const memory = Math.max(result.heapGrowth, result.peakRssGrowth);
  if (memory > limits.memoryBytes) {
    return { kind: 'memory', summary: `${mb(memory)} for one input (limit ${mb(limits.memoryBytes)}); it ${outcomeLine(o)}`, signature: `memory:${what}:${o.kind === 'heimdall' ? mask(o.message) : ''}` };
  }
  // CPU time, not wall time: the verdict must not depend on what else runs on the machine.
  if (result.cpuMs > limits.timeMs) {
    return { kind: 'slow', summary: `${(result.cpuMs / 1000).toFixed(1)} s of CPU (${(result.ms / 1000).toFixed(1)} s wall) for one input (limit ${limits.timeMs / 1000} s); it ${outcomeLine(o)}`, signature: `slow:${what}:${o.kind === 'heimdall' ? mask(o.message) : ''}` };
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The worker

/** One worker thread running inputs one at a time, restarted after a hang or a crash. */
export class FuzzWorker {
  private worker: Worker | undefined;
  private ready: Promise<Worker> | undefined;
  private nextId = 0;
  /** Restarts after hangs and crashes. */
  restarts = 0;

  constructor(private readonly dir: string) {}

  /** Starts the thread now (it takes a second: tsx and the targets' modules load), so no input's time pays for it. */
  async warm(): Promise<void> {
    await this.start();
  }

  private start(): Promise<Worker> {
    if (this.ready) return this.ready;
    const module = new URL('./worker.ts', import.meta.url);
    const tsx = import.meta.resolve('tsx/esm/api');
    const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(module.href)});`;
    const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), {
      workerData: { dir: this.dir },
      // A heap blow-up ends this thread (ERR_WORKER_OUT_OF_MEMORY), reported as a memory failure.
      resourceLimits: { maxOldGenerationSizeMb: 2048 },
    });
    this.ready = new Promise<Worker>((resolve, reject) => {
      const onMessage = (m: { ready?: boolean }) => {
        if (!m.ready) return;
        worker.off('error', onError);
        resolve(worker);
      };
      const onError = (error: Error) => reject(error);
      worker.on('message', onMessage);
      worker.once('error', onError);
    });
    this.worker = worker;
    return this.ready;
  }

  private async kill(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    this.ready = undefined;
    this.restarts++;
    await worker?.terminate();
  }

  /** The previous input left this much behind (or took it at its peak): collect garbage before the next. */
  private dirty = false;

  async run(target: string, bytes: Uint8Array, hangMs: number, options: { gc?: boolean } = {}): Promise<RunResult> {
    const worker = await this.start();
    const gc = options.gc === true || this.dirty;
    const id = ++this.nextId;
    return new Promise<RunResult>((resolve) => {
      const started = performance.now();
      // This thread idles while the worker runs: it samples the process's RSS, so that memory taken
      // and given back within one input still shows (the peak-RSS counter only moves past its old high).
      const rssBefore = process.memoryUsage.rss();
      let rssPeak = rssBefore;
      const sampler = setInterval(() => {
        rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
      }, 2);
      const done = (result: RunResult) => {
        clearInterval(sampler);
        clearTimeout(timer);
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        resolve(result);
      };
      const failed = (kind: 'hang' | 'crash', message: string) => {
        const ms = performance.now() - started;
        done({ outcome: { kind, message }, ms, cpuMs: ms, heapGrowth: 0, peakRssGrowth: 0 });
        void this.kill();
      };
      const onMessage = (reply: RunReply) => {
        if (reply.id !== id) return;
        rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
        const result = { ...reply, peakRssGrowth: Math.max(reply.peakRssGrowth, rssPeak - rssBefore) };
        this.dirty = Math.max(result.heapGrowth, result.peakRssGrowth) > DIRTY_BYTES;
        done(result);
      };
      const onError = (error: Error & { code?: string }) => failed('crash', `worker died: ${error.code ? `${error.code} ` : ''}${error.message}`);
      const onExit = (code: number) => failed('crash', `worker exited with code ${code}`);
      const timer = setTimeout(() => failed('hang', `still running after ${hangMs / 1000} s, worker terminated`), hangMs);
      worker.on('message', onMessage);
      worker.once('error', onError);
      worker.once('exit', onExit);
      worker.postMessage({ id, target, bytes, gc });
    });
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    this.ready = undefined;
    await worker?.terminate();
  }
}

// ---------------------------------------------------------------------------------------------
// Campaigns

export interface Failure {
  readonly target: string;
  readonly verdict: Verdict;
  readonly recipe: Recipe;
  /** What the (minimized) recipe does, one line per step. */
  readonly steps: readonly string[];
  readonly input: Uint8Array;
  readonly result: RunResult;
  /** How many inputs failed the same way. */
  count: number;
  /** Mutations before minimization. */
  readonly originalMutations: number;
}

export interface TargetStats {
  readonly target: string;
  inputs: number;
  failingInputs: number;
  readonly failures: Failure[];
  elapsedMs: number;
  /** Time inside the target (worker-measured), summed. */
  runMs: number;
  /** How inputs ended: `ok`, an error code, or a failure kind. */
  readonly outcomes: Map<string, number>;
  /** CPU time of the slowest input. */
  slowest: number;
  /**
   * Programming errors (TypeError, RangeError, ...) a reader caught and re-threw under a typed code:
   * they keep the properties, but each is a check the reader lacks. By signature, with one example.
   */
  readonly masked: Map<string, { summary: string; count: number; steps: readonly string[] }>;
  /** Recipes the harness itself could not turn into an input (a bug of the harness, not of the target). */
  harnessErrors: number;
  harnessError?: string;
}

export interface CampaignOptions {
  readonly target: Target;
  readonly seeds: readonly Seed[];
  readonly worker: FuzzWorker;
  /** fast-check seed: the same seed gives the same inputs, in the same order. */
  readonly seed: number;
  readonly budgetMs: number;
  /** Stop after this many inputs even if time is left. */
  readonly maxInputs?: number;
  readonly limits?: Limits;
  /** Time and tries spent minimizing each distinct failure. */
  readonly minimize?: { readonly maxRuns: number; readonly maxMs: number };
  /** Failures already found (by signature), e.g. in earlier slices of a long run: counted, not reported again. */
  readonly known?: Map<string, Failure>;
  /** Run the seeds unmutated first (default true). */
  readonly runSeeds?: boolean;
  readonly onProgress?: (stats: TargetStats) => void;
  readonly onFailure?: (failure: Failure, stats: TargetStats) => void | Promise<void>;
}

const BATCH = 100;

/** Fuzzes one target for `budgetMs`: the seeds as they are first, then mutated inputs. */
export async function fuzzTarget(options: CampaignOptions): Promise<TargetStats> {
  const { target, seeds, worker } = options;
  const limits = options.limits ?? DEFAULT_LIMITS;
  const minimizeBudget = options.minimize ?? { maxRuns: 40, maxMs: 15_000 };
  const stats: TargetStats = { target: target.name, inputs: 0, failingInputs: 0, failures: [], elapsedMs: 0, runMs: 0, outcomes: new Map(), slowest: 0, harnessErrors: 0, masked: new Map() };
  const started = performance.now();
  const bySignature = options.known ?? new Map<string, Failure>();
  const timeLeft = () => options.budgetMs - (performance.now() - started);

  const runOne = async (recipe: Recipe) => {
    const { input, log } = materialize(recipe, seeds);
    let result = await worker.run(target.name, input, limits.hangMs);
    let verdict = judge(result, limits);
    // Timing on shared cores is noisy, and memory figures carry the previous input's garbage: a slow
    // or memory-hungry input counts only if it is so twice (the second time after a collection).
    if (verdict?.kind === 'slow' || (verdict?.kind === 'memory' && result.outcome.kind !== 'crash')) {
      const again = await worker.run(target.name, input, limits.hangMs, { gc: true });
      if (!judge(again, limits)) verdict = undefined;
      else result = again.cpuMs < result.cpuMs ? again : result;
    }
    return { input, log, result, verdict };
  };

  const record = async (recipe: Recipe, run: Awaited<ReturnType<typeof runOne>>) => {
    stats.inputs++;
    stats.runMs += run.result.ms;
    stats.slowest = Math.max(stats.slowest, run.result.cpuMs);
    const o = run.result.outcome;
    const key = run.verdict ? run.verdict.kind : o.kind === 'heimdall' ? `${o.code}${o.wrapped ? `<${o.wrapped.name}>` : ''}` : o.kind;
    stats.outcomes.set(key, (stats.outcomes.get(key) ?? 0) + 1);
    if (!run.verdict && o.kind === 'heimdall' && o.wrapped && PROGRAMMING_ERRORS.has(o.wrapped.name)) {
      const frame = projectFrame(o.wrapped.stack);
      const signature = `${o.code}:${o.wrapped.name}:${mask(o.wrapped.message)}:${frame}`;
      const seen = stats.masked.get(signature);
      if (seen) seen.count++;
      else stats.masked.set(signature, { summary: `${o.code} wrapping ${o.wrapped.name}: ${o.wrapped.message}${frame ? ` at ${frame}` : ''}`, count: 1, steps: run.log });
    }
    if (!run.verdict) return;
    stats.failingInputs++;
    const known = bySignature.get(run.verdict.signature);
    if (known) {
      known.count++;
      return;
    }
    const minimized = await minimize(recipe, run, run.verdict.signature);
    const failure: Failure = {
      target: target.name,
      verdict: minimized.verdict,
      recipe: minimized.recipe,
      steps: minimized.log,
      input: minimized.input,
      result: minimized.result,
      count: 1,
      originalMutations: recipe.json.length + recipe.mutations.length,
    };
    bySignature.set(run.verdict.signature, failure);
    stats.failures.push(failure);
    await options.onFailure?.(failure, stats);
  };

  /** Drops mutations one at a time while the input still fails the same way; then shortens repeats. */
  const minimize = async (recipe: Recipe, run: Awaited<ReturnType<typeof runOne>> & { verdict: Verdict | undefined }, signature: string) => {
    let best = { recipe, ...run, verdict: run.verdict! };
    if (best.verdict.kind === 'hang' || best.verdict.kind === 'crash') return best;
    const deadline = performance.now() + Math.min(minimizeBudget.maxMs, Math.max(minimizeBudget.maxMs / 4, timeLeft() / 2));
    let runs = 0;
    const attempt = async (candidate: Recipe) => {
      if (runs >= minimizeBudget.maxRuns || performance.now() > deadline) return false;
      runs++;
      const r = await runOne(candidate).catch(() => undefined);
      if (!r || r.verdict?.signature !== signature) return false;
      best = { recipe: candidate, ...r, verdict: r.verdict };
      return true;
    };
    for (let progress = true; progress; ) {
      progress = false;
      for (const field of ['json', 'mutations'] as const) {
        for (let i = best.recipe[field].length - 1; i >= 0; i--) {
          const list = best.recipe[field].filter((_, j) => j !== i);
          if (await attempt({ ...best.recipe, [field]: list })) progress = true;
        }
      }
    }
    // Smaller repeats: halve while it still fails.
    for (let i = 0; i < best.recipe.mutations.length; i++) {
      for (;;) {
        const m = best.recipe.mutations[i]!;
        const smaller =
          m.op === 'repeat' && m.times > 1 ? { ...m, times: Math.floor(m.times / 2) } : (m.op === 'delete' || m.op === 'duplicate') && m.length > 1 ? { ...m, length: Math.floor(m.length / 2) } : undefined;
        if (!smaller) break;
        const mutations = best.recipe.mutations.map((x, j) => (j === i ? smaller : x));
        if (!(await attempt({ ...best.recipe, mutations }))) break;
      }
    }
    return best;
  };

  // The seeds themselves must pass.
  for (let s = 0; s < (options.runSeeds === false ? 0 : seeds.length); s++) {
    const recipe: Recipe = { seed: s, json: [], mutations: [] };
    await record(recipe, await runOne(recipe));
  }
  const arb = recipeArb(seeds);
  for (let batch = 0; timeLeft() > 0 && (options.maxInputs === undefined || stats.inputs < options.maxInputs); batch++) {
    const recipes = fc.sample(arb, { seed: (options.seed + Math.imul(batch, 0x9e3779b1)) | 0, numRuns: BATCH });
    for (const recipe of recipes) {
      if (timeLeft() <= 0 || (options.maxInputs !== undefined && stats.inputs >= options.maxInputs)) break;
      let run: Awaited<ReturnType<typeof runOne>>;
      try {
        run = await runOne(recipe);
      } catch (error) {
        stats.harnessErrors++;
        stats.harnessError ??= `${(error as Error).stack ?? String(error)}\n  recipe: ${JSON.stringify(recipe, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))}`;
        continue;
      }
      await record(recipe, run);
      stats.elapsedMs = performance.now() - started;
      options.onProgress?.(stats);
    }
  }
  stats.elapsedMs = performance.now() - started;
  return stats;
}

// ---------------------------------------------------------------------------------------------
// Reports

export function describeFailure(failure: Failure): string {
  const r = failure.result;
  const lines = [
    `[${failure.target}] ${failure.verdict.kind}: ${failure.verdict.summary}`,
    `  ${failure.count} failing input(s) alike; minimized from ${failure.originalMutations} to ${failure.recipe.json.length + failure.recipe.mutations.length} mutation(s), ${failure.input.byteLength} bytes, ${r.cpuMs.toFixed(0)} ms CPU`,
    ...failure.steps.map((s) => `    ${s}`),
  ];
  return lines.join('\n');
}

export function formatStats(stats: TargetStats): string {
  const rate = stats.inputs / Math.max(stats.elapsedMs / 1000, 1e-9);
  const outcomes = [...stats.outcomes]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 5)
    .map(([k, n]) => `${k} ${((100 * n) / Math.max(stats.inputs, 1)).toFixed(0)}%`)
    .join(', ');
  const harness = stats.harnessErrors > 0 ? `\n  ${stats.harnessErrors} harness errors, first: ${stats.harnessError}` : '';
  const masked = [...stats.masked.values()].map((m) => `\n  masked (${m.count}x): ${m.summary}\n${m.steps.map((s) => `      ${s}`).join('\n')}`).join('');
  const perInput = stats.runMs / Math.max(stats.inputs, 1);
  return `${stats.target.padEnd(22)} ${String(stats.inputs).padStart(7)} inputs ${rate.toFixed(0).padStart(5)}/s  ${String(stats.failures.length).padStart(2)} distinct failures (${stats.failingInputs} inputs)  ${(stats.elapsedMs / 1000).toFixed(1)} s  target ${perInput.toFixed(1)} ms/input, slowest ${stats.slowest.toFixed(0)} ms CPU  [${outcomes}]${harness}${masked}`;
}

// ---------------------------------------------------------------------------------------------
// Regression fixtures

export const REGRESSIONS_DIR = fileURLToPath(new URL('./regressions/', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

export interface RegressionFile {
  readonly target: string;
  readonly path: string;
  /** The .json beside it, when there is one. */
  readonly info?: { readonly kind?: string; readonly summary?: string };
}

/** Keeps a failing input as `regressions/<target>/<sha256 prefix>.bin`, with a .json saying how it failed. */
export async function saveRegression(failure: Failure, context: { seed: number }, root = REGRESSIONS_DIR): Promise<string> {
  const sha256 = createHash('sha256').update(failure.input).digest('hex');
  const dir = join(root, failure.target);
  const path = join(dir, `${sha256.slice(0, 16)}.bin`);
  await mkdir(dir, { recursive: true });
  await writeFile(path, failure.input);
  const info = {
    target: failure.target,
    kind: failure.verdict.kind,
    summary: failure.verdict.summary,
    signature: failure.verdict.signature,
    // Stack frames name this machine's paths: kept relative to the repository.
    outcome: JSON.parse(JSON.stringify(failure.result.outcome).replaceAll(`${REPO_ROOT}/`, '')),
    ms: Math.round(failure.result.ms),
    cpuMs: Math.round(failure.result.cpuMs),
    memoryBytes: Math.max(failure.result.heapGrowth, failure.result.peakRssGrowth),
    input: { bytes: failure.input.byteLength, sha256 },
    steps: failure.steps,
    recipe: failure.recipe,
    fuzzSeed: context.seed,
    found: new Date().toISOString(),
  };
  await writeFile(path.replace(/\.bin$/, '.json'), `${JSON.stringify(info, (_, v) => (typeof v === 'bigint' ? `${v}n` : v), 2)}\n`);
  return path;
}

/** Every kept input, by target (synchronous: test files list them while being collected). */
export function listRegressions(root = REGRESSIONS_DIR): RegressionFile[] {
  if (!existsSync(root)) return [];
  const out: RegressionFile[] = [];
  for (const target of readdirSync(root, { withFileTypes: true })) {
    if (!target.isDirectory()) continue;
    for (const file of readdirSync(join(root, target.name)).sort()) {
      if (!file.endsWith('.bin')) continue;
      const path = join(root, target.name, file);
      const json = path.replace(/\.bin$/, '.json');
      let info: RegressionFile['info'];
      try {
        info = existsSync(json) ? (JSON.parse(readFileSync(json, 'utf8')) as RegressionFile['info']) : undefined;
      } catch {
        info = undefined;
      }
      out.push({ target: target.name, path, ...(info ? { info } : {}) });
    }
  }
  return out;
}

/** Runs a kept input again: the verdict (undefined once it passes) and the result. */
export async function replayRegression(worker: FuzzWorker, file: RegressionFile, limits: Limits = DEFAULT_LIMITS): Promise<{ verdict: Verdict | undefined; result: RunResult }> {
  const bytes = new Uint8Array(readFileSync(file.path));
  let result = await worker.run(file.target, bytes, limits.hangMs, { gc: true });
  let verdict = judge(result, limits);
  if (verdict?.kind === 'slow' || (verdict?.kind === 'memory' && result.outcome.kind !== 'crash')) {
    result = await worker.run(file.target, bytes, limits.hangMs, { gc: true });
    verdict = judge(result, limits);
  }
  return { verdict, result };
}

export const regressionName = (file: RegressionFile) => `${file.target}/${basename(file.path)}`;
