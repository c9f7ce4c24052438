import { modelBytes, VariantName, type AnyCloudEvent } from '../events/index.ts';
import { GATE_ACTOR } from '../gate/promotion.ts';
import { formatBytes, formatCount, formatSeconds } from './format.ts';

const COLUMNS = 80;
/** Time, run and stage before the figure: `hh:mm:ss 01234567 stage     `. */
const PREFIX = 28;

/** A long key keeps its end (the file name), which says more than its first folders. */
function keepEnd(text: string, room: number): string {
  return text.length <= room ? text : `…${text.slice(text.length - room + 1)}`;
}

/**
 * One readable line per pipeline event, at most 80 columns: time, run, stage, outcome, key figure
 * (a long key or error message is shortened; `status` and `--json` have it whole). Registration and
 * promotion lines leave the model's name out (it is the configured one; `heimdall versions` has it)
 * to keep the room for the gate's figures.
 */
export function eventLine(event: AnyCloudEvent): string {
  return formatLine(event, describeEvent(event));
}

/** The event's line, then one short line per variant it speaks of (size, error against fp32, speed-up, registration). */
export function eventLines(event: AnyCloudEvent): string[] {
  const [stage] = describeEvent(event);
  return [eventLine(event), ...describeVariants(event).map((figure) => formatLine(event, [stage, figure]))];
}

function formatLine(event: AnyCloudEvent, [stage, figure]: [string, string]): string {
  const time = event.time.slice(11, 19);
  const run = event.data.runId.slice(0, 8);
  // Keys and messages come from uploads: control characters (terminal escapes) are shown as `?`.
  const line = `${time} ${run} ${stage.padEnd(9)} ${figure}`.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
  return line.length <= COLUMNS ? line : `${line.slice(0, COLUMNS - 1)}…`;
}

const worstError = (perOutput: Readonly<Record<string, { maxAbs: number }>>) => Math.max(...Object.values(perOutput).map((e) => e.maxAbs));

/** Each variant's key figure in this event, prefixed by its name (`int8 ...`); none for events without variants. */
function describeVariants(event: AnyCloudEvent): string[] {
  switch (event.type) {
    case 'heimdall.model.exported':
      return (event.data.variants ?? []).map((v) => `${v.name} -> ${formatBytes(modelBytes(v.onnx))}`);
    case 'heimdall.model.validated':
      return (event.data.variants ?? []).map((v) => (v.passed ? `${v.name} ${v.checks.length} checks passed` : `${v.name} FAILED ${v.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.detail}`).join('; ')}`));
    case 'heimdall.model.parity-checked':
      return (event.data.variants ?? []).map((v) => `${v.name} max |diff| ${worstError(v.perOutput).toExponential(1)} ${v.passed ? '<=' : '>'} ${v.tolerance.toExponential(0)} vs fp32${v.passed ? '' : ', held back'}`);
    case 'heimdall.model.benchmarked':
      // The speed-up first: a long batch list is cut at the line's end.
      return (event.data.variants ?? []).map((v) => `${v.name} x${v.speedup[0]!.ratio.toFixed(2)} of fp32 b${v.speedup[0]!.batch}, p50 ${v.perBatch.map((s) => `b${s.batch} ${s.p50.toFixed(1)}ms`).join(' ')}`);
    case 'heimdall.model.registered':
      return (event.data.variants ?? []).map((v) => {
        if (!v.registered || !v.registry || !v.alias) return `${v.name} not registered: ${v.reason ?? 'held back'}`;
        const moved = v.alias.moved ? `@${v.alias.name}` : `blocked: ${v.gate?.checks.filter((c) => !c.passed && c.policy === 'block').map((c) => `${c.name} ${c.detail}`).join('; ')}`;
        return `${v.registry.name} v${v.registry.version} ${moved}`;
      });
    default:
      return [];
  }
}

/** The stage an event speaks for and its key figure (size, parity error, p50, version and gate, alias move, error). */
export function describeEvent(event: AnyCloudEvent): [string, string] {
  switch (event.type) {
    case 'heimdall.checkpoint.created': {
      const size = formatBytes(event.data.size);
      return ['ingest', `checkpoint ${keepEnd(event.data.key, COLUMNS - PREFIX - 'checkpoint  ()'.length - size.length)} (${size})`];
    }
    case 'heimdall.model.exported': {
      const d = event.data;
      return ['export', `${d.architecture.variant}, ${formatCount(d.architecture.params)} params -> ${formatBytes(modelBytes(d.onnx))} opset ${d.onnx.opset} in ${formatSeconds(d.durationMs)}`];
    }
    case 'heimdall.model.validated':
      return ['validate', `${event.data.checks.length} checks passed, batches ${event.data.batchSizesChecked.join('/')}`];
    case 'heimdall.model.parity-checked': {
      const worst = worstError(event.data.perOutput);
      return ['parity', `max |diff| ${worst.toExponential(1)} <= ${event.data.tolerance.toExponential(0)} (${event.data.samples} ${event.data.reference} samples)`];
    }
    case 'heimdall.model.benchmarked': {
      const figures = event.data.perBatch.map((s) => `b${s.batch} ${s.p50.toFixed(1)}ms`).join(' ');
      const baseline = event.data.baseline ? ` x${event.data.baseline.ratio.toFixed(2)} v${event.data.baseline.version}${event.data.baseline.regression ? ' REGRESSION' : ''}` : '';
      return ['benchmark', `p50 ${figures} ${event.data.provider}${baseline}`];
    }
    case 'heimdall.model.registered': {
      const { registry: r, gate, alias } = event.data;
      const again = r.created ? '' : ' (already registered)';
      const failed = gate.checks.filter((check) => !check.passed);
      if (!alias.moved) return ['register', `v${r.version} blocked: ${failed.filter((c) => c.policy === 'block').map((c) => `${c.name} ${c.detail}`).join('; ')}${again}`];
      const warned = failed.length > 0 ? ` WARNED ${failed.map((c) => c.name).join(', ')}` : '';
      return ['register', `v${r.version} @${alias.name}${alias.previous ? ` (was v${alias.previous})` : ''}${again}${warned}`];
    }
    case 'heimdall.model.promoted': {
      const d = event.data;
      const by = d.actor === GATE_ACTOR ? '' : ` by ${d.actor}`;
      // A variant's model is named by its variant: the fp32 model's name is the configured one.
      const variant = VariantName.options.find((v) => d.name.endsWith(`-${v}`));
      return ['promote', `${variant ? `${variant} ` : ''}@${d.alias} -> v${d.version}${d.previous ? ` (was v${d.previous})` : ''}, ${d.reason}${by}`];
    }
    case 'heimdall.pipeline.failed':
      return [event.data.stage, `FAILED ${event.data.error.code}: ${event.data.error.message}`];
  }
}
