import { Writable } from 'node:stream';
import { pino } from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { registeredEvent } from '../../test/support/events.ts';
import { tempDir } from '../../test/support/temp.ts';
import { loadConfig } from '../config/index.ts';
import { HeimdallError } from '../errors/index.ts';
import { createEvent, inContext, parseTraceparent, runIdOf, type AnyCloudEvent } from '../events/index.ts';
import { createAdapters } from './adapters.ts';
import { executeStage, type StageEnvironment } from './execute.ts';
import { followUps } from './follow-ups.ts';
import type { AnyStage } from './stage.ts';

const runId = runIdOf('ab'.repeat(32));
const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
const created = inContext(createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'runs/a.pth', size: 1, etag: 'e', runId } }), {
  traceparent: `00-${traceId}-00f067aa0ba902b7-01`,
  tracestate: 'rojo=1',
  subject: 'runs/a.pth',
});

/** A register stage on checkpoint.created that logs once, then registers (the gate moving the alias) or fails. */
const registerStage = (fail: boolean): AnyStage => ({
  name: 'register',
  input: 'heimdall.checkpoint.created',
  output: 'heimdall.model.registered',
  handler: async (event, ctx) => {
    ctx.logger.info('registering');
    if (fail) throw new HeimdallError('REGISTRY_ERROR', 'MLflow answered 503');
    return registeredEvent(event.data.runId, '1');
  },
});

let environment: StageEnvironment;
const lines: Array<Record<string, unknown>> = [];
beforeAll(async () => {
  const dir = await tempDir('heimdall-execute-');
  const config = loadConfig({ HEIMDALL_DATA_DIR: dir });
  const logs = new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(JSON.parse(chunk.toString())), done()) });
  environment = { ...(await createAdapters(config)), config, logger: pino({ level: 'info' }, logs), scratchDir: dir };
});

const span = (event: AnyCloudEvent) => parseTraceparent(event.traceparent!);

describe('executeStage keeps a run one trace, for every runner', () => {
  it("puts the result in the input's trace, in a span of its own, with the input's tracestate and subject; the stage's logs name that span", async () => {
    lines.length = 0;
    const result = await executeStage(registerStage(false), created, environment);
    expect(span(result)).toMatchObject({ traceId, flags: '01' });
    expect(span(result)?.parentId).not.toBe('00f067aa0ba902b7');
    expect(result).toMatchObject({ type: 'heimdall.model.registered', tracestate: 'rojo=1', subject: 'runs/a.pth' });
    expect(lines).toEqual([expect.objectContaining({ msg: 'registering', stage: 'register', runId, traceId, spanId: span(result)?.parentId })]);
    // Each execution is a span of its own.
    expect(span(await executeStage(registerStage(false), created, environment))?.parentId).not.toBe(span(result)?.parentId);
  });

  it('puts a failure in the same trace and span as a result would be', async () => {
    lines.length = 0;
    const failure = await executeStage(registerStage(true), created, environment, { attempt: 2 });
    expect(failure).toMatchObject({ type: 'heimdall.pipeline.failed', subject: 'runs/a.pth', tracestate: 'rojo=1', data: { stage: 'register', attempt: 2, error: { code: 'REGISTRY_ERROR' } } });
    expect(span(failure)?.traceId).toBe(traceId);
    expect(lines[0]).toMatchObject({ traceId, spanId: span(failure)?.parentId });
  });

  it("gives the follow-ups of a result the result's own trace context", async () => {
    const result = await executeStage(registerStage(false), created, environment);
    const [promoted] = followUps(result);
    expect(promoted).toMatchObject({ type: 'heimdall.model.promoted', traceparent: result.traceparent, tracestate: 'rojo=1', subject: 'heimdall-localization@staging' });
  });

  it('starts a trace for an input that carries none', async () => {
    const { traceparent: _traceparent, tracestate: _tracestate, ...untraced } = created;
    const result = await executeStage(registerStage(false), untraced, environment);
    expect(span(result)).toMatchObject({ version: '00', flags: '01' });
    expect(span(result)?.traceId).not.toBe(traceId);
    expect(result).not.toHaveProperty('tracestate');
  });
});
