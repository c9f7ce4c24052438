import { modelBytes, type AnyCloudEvent, type BenchmarkedVariant, type CloudEvent, type EventData, type RegisteredVariant } from '../events/index.ts';

/** The final report of one run (`heimdall run --json` prints it as its last line). */
export interface RunReport {
  readonly runId: string;
  readonly status: 'registered' | 'failed';
  readonly events: ReadonlyArray<{ type: string; id: string; time: string; data: unknown }>;
  /** `bytes`: the model file and its external data file together. */
  readonly onnx?: { uri: string; sha256: string; bytes: number };
  readonly parity?: Omit<EventData<'heimdall.model.parity-checked'>, 'runId' | 'checkpoint' | 'onnx' | 'variants'>;
  readonly benchmark?: Omit<EventData<'heimdall.model.benchmarked'>, 'runId' | 'checkpoint' | 'onnx' | 'parity' | 'variants'>;
  readonly registry?: { name: string; version: string; created: boolean };
  /** The gate's verdict on the registered model, and whether the alias moved to it. */
  readonly gate?: EventData<'heimdall.model.registered'>['gate'];
  readonly alias?: EventData<'heimdall.model.registered'>['alias'];
  readonly error?: { stage: string; code: string; message: string };
  /** Each configured variant, as far as the run took it (absent when none is configured). */
  readonly variants?: readonly VariantReport[];
}

/** A variant's figures from each stage's event: size, error against fp32, latency and speed-up, registration or why not. */
export interface VariantReport {
  readonly name: string;
  readonly onnx: { uri: string; sha256: string; bytes: number };
  readonly parity?: Pick<BenchmarkedVariant, 'perOutput' | 'tolerance'> & { passed: boolean };
  readonly benchmark?: Pick<BenchmarkedVariant, 'perBatch' | 'speedup' | 'baseline'>;
  readonly registered?: Omit<RegisteredVariant, 'name'>;
}

export function buildReport(runId: string, events: readonly AnyCloudEvent[]): RunReport {
  const find = <T extends AnyCloudEvent['type']>(type: T) => events.find((e) => e.type === type) as CloudEvent<T> | undefined;
  const exported = find('heimdall.model.exported');
  const parity = find('heimdall.model.parity-checked');
  const benchmark = find('heimdall.model.benchmarked');
  const registered = find('heimdall.model.registered');
  const failed = find('heimdall.pipeline.failed');
  const omit = <T extends object, K extends string>(value: T, keys: K[]) => Object.fromEntries(Object.entries(value).filter(([k]) => !keys.includes(k as K))) as Omit<T, K>;
  return {
    runId,
    status: registered && !failed ? 'registered' : 'failed',
    events: events.map((e) => ({ type: e.type, id: e.id, time: e.time, data: e.data })),
    ...(exported ? { onnx: { uri: exported.data.onnx.uri, sha256: exported.data.onnx.sha256, bytes: modelBytes(exported.data.onnx) } } : {}),
    ...(parity ? { parity: omit(parity.data, ['runId', 'checkpoint', 'onnx', 'variants']) } : {}),
    ...(benchmark ? { benchmark: omit(benchmark.data, ['runId', 'checkpoint', 'onnx', 'parity', 'variants']) } : {}),
    ...(registered
      ? { registry: { name: registered.data.registry.name, version: registered.data.registry.version, created: registered.data.registry.created }, gate: registered.data.gate, alias: registered.data.alias }
      : {}),
    ...(failed ? { error: { stage: failed.data.stage, code: failed.data.error.code, message: failed.data.error.message } } : {}),
    ...(exported?.data.variants
      ? {
          variants: exported.data.variants.map(({ name, onnx }): VariantReport => {
            const checked = parity?.data.variants?.find((v) => v.name === name);
            const timed = benchmark?.data.variants?.find((v) => v.name === name);
            const outcome = registered?.data.variants?.find((v) => v.name === name);
            return {
              name,
              onnx: { uri: onnx.uri, sha256: onnx.sha256, bytes: modelBytes(onnx) },
              ...(checked ? { parity: { perOutput: checked.perOutput, tolerance: checked.tolerance, passed: checked.passed } } : {}),
              ...(timed ? { benchmark: { perBatch: timed.perBatch, speedup: timed.speedup, ...(timed.baseline ? { baseline: timed.baseline } : {}) } } : {}),
              ...(outcome ? { registered: omit(outcome, ['name']) } : {}),
            };
          }),
        }
      : {}),
  };
}
