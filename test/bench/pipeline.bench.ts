/**
 * `npm run bench:pipeline` (first part): `heimdall run` with default settings on the tiny and large
 * fixtures (`full.pth`, as a trainer saves it), each in a fresh data dir, as a user runs it. Per
 * stage: its time (from one event to the next; ingest's includes the process start-up, measured
 * apart as well) and the peak RSS of the run's process tree during it (the CLI and the processes
 * its stages start; sampled every 10 ms, and never below the CLI's own exact peak, VmHWM reset at
 * each stage). Then the whole run: end to end, the benchmark's own measurement (its warm-up and
 * timed runs, whose length the benchmark settings decide) apart, and the overhead (the rest), each
 * figure next to its target (issue 14) with PASS or MISS. With HEIMDALL_VARIANTS=int8 the int8 variant's
 * figures follow fp32's (size, error against fp32, paired p50 ratio per batch: the events' `variants`);
 * without it, a line saying it was not in the run. The second part,
 * test/bench/reference.bench.ts, times the reference pass that parity runs.
 *
 * BENCH_VARIANTS (default tiny,large); BENCH_RUNS (default 1): runs per variant, each figure their
 * median (the machine's other work moves single runs by seconds). Linux only (/proc).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { loadConfig } from '../../shared/config/index.ts';
import { modelBytes, type OnnxArtifact } from '../../shared/events/schemas.ts';
import type { RunReport } from '../../shared/pipeline/report.ts';
import { STAGES, type StageName } from '../../shared/pipeline/stage.ts';
import { ensureFixtures, type Variant } from '../support/oracle.ts';
import { peakRss, resetPeakRss, TreeRssSampler } from './rss.ts';

/** Issue 14's targets on the 2-core machine. */
const TARGETS = {
  overheadSeconds: { tiny: 3, large: 12 } as Partial<Record<Variant, number>>,
  /** Peak RSS of the whole run over the model's weight bytes. */
  peakRssOverWeights: { large: 2 } as Partial<Record<Variant, number>>,
  exportSeconds: { large: 3 } as Partial<Record<Variant, number>>,
  parityMaxAbs: 1e-6,
};

const variants = (process.env.BENCH_VARIANTS ?? 'tiny,large').split(',') as Variant[];
const runs = Number(process.env.BENCH_RUNS ?? 1);
const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
/** The event that ends each stage. */
const STAGE_OF_EVENT: Readonly<Record<string, StageName>> = {
  'heimdall.checkpoint.created': 'ingest',
  'heimdall.model.exported': 'export',
  'heimdall.model.validated': 'validate',
  'heimdall.model.parity-checked': 'parity',
  'heimdall.model.benchmarked': 'benchmark',
  'heimdall.model.registered': 'register',
};

interface Measured {
  wallSeconds: number;
  report: RunReport;
  /** Per stage, from the stdout line of the event that ended it. */
  peakRssBytes: Partial<Record<StageName, number>>;
}

/** One `heimdall run`, its stdout read as it comes: each event line closes a stage's memory window. */
async function measureRun(args: string[]): Promise<Measured> {
  const started = performance.now();
  const child = spawn(process.execPath, [heimdall, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const sampler = new TreeRssSampler(child.pid!);
  const peakRssBytes: Partial<Record<StageName, number>> = {};
  let stage = 0;
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  for await (const line of createInterface({ input: child.stdout })) {
    lines.push(line);
    // Event lines: `hh:mm:ss <run> <stage> ...`; the stage that just ended is the next in order.
    if (stage < STAGES.length && new RegExp(`^\\d\\d:\\d\\d:\\d\\d \\S+ ${STAGES[stage]} `).test(line)) {
      peakRssBytes[STAGES[stage]!] = Math.max(sampler.take(), peakRss(child.pid!));
      resetPeakRss(child.pid!);
      stage++;
    }
  }
  const code = await exited;
  sampler.stop();
  const wallSeconds = (performance.now() - started) / 1000;
  const report = JSON.parse(lines.at(-1) ?? '{}') as RunReport;
  if (code !== 0 || report.status !== 'registered') throw new Error(`heimdall run failed (exit ${code}): ${JSON.stringify(report.error ?? lines.slice(-3))}`);
  return { wallSeconds, report, peakRssBytes };
}

/** Process start-up of the CLI with every module loaded: a run of a file that does not exist. */
async function startupTime(workdir: string): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, [heimdall, 'run', join(workdir, 'missing.pth'), '--workdir', workdir], { stdio: 'ignore' });
  await new Promise((resolve) => child.once('exit', resolve));
  return (performance.now() - started) / 1000;
}

const verdict = (value: number, limit: number | undefined, unit = '') => (limit === undefined ? '' : `   target <= ${limit}${unit}: ${value <= limit ? 'PASS' : 'MISS'}`);
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
const median = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};

