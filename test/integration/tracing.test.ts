/**
 * One run is one trace (DESIGN §3, Events: tracing), whichever runner runs it: the same checkpoint
 * through the in-process runner (`heimdall run`), NATS workers (`heimdall serve`) and HTTP functions
 * behind the local broker (`heimdall serve --http`). Ingest starts a trace; every later event of the
 * run, follow-ups and failures included, carries its trace id in a span of its own stage, with the
 * run's subject; the workers' and functions' logs name the trace. An event posted to a function with
 * a `traceparent` (extension or W3C header) keeps its trace id in the reply.
 */
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stageFunctions } from '../../functions/index.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { fromHttp, parseTraceparent, toBinary, type AnyCloudEvent } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { runInProcess } from '../../shared/pipeline/in-process.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { minioNotification, PipelineObserver, QUICK_ENV, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

/** A first model's run: the six stages' events, then the gate's promotion of it to the alias. */
const RUN_EVENTS = ['heimdall.checkpoint.created', 'heimdall.model.exported', 'heimdall.model.validated', 'heimdall.model.parity-checked', 'heimdall.model.benchmarked', 'heimdall.model.registered', 'heimdall.model.promoted'];
const KEY = 'runs/traced/epoch 7.pth';

let dir: string;
let checkpoint: string;
/** The trace id each runner's ingest started for the checkpoint: three runs, three traces. */
const traces: string[] = [];
beforeAll(async () => {
  dir = await tempDir('heimdall-tracing-');
  checkpoint = join(dir, 'epoch 7.pth');
  await writeSmallCheckpoint(checkpoint, { seed: 77 });
});

const traceIdOf = (event: AnyCloudEvent) => parseTraceparent(event.traceparent ?? '')?.traceId;
const spanOf = (event: AnyCloudEvent) => parseTraceparent(event.traceparent ?? '')?.parentId;

/**
 * The run's events in one trace: ingest's trace id on every event, each stage's output in a span of
 * its own, the gate's promotion in the registration's span; the run's subject (the object's key)
 * on every stage's event. Returns the trace id.
 */
function expectOneTrace(events: readonly AnyCloudEvent[], key: string): string {
  expect(events.map((e) => e.type)).toEqual(RUN_EVENTS);
  const traceId = traceIdOf(events[0]!)!;
  expect(traceId).toMatch(/^[0-9a-f]{32}$/);
  for (const event of events) expect({ type: event.type, traceId: traceIdOf(event), flags: parseTraceparent(event.traceparent!)?.flags }).toEqual({ type: event.type, traceId, flags: '01' });
  const [registered, promoted] = events.slice(-2);
  expect(spanOf(promoted!)).toBe(spanOf(registered!));
  expect(new Set(events.slice(0, -1).map(spanOf)).size).toBe(events.length - 1);
  for (const event of events.slice(0, -1)) expect({ type: event.type, subject: event.subject }).toEqual({ type: event.type, subject: key });
  expect(traces).not.toContain(traceId);
  traces.push(traceId);
  return traceId;
}

describe('in process (heimdall run)', () => {
  it('a run and a failed run: each one trace, started by ingest', async () => {
    const run = async (path: string) => {
      const dataDir = join(dir, 'in-process');
      const config = loadConfig({ HEIMDALL_DATA_DIR: dataDir, ...QUICK_ENV });
      const events: AnyCloudEvent[] = [];
      await runInProcess(path, { stages: stageFunctions, ...(await createAdapters(config)), config, logger: createLogger('silent'), onEvent: (event) => events.push(event) });
      return events;
    };
    const events = await run(checkpoint);
    const key = events[0]!.subject!;
    expect(key).toMatch(/\/epoch 7\.pth$/);
    expectOneTrace(events, key);

    const garbage = join(dir, 'garbage.pth');
    await writeFile(garbage, 'not a checkpoint');
    const [created, failed, ...rest] = await run(garbage);
    expect([created?.type, failed?.type, rest]).toEqual(['heimdall.checkpoint.created', 'heimdall.pipeline.failed', []]);
    expect(failed).toMatchObject({ subject: created!.subject, data: { stage: 'export', error: { code: 'UNSUPPORTED_FORMAT' } } });
    expect(traceIdOf(failed!)).toBe(traceIdOf(created!));
    expect(spanOf(failed!)).not.toBe(spanOf(created!));
  });
});

describe('on NATS', () => {
  let server: NatsServer | undefined;
  let worker: WorkerProcess | undefined;
  let observer: PipelineObserver | undefined;
  afterEach(async () => {
    if (worker) await stopServe(worker);
    await observer?.close();
    await server?.stop();
    [worker, observer, server] = [undefined, undefined, undefined];
  });

  /** `heimdall serve` (with `args`) on a fresh server; the checkpoint uploaded and announced as MinIO does; the run's events once promoted. */
  async function runOnNats(name: string, args: string[]) {
    server = await startNatsServer();
    const dataDir = join(dir, name);
    worker = startServe({ NATS_URL: server.url, HEIMDALL_DATA_DIR: dataDir, HEIMDALL_LOG_LEVEL: 'info' }, args);
    await waitFor('the workers to start', () => worker!.stderr().includes('serving'), 60_000);
    observer = await PipelineObserver.connect(server.url);
    observer.follow();
    const info = await new FsObjectStore(dataDir).putFile(CHECKPOINTS_BUCKET, KEY, checkpoint);
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, KEY, info));
    const events = await waitFor('the run to be promoted', () => observer!.events.some((e) => e.type === 'heimdall.model.promoted') && observer!.events, 120_000).catch((error: Error) => {
      throw new Error(`${error.message}; events: ${observer!.events.map((e) => e.id).join(', ')}\n${worker!.stderr().slice(-3000)}`);
    });
    const logsOf = (traceId: string) => worker!.stderr().split('\n').filter((line) => line.includes(`"traceId":"${traceId}"`)).map((line) => JSON.parse(line) as { msg: string; function?: string });
    // A worker logs an event as handled once it has published its results: the last one's line may
    // come after the observer has seen the promotion. Read once as many lines as expected are there.
    const traceLogs = async (traceId: string, expected: number) => {
      await waitFor(`${expected} log lines of trace ${traceId}`, () => logsOf(traceId).length >= expected, 10_000).catch(() => undefined);
      return logsOf(traceId);
    };
    return { events: [...events], worker: worker!, traceLogs };
  }

  it('NATS workers: one trace, and the workers\' logs of each event name it', async () => {
    const { events, traceLogs } = await runOnNats('nats', []);
    const traceId = expectOneTrace(events, KEY);
    const expected = ['benchmark: event handled', 'export: event handled', 'ingest: announced', 'parity: event handled', 'register: event handled', 'validate: event handled'];
    expect((await traceLogs(traceId, expected.length)).map((l) => l.msg).sort()).toEqual(expected);
  });

  it('HTTP functions behind the local broker: one trace, the functions\' logs name it; an event posted with a traceparent keeps its trace id in the reply', async () => {
    const { events, worker: serving, traceLogs } = await runOnNats('http', ['--http']);
    const traceId = expectOneTrace(events, KEY);
    const expected = ['benchmark: event handled', 'export: event handled', 'parity: event handled', 'register: event handled', 'validate: event handled', 'worker: ingest: announced'];
    expect((await traceLogs(traceId, expected.length)).map((l) => `${l.function ?? 'worker'}: ${l.msg}`).sort()).toEqual(expected);

    // Posted to the export function as Knative would deliver it: the trace in the W3C header only, or in the extension.
    const port = /export:(\d+)/.exec(serving.stderr())![1];
    const { traceparent: _traceparent, tracestate: _tracestate, ...created } = events[0]!;
    const { headers, body } = toBinary(created as AnyCloudEvent);
    for (const [what, traceHeaders] of [
      ['W3C header', { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' }],
      ['ce-traceparent', { 'ce-traceparent': '00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203331-01' }],
    ] as const) {
      const sent = Object.values(traceHeaders)[0]!;
      const response = await fetch(`http://127.0.0.1:${port}/`, { method: 'POST', headers: { ...headers, ...traceHeaders }, body });
      const reply = fromHttp(response.headers, await response.text());
      expect({ what, status: response.status, type: reply.type, traceId: traceIdOf(reply) }).toEqual({ what, status: 200, type: 'heimdall.model.exported', traceId: parseTraceparent(sent)!.traceId });
      expect(response.headers.get('traceparent')).toBe(reply.traceparent);
    }
  });
});
