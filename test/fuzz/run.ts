import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  DEFAULT_LIMITS,
  describeFailure,
  formatStats,
  fuzzTarget,
  FuzzWorker,
  listRegressions,
  regressionName,
  replayRegression,
  saveRegression,
  type Failure,
  type TargetStats,
} from './harness.ts';
import type { Seed } from './mutations.ts';
import { TARGETS, targetNamed, type Target } from './targets.ts';

/**
 * The long fuzzing run: `npm run fuzz -- --minutes N [--target T[,T...]] [--seed S]`. Targets take
 * turns in slices (a fresh fast-check seed each); every new distinct failure is minimized, printed
 * and kept as test/fuzz/regressions/<target>/<sha256 prefix>.bin (+ .json), which the short test
 * (`npm test`) replays from then on. `--replay` only re-runs the kept inputs. Exit status 1 when
 * anything failed.
 */

const USAGE = `usage: npm run fuzz -- [--minutes N] [--target ${TARGETS.map((t) => t.name).join('|')}[,...]] [--seed S] [--slice SECONDS] [--no-save] [--replay]`;

function options() {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '10' },
      target: { type: 'string', multiple: true },
      seed: { type: 'string' },
      slice: { type: 'string', default: '30' },
      'no-save': { type: 'boolean', default: false },
      replay: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const minutes = Number(values.minutes);
  const slice = Number(values.slice);
  if (!(minutes > 0) || !(slice > 0)) throw new Error(`--minutes and --slice must be positive numbers\n${USAGE}`);
  const targets = (values.target ?? []).flatMap((t) => t.split(',')).filter(Boolean).map(targetNamed);
  const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 0x7fffffff);
  if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer\n${USAGE}`);
  return { minutes, sliceMs: slice * 1000, targets: targets.length > 0 ? targets : [...TARGETS], seed, save: !values['no-save'], replay: values.replay };
}

/** Cumulative figures of a target over its slices. */
interface Totals {
  inputs: number;
  failingInputs: number;
  distinct: number;
  elapsedMs: number;
  runMs: number;
  slowest: number;
  harnessErrors: number;
  harnessError?: string;
  outcomes: Map<string, number>;
  masked: TargetStats['masked'];
}

class Progress {
  private readonly tty = process.stdout.isTTY === true;
  private drawn = 0;
  private last = 0;
  private lastLine = 0;
  private current: { target: string; stats: TargetStats } | undefined;

  constructor(
    private readonly totals: Map<string, Totals>,
    private readonly started: number,
    private readonly endsAt: number,
  ) {}

  update(target: string, stats: TargetStats): void {
    this.current = { target, stats };
    const now = performance.now();
    if (this.tty ? now - this.last < 500 : now - this.lastLine < 15_000) return;
    this.last = now;
    this.lastLine = now;
    this.draw();
  }

  /** Prints a message above the table. */
  log(message: string): void {
    this.clear();
    console.log(message);
    this.draw();
  }

  clear(): void {
    if (this.tty && this.drawn > 0) process.stdout.write(`\x1b[${this.drawn}A\x1b[0J`);
    this.drawn = 0;
  }

  draw(): void {
    const elapsed = (performance.now() - this.started) / 1000;
    const left = Math.max(0, (this.endsAt - performance.now()) / 1000);
    const rows = [...this.totals].map(([name, t]) => {
      const live = this.current?.target === name ? this.current.stats : undefined;
      const inputs = t.inputs + (live?.inputs ?? 0);
      const ms = t.elapsedMs + (live?.elapsedMs ?? 0);
      const failures = t.distinct + (live?.failures.length ?? 0);
      const failing = t.failingInputs + (live?.failingInputs ?? 0);
      const rate = ms > 0 ? (inputs * 1000) / ms : 0;
      return `${live ? '>' : ' '} ${name.padEnd(22)} ${String(inputs).padStart(8)} inputs ${rate.toFixed(0).padStart(5)}/s ${String(failures).padStart(3)} failures (${failing} inputs) ${(ms / 1000).toFixed(0).padStart(5)} s`;
    });
    const header = `fuzz: ${elapsed.toFixed(0)} s elapsed, ${left.toFixed(0)} s left`;
    if (this.tty) {
      this.clear();
      process.stdout.write(`${header}\n${rows.join('\n')}\n`);
      this.drawn = rows.length + 1;
    } else {
      console.log(`${header}\n${rows.join('\n')}`);
    }
  }
}

async function replayAll(worker: FuzzWorker): Promise<number> {
  const files = listRegressions();
  let failing = 0;
  for (const file of files) {
    const { verdict, result } = await replayRegression(worker, file);
    if (verdict) failing++;
    console.log(`${verdict ? 'FAILS ' : 'passes'} ${regressionName(file)} (${result.ms.toFixed(0)} ms)${verdict ? `: ${verdict.kind}: ${verdict.summary}` : ''}`);
  }
  console.log(`${files.length} kept inputs, ${failing} still failing`);
  return failing;
}

async function main(): Promise<number> {
  const opts = options();
  const dir = await mkdtemp(join(tmpdir(), 'heimdall-fuzz-'));
  const worker = new FuzzWorker(dir);
  const stop = async () => {
    await worker.close();
    await rm(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(130)));
  try {
    if (opts.replay) return (await replayAll(worker)) > 0 ? 1 : 0;

    console.log(`fuzz: seed ${opts.seed} (--seed ${opts.seed} repeats this run), ${opts.minutes} min over ${opts.targets.map((t) => t.name).join(', ')}`);
    console.log(`limits: ${DEFAULT_LIMITS.timeMs / 1000} s and ${DEFAULT_LIMITS.memoryBytes / 2 ** 20} MB per input, hang after ${DEFAULT_LIMITS.hangMs / 1000} s`);
    const seeds = new Map<string, Seed[]>();
    for (const target of opts.targets) seeds.set(target.name, await target.seeds(dir));
    await worker.warm();

    const totals = new Map<string, Totals>(opts.targets.map((t) => [t.name, { inputs: 0, failingInputs: 0, distinct: 0, elapsedMs: 0, runMs: 0, slowest: 0, harnessErrors: 0, outcomes: new Map(), masked: new Map() }]));
    const known = new Map<string, Map<string, Failure>>(opts.targets.map((t) => [t.name, new Map()]));
    const started = performance.now();
    const endsAt = started + opts.minutes * 60_000;
    const progress = new Progress(totals, started, endsAt);
    const found: Failure[] = [];

    for (let slice = 0; performance.now() < endsAt; slice++) {
      const target: Target = opts.targets[slice % opts.targets.length]!;
      const budgetMs = Math.min(opts.sliceMs, endsAt - performance.now());
      const stats = await fuzzTarget({
        target,
        seeds: seeds.get(target.name)!,
        worker,
        seed: (opts.seed + Math.imul(slice, 0x85ebca6b)) | 0,
        budgetMs,
        known: known.get(target.name)!,
        runSeeds: slice < opts.targets.length,
        // Time enough to minimize even slow inputs (each try of one runs it twice).
        minimize: { maxRuns: 60, maxMs: 90_000 },
        onProgress: (s) => progress.update(target.name, s),
        onFailure: async (failure) => {
          found.push(failure);
          const kept = opts.save ? `\n  kept as ${await saveRegression(failure, { seed: opts.seed })}` : '';
          progress.log(`${describeFailure(failure)}${kept}`);
        },
      });
      const t = totals.get(target.name)!;
      t.inputs += stats.inputs;
      t.failingInputs += stats.failingInputs;
      t.distinct += stats.failures.length;
      t.elapsedMs += stats.elapsedMs;
      t.runMs += stats.runMs;
      t.slowest = Math.max(t.slowest, stats.slowest);
      t.harnessErrors += stats.harnessErrors;
      t.harnessError ??= stats.harnessError;
      for (const [k, n] of stats.outcomes) t.outcomes.set(k, (t.outcomes.get(k) ?? 0) + n);
      for (const [k, m] of stats.masked) {
        const seen = t.masked.get(k);
        if (seen) seen.count += m.count;
        else t.masked.set(k, m);
      }
      if (stats.harnessError) progress.log(`harness error in ${target.name}: ${stats.harnessError}`);
      progress.update(target.name, { ...stats, inputs: 0, failures: [], failingInputs: 0, elapsedMs: 0 });
    }
    progress.clear();
    console.log(`\nfuzz: seed ${opts.seed}, ${((performance.now() - started) / 1000).toFixed(0)} s; worker restarts ${worker.restarts}`);
    for (const [name, t] of totals) {
      console.log(
        formatStats({ target: name, inputs: t.inputs, failingInputs: t.failingInputs, failures: new Array<Failure>(t.distinct), elapsedMs: t.elapsedMs, runMs: t.runMs, outcomes: t.outcomes, slowest: t.slowest, harnessErrors: t.harnessErrors, ...(t.harnessError ? { harnessError: t.harnessError } : {}), masked: t.masked }),
      );
    }
    if (found.length > 0) {
      console.log(`\n${found.length} distinct failures:`);
      for (const f of found) console.log(`${describeFailure(f)}\n`);
    }
    return found.length > 0 ? 1 : 0;
  } finally {
    await stop();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(2);
  },
);