/** One run's figures. */
interface Figures {
  wallSeconds: number;
  startupSeconds: number;
  perStageSeconds: Record<StageName, number>;
  peakRssBytes: Record<StageName, number>;
  peakRssBytesRun: number;
  weightBytes: number;
  measurementSeconds: number;
  overheadSeconds: number;
  sessionCreateSeconds: number;
  parityMaxAbs: number;
  parityReference: string;
  loadavg: [number, number];
  /** Absent when the run had no int8 variant. */
  int8?: VariantFigures;
}

async function measureVariant(checkpoint: string): Promise<Figures> {
  const workdir = await mkdtemp(join(tmpdir(), 'heimdall-bench-run-'));
  try {
    const startupSeconds = await startupTime(workdir);
    const loadBefore = loadavg()[0]!;
    const started = Date.now();
    const { wallSeconds, report, peakRssBytes } = await measureRun(['run', checkpoint, '--workdir', workdir, '--json']);
    // Each stage ends when its event is published; the first starts when the process does.
    const ends = Object.fromEntries(report.events.filter((e) => STAGE_OF_EVENT[e.type]).map((e) => [STAGE_OF_EVENT[e.type]!, Date.parse(e.time)]));
    const perStageSeconds = Object.fromEntries(STAGES.map((s, i) => [s, (ends[s]! - (i === 0 ? started : ends[STAGES[i - 1]!]!)) / 1000])) as Record<StageName, number>;
    const exported = report.events.find((e) => e.type === 'heimdall.model.exported')!.data as { architecture: { params: number } };
    const bench = report.benchmark!;
    const measurementSeconds = (bench.measurementMs ?? Number.NaN) / 1000;
    const int8 = int8Figures(report);
    return {
      wallSeconds,
      startupSeconds,
      perStageSeconds,
      peakRssBytes: peakRssBytes as Record<StageName, number>,
      peakRssBytesRun: Math.max(...Object.values(peakRssBytes)),
      weightBytes: exported.architecture.params * 4,
      measurementSeconds,
      overheadSeconds: wallSeconds - measurementSeconds,
      sessionCreateSeconds: bench.sessionCreateMs / 1000,
      parityMaxAbs: Math.max(...Object.values(report.parity!.perOutput).map((e) => e.maxAbs)),
      parityReference: report.parity!.reference,
      loadavg: [loadBefore, loadavg()[0]!],
      ...(int8 ? { int8 } : {}),
    };
  } finally {
    await rm(workdir, { recursive: true, force: true });
  }
}

/** Issue 14's INT8 targets (large): size, batch-1 and batch-8 p50 over fp32's in the same run. */
const INT8_TARGETS = { megabytes: { large: 230 } as Partial<Record<Variant, number>>, ratio: { 1: 0.65, 8: 0.75 } as Record<number, number> };

/** A variant's figures as the run's events carry them (DESIGN §3 `variants`); each part absent where the events lack it. */
interface VariantFigures {
  bytes?: number;
  parity?: { perOutput: Record<string, { maxAbs: number }>; tolerance: number; passed: boolean };
  speedup?: { batch: number; ratio: number; ratioInterval: [number, number] }[];
  registered?: string;
  skipped?: string;
}

/** The int8 variant's figures in one run's report, or undefined when the run had no such variant. Read defensively: the shape is the events' (engineer A's), not ours. */
function int8Figures(report: RunReport): VariantFigures | undefined {
  const find = (type: string) => {
    const data = report.events.find((e) => e.type === type)?.data as { variants?: { name?: string }[]; skippedVariants?: { name?: string; stage?: string; reason?: string }[] } | undefined;
    return { entry: data?.variants?.find((v) => v?.name === 'int8') as Record<string, unknown> | undefined, skipped: data?.skippedVariants?.find((v) => v?.name === 'int8') };
  };
  const exported = find('heimdall.model.exported').entry;
  if (!exported) return undefined;
  const parity = find('heimdall.model.parity-checked');
  const benchmarked = find('heimdall.model.benchmarked');
  const registered = find('heimdall.model.registered').entry as { registry?: { name?: string; version?: string } } | undefined;
  const skipped = [parity.skipped, benchmarked.skipped].find(Boolean);
  return {
    // The model file and its external data file (modelBytes): the weights are in the latter.
    ...(typeof (exported.onnx as { bytes?: unknown })?.bytes === 'number' ? { bytes: modelBytes(exported.onnx as OnnxArtifact) } : {}),
    ...(parity.entry?.perOutput ? { parity: parity.entry as unknown as VariantFigures['parity'] } : {}),
    ...(Array.isArray(benchmarked.entry?.speedup) ? { speedup: benchmarked.entry.speedup as VariantFigures['speedup'] } : {}),
    ...(registered?.registry?.name ? { registered: `${registered.registry.name} v${registered.registry.version}` } : {}),
    ...(skipped ? { skipped: `held back at ${skipped.stage}: ${skipped.reason}` } : {}),
  };
}

