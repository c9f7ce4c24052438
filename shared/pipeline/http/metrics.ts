import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AnyCloudEvent } from '../../events/index.ts';
import { EVENT_TYPES, type EventType } from '../../events/schemas.ts';
import type { StageName } from '../stage.ts';

/** Long steps (a large model's parity or benchmark) take minutes: buckets up to the Serving timeout. */
const DURATION_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900];

/**
 * A function's Prometheus metrics, in a registry of its own (labelled with the function's name) so
 * that several functions in one process, as in tests, do not share counters.
 */
export class FunctionMetrics {
  readonly registry = new Registry();
  readonly #handled: Counter<'type'>;
  readonly #failed: Counter<'type' | 'code' | 'retriable'>;
  readonly #duration: Histogram<'outcome'>;
  readonly #inferenceLatency: Gauge<'provider' | 'batch' | 'quantile'>;

  constructor(stage: StageName, inFlight: () => number) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ function: stage });
    collectDefaultMetrics({ register: this.registry });
    this.#handled = new Counter({ name: 'heimdall_events_handled_total', help: 'Events this function ran its stage on, by event type', labelNames: ['type'], registers });
    this.#failed = new Counter({
      name: 'heimdall_events_failed_total',
      help: 'Events that ended in pipeline.failed or were rejected as invalid, by event type and error code',
      labelNames: ['type', 'code', 'retriable'],
      registers,
    });
    this.#duration = new Histogram({ name: 'heimdall_stage_duration_seconds', help: 'Time the stage took per event', labelNames: ['outcome'], buckets: DURATION_BUCKETS, registers });
    this.#inferenceLatency = new Gauge({
      name: 'heimdall_inference_latency_seconds',
      help: 'onnxruntime latency per batch size of the last benchmarked model',
      labelNames: ['provider', 'batch', 'quantile'],
      registers,
    });
    new Gauge({
      name: 'heimdall_events_in_flight',
      help: 'Events being processed now',
      registers,
      collect() {
        this.set(inFlight());
      },
    });
  }

  /** One event through the stage: its input type, the event it produced, and how long it took. */
  handled(input: AnyCloudEvent, result: AnyCloudEvent, seconds: number): void {
    this.#handled.inc({ type: input.type });
    if (result.type === 'heimdall.pipeline.failed') {
      this.#failed.inc({ type: input.type, code: result.data.error.code, retriable: String(result.data.retriable) });
    }
    this.#duration.observe({ outcome: result.type === 'heimdall.pipeline.failed' ? 'failed' : 'succeeded' }, seconds);
    if (result.type === 'heimdall.model.benchmarked') {
      for (const stats of result.data.perBatch) {
        for (const [quantile, ms] of [['0.5', stats.p50], ['0.9', stats.p90], ['0.99', stats.p99]] as const) {
          const labels = { provider: result.data.provider, batch: String(stats.batch), quantile };
          // A tail the sample count did not support is absent, not the last model's figure.
          if (ms === undefined) this.#inferenceLatency.remove(labels);
          else this.#inferenceLatency.set(labels, ms / 1000);
        }
      }
    }
  }

  /** An event refused before the stage ran. Its claimed type only when it is one of ours: a label must not take any value a sender invents. */
  rejected(claimedType: string | undefined, code: string): void {
    const type = EVENT_TYPES.includes(claimedType as EventType) ? claimedType! : 'unknown';
    this.#failed.inc({ type, code, retriable: 'false' });
  }
}
