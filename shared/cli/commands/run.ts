import { resolve } from 'node:path';
import { loadConfig } from '../../config/index.ts';
import { createLogger } from '../../logging/index.ts';
import { createAdapters } from '../../pipeline/adapters.ts';
import { runInProcess } from '../../pipeline/in-process.ts';
import type { RunReport, VariantReport } from '../../pipeline/report.ts';
import { FsAnnouncedUploads } from '../../pipeline/run-state/announced.ts';
import { FsRunStateStore } from '../../pipeline/run-state/fs.ts';
import type { AnyStage } from '../../pipeline/stage.ts';
import type { SubscriberFunction } from '../../pipeline/subscriber.ts';
import { parseCommandArgs } from '../args.ts';
import { eventLines } from '../event-line.ts';
import { formatBytes, formatSeconds } from '../format.ts';
import type { CommandIO } from '../io.ts';
import { ProgressLine } from '../progress.ts';
import { signalExitCode, watchStopSignals } from '../signals.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';

export const runUsage = 'heimdall run <checkpoint> [--workdir DIR] [--json]';
/** How long the end of a run waits for subscribers (alerts still being delivered). */
const SUBSCRIBERS_DRAIN_MS = 10_000;
const SUBSCRIBERS_DRAIN_ON_STOP_MS = 1000;

/** The main job: one checkpoint through every stage, in this process, on the embedded default. */
export async function runCommand(argv: string[], io: CommandIO, stages: readonly AnyStage[], subscriberFunctions: readonly SubscriberFunction[] = []): Promise<number> {
  const { positionals, values } = parseCommandArgs(argv, runUsage, { workdir: { type: 'string' }, json: { type: 'boolean' } });
  const [checkpoint] = positionals;
  if (!checkpoint || positionals.length > 1) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${runUsage}`);
  const config = loadConfig(values.workdir ? { ...process.env, HEIMDALL_DATA_DIR: values.workdir } : process.env);
  const logger = createLogger(config.logLevel);
  const subscribers = subscriberFunctions.flatMap((f) => f.create(config, logger) ?? []);
  const started = performance.now();
  let progress: ProgressLine | undefined;
  let current = '';
  // SIGTERM / Ctrl-C: the stage in flight is aborted, its partial output removed with the run's
  // scratch dir, and the run recorded as failed with ABORTED; the exit status says which signal.
  const stop = watchStopSignals(`run of ${checkpoint}`, (line) => {
    progress?.done();
    io.stderr(line);
  });
  try {
    const report = await runInProcess(checkpoint, {
      stages,
      ...(await createAdapters(config)),
      runState: new FsRunStateStore(config.dataDir),
      announced: new FsAnnouncedUploads(config.dataDir),
      config,
      logger,
      signal: stop.signal,
      onProgress: (stage, message) => {
        if (stage !== current) {
          progress?.done();
          progress = new ProgressLine(stage.padEnd(9));
          current = stage;
        }
        progress!.update(message);
      },
      onEvent: (event) => {
        progress?.done();
        for (const line of eventLines(event)) io.stdout(line);
        for (const subscriber of subscribers) subscriber.accept(event);
      },
    });
    progress?.done();
    const elapsed = formatSeconds(performance.now() - started);
    if (report.status === 'registered') {
      const r = report.registry!;
      io.stdout(`${r.created ? 'registered' : 'already registered:'} ${r.name} version ${r.version} (${aliasOutcome(report)}) from run ${report.runId} in ${elapsed}; data in ${resolve(config.dataDir)}`);
    } else {
      io.stderr(`error: ${report.error!.code}: run ${report.runId} failed at ${report.error!.stage}: ${report.error!.message}`);
    }
    for (const variant of report.variants ?? []) io.stdout(variantOutcome(variant));
    if (values.json) io.stdout(JSON.stringify(report));
    // Stopped: alerts get a moment, not the full drain.
    await Promise.all(subscribers.map((s) => s.close(stop.received ? SUBSCRIBERS_DRAIN_ON_STOP_MS : SUBSCRIBERS_DRAIN_MS)));
    if (report.status === 'registered') return 0;
    return stop.received ? signalExitCode(stop.received) : 1;
  } finally {
    progress?.done();
    stop.dispose();
  }
}

/** One line per variant after the summary: registered where, with its size, error against fp32 and batch-1 speed-up; or why not. */
function variantOutcome(variant: VariantReport): string {
  const outcome = variant.registered;
  if (!outcome?.registered || !outcome.registry) return `variant ${variant.name} not registered: ${outcome?.reason ?? 'the run did not get that far'}`;
  const error = variant.parity ? `, max |diff| ${Math.max(...Object.values(variant.parity.perOutput).map((e) => e.maxAbs)).toExponential(1)} vs fp32` : '';
  const speedup = variant.benchmark?.speedup[0];
  const faster = speedup ? `, b${speedup.batch} x${speedup.ratio.toFixed(2)} [${speedup.ratioInterval[0].toFixed(2)}, ${speedup.ratioInterval[1].toFixed(2)}] of fp32` : '';
  const alias = outcome.alias?.moved ? `alias ${outcome.alias.name}` : `${outcome.alias?.name ?? 'alias'} held back by ${outcome.gate?.checks.filter((c) => !c.passed && c.policy === 'block').map((c) => c.name).join(', ') || 'the gate'}`;
  return `variant ${variant.name}: ${outcome.registry.created ? 'registered' : 'already registered:'} ${outcome.registry.name} version ${outcome.registry.version} (${alias}), ${formatBytes(variant.onnx.bytes)}${error}${faster}`;
}

/** `alias staging`, or why it stayed where it was: `staging held back by latency`. */
function aliasOutcome(report: RunReport): string {
  const { alias, gate } = report;
  if (!alias || alias.moved) return `alias ${alias?.name ?? '?'}`;
  const blocking = gate?.checks.filter((c) => !c.passed && c.policy === 'block').map((c) => c.name) ?? [];
  return `${alias.name} held back by ${blocking.join(', ') || 'the gate'}`;
}
