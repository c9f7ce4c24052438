import { headers as natsHeaders } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { encodeEvent } from '../../bus/nats/codec.ts';
import { createEvent, inContext, runIdOf, startTrace, traceFields, type AnyCloudEvent } from '../../events/index.ts';
import { createLogger } from '../../logging/index.ts';
import type { StageEnvironment } from '../execute.ts';
import type { RunState, RunStateStore } from '../run-state/run-state.ts';
import { defineStage } from '../stage.ts';
import { exhaustedHandler, startStage, type ProcessorEnvironment } from './processors.ts';
import type { Delivery } from './worker.ts';

const runId = runIdOf('ef'.repeat(32));
const created = inContext(createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'runs/x.pth', size: 1, etag: 'e', runId } }), startTrace());
const exportStage = defineStage({ name: 'export', input: 'heimdall.checkpoint.created', output: 'heimdall.model.exported', handler: async () => Promise.reject(new Error('not run here')) });

function environment() {
  const published: AnyCloudEvent[] = [];
  const runs = new Map<string, RunState>();
  const runState: RunStateStore = {
    get: async (id) => runs.get(id),
    list: async () => [...runs.values()],
    update: async (id, change) => {
      const next = change(runs.get(id));
      runs.set(id, next);
      return next;
    },
  };
  const env: ProcessorEnvironment = { environment: {} as StageEnvironment, runState, logger: createLogger('silent'), publish: async (event) => (published.push(event), true) };
  return { env, published, runs };
}

const delivery = (headers: Delivery['headers'], body: string): Delivery => ({ headers, body, attempt: 1, maxDeliver: 5, signal: new AbortController().signal, progress: () => undefined });

/** Messages naming a run that are no valid input of export. */
const foreign = (): Array<[string, Delivery]> => {
  const binary = encodeEvent(created).headers;
  const structured = natsHeaders();
  structured.set('content-type', 'application/cloudevents+json');
  return [
    ['a header-less body with a run id', delivery(undefined, JSON.stringify({ runId, data: { runId } }))],
    ['binary mode, data invalid', delivery(binary, JSON.stringify({ ...created.data, size: -1 }))],
    ['structured mode, data invalid', delivery(structured, JSON.stringify({ ...created, data: { ...created.data, size: -1 } }))],
  ];
};

describe('a stage worker on a message that is not a valid event of its input', () => {
  for (const [what, message] of foreign()) {
    it(`${what}: terminated, no failure published, no run state touched`, async () => {
      const { env, published, runs } = environment();
      expect(await startStage(exportStage, message, env)).toMatchObject({ kind: 'term', reason: expect.any(String) });
      expect(published).toEqual([]);
      expect(runs.size).toBe(0);
      await exhaustedHandler(exportStage, env)(message);
      expect(published).toEqual([]);
      expect(runs.size).toBe(0);
    });
  }

  it('a valid event of another type: terminated, no failure', async () => {
    const { env, published } = environment();
    const { headers, body } = encodeEvent(createEvent('heimdall.pipeline.failed', { stage: 'export', source: 'heimdall/export', data: { runId, stage: 'export', error: { code: 'X', message: 'x' }, attempt: 1, retriable: false } }));
    expect(await startStage(exportStage, delivery(headers, body), env)).toMatchObject({ kind: 'term', reason: 'export consumes heimdall.checkpoint.created, not heimdall.pipeline.failed' });
    await exhaustedHandler(exportStage, env)(delivery(headers, body));
    expect(published).toEqual([]);
  });

  it('a valid input event: started; exhausted after MaxDeliver, the run fails with DELIVERY_EXHAUSTED', async () => {
    const { env, published, runs } = environment();
    const { headers, body } = encodeEvent(created);
    expect(await startStage(exportStage, delivery(headers, body), env)).toEqual(created);
    expect(runs.get(runId)?.stages.export).toMatchObject({ status: 'running' });
    await exhaustedHandler(exportStage, env)({ headers, body, attempt: 5 });
    expect(published).toEqual([expect.objectContaining({ type: 'heimdall.pipeline.failed', data: expect.objectContaining({ runId, stage: 'export', error: expect.objectContaining({ code: 'DELIVERY_EXHAUSTED' }), attempt: 5 }) })]);
    // The run's failure, in the run's trace.
    expect(traceFields(published[0]).traceId).toBe(traceFields(created).traceId);
  });
});