/** The int8 lines of a variant's summary, next to fp32's; figures from the first run that had the variant. */
function int8Lines(variant: Variant, runs: readonly Figures[]): string[] {
  const figures = runs.find((f) => f.int8)?.int8;
  if (!figures) return ['  int8: not in this run (HEIMDALL_VARIANTS=int8 adds it)'];
  const lines = [`  int8: ${figures.bytes === undefined ? 'size not in the event' : `${(figures.bytes / 1e6).toFixed(0)} MB${verdict(figures.bytes / 1e6, INT8_TARGETS.megabytes[variant], ' MB')}`}${figures.registered ? `, registered as ${figures.registered}` : ''}${figures.skipped ? `, ${figures.skipped}` : ''}`];
  if (figures.parity) {
    const errors = Object.entries(figures.parity.perOutput).map(([name, e]) => `${name} max |diff| ${e.maxAbs.toExponential(2)}`).join(', ');
    lines.push(`    against fp32 on the parity samples: ${errors} (tolerance ${figures.parity.tolerance}: ${figures.parity.passed ? 'passed' : 'failed'})`);
  }
  for (const s of figures.speedup ?? []) {
    lines.push(`    batch ${s.batch}: p50 ${s.ratio.toFixed(3)}x fp32 [${s.ratioInterval[0].toFixed(3)}, ${s.ratioInterval[1].toFixed(3)}], paired in the same worker${verdict(s.ratio, INT8_TARGETS.ratio[s.batch], 'x')}`);
  }
  return lines;
}

const settings = loadConfig({}).benchmark;
const lines: string[] = [`loadavg at start ${loadavg().map((l) => l.toFixed(2)).join(' ')} (other work on the machine is not controlled)`];
const json: Record<string, unknown> = {};
for (const variant of variants) {
  const checkpoint = (await ensureFixtures(variant)).files.find((f) => f.name === 'full.pth')!.path;
  const all: Figures[] = [];
  for (let run = 1; run <= runs; run++) {
    process.stderr.write(`bench pipeline ${variant} (${run}/${runs}): heimdall run ${checkpoint}\n`);
    all.push(await measureVariant(checkpoint));
  }
  const m = (pick: (f: Figures) => number) => median(all.map(pick));
  const [wall, overhead, measurement, peak, weights] = [m((f) => f.wallSeconds), m((f) => f.overheadSeconds), m((f) => f.measurementSeconds), m((f) => f.peakRssBytesRun), all[0]!.weightBytes];
  const parityMax = Math.max(...all.map((f) => f.parityMaxAbs));
  const budgetSeconds = (settings.batches.length * settings.budgetMs) / 1000;
  json[variant] = { runs: all, median: { wallSeconds: wall, overheadSeconds: overhead, measurementSeconds: measurement, peakRssBytesRun: peak }, budgetSeconds, int8: all.map((f) => f.int8 ?? null) };
  const loads = all.map((f) => `${f.loadavg[0].toFixed(2)} -> ${f.loadavg[1].toFixed(2)}`).join(', ');
  lines.push(
    `${variant} (${(weights / 1e6).toFixed(0)} MB of weights), ${runs === 1 ? 'one run' : `median of ${runs} runs`}; loadavg ${loads}`,
    `  ${'stage'.padEnd(10)} ${'time'.padStart(8)} ${'peak RSS'.padStart(10)}`,
    ...STAGES.map((s) => {
      const seconds = m((f) => f.perStageSeconds[s]);
      const note = s === 'ingest' ? `   (incl. process start-up, ${m((f) => f.startupSeconds).toFixed(2)} s on its own)` : s === 'benchmark' ? `   (session creation ${m((f) => f.sessionCreateSeconds).toFixed(2)} s, measurement ${measurement.toFixed(2)} s)` : '';
      const target = s === 'export' ? verdict(seconds, TARGETS.exportSeconds[variant], ' s') : '';
      return `  ${s.padEnd(10)} ${`${seconds.toFixed(2)} s`.padStart(8)} ${mib(m((f) => f.peakRssBytes[s])).padStart(10)}${note}${target}`;
    }),
    `  end to end ${wall.toFixed(2)} s; the benchmark's own measurement ${measurement.toFixed(2)} s (configured: ${settings.batches.length} batch sizes x ${settings.budgetMs} ms timed = ${budgetSeconds.toFixed(1)} s, warm-up until settled within as long again, >= ${settings.minRuns} timed runs each)`,
    `  overhead (end to end - measurement) ${overhead.toFixed(2)} s${verdict(overhead, TARGETS.overheadSeconds[variant], ' s')}`,
    `  peak RSS of the run ${mib(peak)} = ${(peak / weights).toFixed(2)}x the weights${verdict(peak / weights, TARGETS.peakRssOverWeights[variant], 'x')}`,
    `  parity max |diff| ${parityMax.toExponential(2)} against the ${all[0]!.parityReference} outputs${verdict(parityMax, TARGETS.parityMaxAbs)}`,
    ...int8Lines(variant, all),
  );
}
console.log(lines.join('\n'));
console.log(JSON.stringify(json));
