/**
 * The official CloudEvents Python SDK (`cloudevents` from PyPI, in the services venv) as a client:
 * test/support/services/cloudevents_client.py builds events with it and parses our replies with it.
 * Over HTTP it posts to a function itself, with both of its APIs (`core`, the current one; `v1`,
 * the 1.x one) in binary and structured mode. Over NATS (the SDK has no NATS transport) it builds
 * the messages and this test publishes them to a real nats-server, where a `heimdall serve` stage
 * worker consumes them. The npm SDK's side of the same contract: shared/bus/nats/codec.test.ts.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageFunctions } from '../../functions/index.ts';
import { openKv } from '../../shared/bus/nats/provision.ts';
import { EVENTS_STREAM, subjectOf } from '../../shared/bus/nats/subjects.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { parseTraceparent, runIdOf, type CloudEvent } from '../../shared/events/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { serveFunction, type RunningFunction } from '../../shared/pipeline/http/server.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { KvRunStateStore } from '../../shared/pipeline/run-state/kv.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { PipelineObserver, QUICK_ENV, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { runServicesPython } from '../support/services/venv.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';

type CheckpointData = CloudEvent<'heimdall.checkpoint.created'>['data'];
interface SdkEvent {
  readonly attributes: Record<string, string>;
  readonly data?: unknown;
  readonly data_base64?: string;
}
interface HttpExchange {
  readonly api: 'core' | 'v1';
  readonly mode: 'binary' | 'structured';
  readonly status: number;
  readonly headers: { traceparent: string | null; tracestate: string | null };
  readonly reply: (Record<string, string> & { data: { runId: string } }) | null;
  readonly body: string | null;
}
interface NatsMessage {
  readonly form: 'structured' | 'structured-bare' | 'headerless' | 'binary';
  readonly headers: Record<string, string>;
  readonly body_base64: string;
}

const sdk = {
  http: async (url: string, event: SdkEvent) => JSON.parse(await runServicesPython('cloudevents_client.py', ['http', url, JSON.stringify(event)])) as HttpExchange[],
  nats: async (event: SdkEvent) => JSON.parse(await runServicesPython('cloudevents_client.py', ['nats', JSON.stringify(event)])) as NatsMessage[],
};

/** A trace of a sender's own, one per test event (the ids are the sender's, not ours). */
const traceOf = (n: number) => ({ traceId: `${n}`.repeat(32).slice(0, 32), traceparent: `00-${`${n}`.repeat(32).slice(0, 32)}-00f067aa0ba902b7-01` });

/** checkpoint.created as a foreign producer sends it, with the SDK's own time format (microseconds, an offset). */
const createdBy = (data: CheckpointData, n: number, attributes: Record<string, string> = {}): SdkEvent => ({
  attributes: {
    id: `${data.runId}.ingest`,
    type: 'heimdall.checkpoint.created',
    source: 'trainer/python-sdk',
    subject: data.key,
    time: '2026-11-27T12:00:00.123456+02:00',
    traceparent: traceOf(n).traceparent,
    tracestate: 'python=sdk',
    datacontenttype: 'application/json',
    ...attributes,
  },
  data,
});

let dir: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-cloudevents-python-');
});

describe('a function over HTTP, the Python SDK as its client', () => {
  let fn: RunningFunction;
  let data: CheckpointData;
  beforeAll(async () => {
    const dataDir = join(dir, 'http');
    const env = { PORT: '0', HEIMDALL_DATA_DIR: dataDir, HEIMDALL_LOG_LEVEL: 'silent', ...QUICK_ENV };
    const checkpoint = join(dir, 'http.pth');
    await writeSmallCheckpoint(checkpoint, { seed: 61 });
    data = (await ingestLocalFile(checkpoint, (await createAdapters(loadConfig(env))).store, () => undefined)).data;
    fn = await serveFunction(stageFunctions.find((s) => s.name === 'export')!, { env });
  });
  afterAll(async () => fn?.stop());

  it('takes binary and structured events from both SDK APIs and answers the result, which the SDK parses, in the sender\'s trace', async () => {
    const exchanges = await sdk.http(`http://127.0.0.1:${fn.port}/`, createdBy(data, 1));
    expect(exchanges.map((e) => `${e.api} ${e.mode} ${e.status}`)).toEqual(['core binary 200', 'v1 binary 200', 'core structured 200', 'v1 structured 200']);
    for (const { api, mode, reply, headers } of exchanges) {
      const what = `${api} ${mode}`;
      expect(reply, what).toMatchObject({ specversion: '1.0', id: `${data.runId}.export`, type: 'heimdall.model.exported', source: 'heimdall/export', subject: data.key, tracestate: 'python=sdk', data: { runId: data.runId } });
      // The sender's trace id in a span of the stage's own; the W3C headers say the same.
      expect(parseTraceparent(reply!.traceparent!), what).toMatchObject({ traceId: traceOf(1).traceId, flags: '01' });
      expect(reply!.traceparent, what).not.toBe(traceOf(1).traceparent);
      expect(headers, what).toEqual(expect.objectContaining({ traceparent: reply!.traceparent, tracestate: 'python=sdk' }));
      expect(Number.isFinite(Date.parse(reply!.time!)), what).toBe(true);
    }
  });

  it('answers binary data (data_base64 in structured mode, octets in binary mode) with 415, naming what was sent', async () => {
    const octets: SdkEvent = { attributes: { ...createdBy(data, 2).attributes, datacontenttype: 'application/octet-stream' }, data_base64: Buffer.from(JSON.stringify(data)).toString('base64') };
    const exchanges = await sdk.http(`http://127.0.0.1:${fn.port}/`, octets);
    for (const { api, mode, status, body } of exchanges) {
      const sent = mode === 'structured' ? 'data_base64 (binary data)' : 'data content-type application/octet-stream';
      expect({ api, mode, status, error: JSON.parse(body!).error }).toEqual({ api, mode, status: 415, error: { code: 'UNSUPPORTED_MEDIA_TYPE', message: expect.stringContaining(`unsupported ${sent}: `) } });
    }
  });
});

describe('a stage worker on NATS, the Python SDK building the messages', () => {
  let server: NatsServer;
  let worker: WorkerProcess;
  let observer: PipelineObserver;
  let webhook: Awaited<ReturnType<typeof startWebhookReceiver>>;
  let store: FsObjectStore;
  beforeAll(async () => {
    server = await startNatsServer();
    webhook = await startWebhookReceiver();
    const dataDir = join(dir, 'nats');
    store = new FsObjectStore(dataDir);
    // Export alone (and the alerts subscriber): the messages under test are its input.
    worker = startServe({ NATS_URL: server.url, HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ALERT_WEBHOOKS: `${webhook.url}/alerts` }, ['--stages', 'export']);
    await waitFor('the worker to start', () => worker.stderr().includes('serving'), 60_000);
    observer = await PipelineObserver.connect(server.url);
    observer.follow();
  });
  afterAll(async () => {
    if (worker) await stopServe(worker);
    await observer?.close();
    await webhook?.close();
    await server?.stop();
  });

  /** Publishes a message as the SDK built it, on the export stage's input subject. */
  const publish = async (message: NatsMessage) => {
    const headers = natsHeaders();
    for (const [name, value] of Object.entries(message.headers)) headers.set(name, value);
    await jetstream(observer.nc).publish(subjectOf('heimdall.checkpoint.created'), Buffer.from(message.body_base64, 'base64'), Object.keys(message.headers).length > 0 ? { headers } : {});
  };
  const idle = () => Promise.all(['heimdall-export', 'heimdall-subscribers'].map((durable) => waitFor(`${durable} to be idle`, () => observer.idle(EVENTS_STREAM, durable))));

  /** A checkpoint in the bucket, and the data of its checkpoint.created. */
  async function checkpoint(seed: number): Promise<CheckpointData> {
    const path = join(dir, `nats-${seed}.pth`);
    await writeSmallCheckpoint(path, { seed });
    const key = `runs/python sdk/${seed}.pth`;
    const info = await store.putFile(CHECKPOINTS_BUCKET, key, path);
    const sha256 = createHash('sha256').update(await readFile(path)).digest('hex');
    return { bucket: CHECKPOINTS_BUCKET, key, size: info.size, etag: info.etag, runId: runIdOf(sha256), sha256 };
  }

  const forms = ['structured', 'structured-bare', 'headerless', 'binary'] as const;

  it('consumes the three structured forms and binary mode with ce-datacontenttype, each result in its sender\'s trace', async () => {
    const runs = await Promise.all(forms.map((_, i) => checkpoint(70 + i)));
    const messages = await Promise.all(forms.map(async (form, i) => (await sdk.nats(createdBy(runs[i]!, 3 + i))).find((m) => m.form === form)!));
    expect(messages.map((m) => [m.form, m.headers['content-type'] ?? m.headers['ce-datacontenttype'] ?? 'no headers'])).toEqual([
      ['structured', 'application/cloudevents+json'],
      ['structured-bare', 'application/cloudevents'],
      ['headerless', 'no headers'],
      ['binary', 'application/json'],
    ]);
    for (const message of messages) await publish(message);

    for (const [i, form] of forms.entries()) {
      const { runId, key } = runs[i]!;
      const exported = await waitFor(`the export of the ${form} message`, () => observer.of('heimdall.model.exported', runId)[0], 60_000);
      expect(exported, form).toMatchObject({ source: 'heimdall/export', subject: key, tracestate: 'python=sdk' });
      expect(parseTraceparent(exported.traceparent!)?.traceId, form).toBe(traceOf(3 + i).traceId);
    }
    await idle();
    expect((await (await jetstreamManager(observer.nc)).consumers.info(EVENTS_STREAM, 'heimdall-export')).num_redelivered).toBe(0);
    expect(worker.stderr()).not.toMatch(/invalid event terminated/);
  });

  // The same guarantee for messages of other shapes: test/integration/nats.test.ts ("terminates a
  // foreign, invalid message on a stage subject"). Here the foreign messages are the SDK's own.
  it('terminates foreign SDK messages on the stage subject (binary data, a type of someone else\'s): no run changes state, nothing is published, no alert', async () => {
    await idle();
    const jsm = await jetstreamManager(observer.nc);
    const runState = new KvRunStateStore(await openKv(observer.nc, 'heimdall_runs'));
    const before = { runs: await runState.list(), messages: (await jsm.streams.info(EVENTS_STREAM)).state.messages, alerts: webhook.requests.length };
    expect(before.runs.length).toBeGreaterThan(0);

    // The run named in them is one of those above.
    const named = before.runs[0]!.runId;
    const data = { bucket: CHECKPOINTS_BUCKET, key: 'runs/python sdk/70.pth', size: 1, etag: 'e', runId: named };
    const octets: SdkEvent = { attributes: { ...createdBy(data, 8).attributes, datacontenttype: 'application/octet-stream' }, data_base64: Buffer.from(JSON.stringify(data)).toString('base64') };
    const sensor = createdBy(data, 9, { type: 'com.example.sensor.reading', id: `${named}.ingest` });
    const [binaryData, otherType] = await Promise.all([sdk.nats(octets), sdk.nats(sensor)]);
    const foreign = [binaryData.find((m) => m.form === 'structured')!, binaryData.find((m) => m.form === 'binary')!, otherType.find((m) => m.form === 'headerless')!, otherType.find((m) => m.form === 'binary')!];
    for (const message of foreign) await publish(message);
    await waitFor('the worker to terminate them', () => (worker.stderr().match(/export: invalid event terminated/g) ?? []).length >= foreign.length, 60_000);
    await idle();

    expect((await jsm.consumers.info(EVENTS_STREAM, 'heimdall-export')).num_redelivered).toBe(0);
    expect((await jsm.streams.info(EVENTS_STREAM)).state.messages).toBe(before.messages + foreign.length);
    expect(observer.of('heimdall.pipeline.failed')).toHaveLength(0);
    expect(await runState.list()).toEqual(before.runs);
    expect(worker.stderr().match(/export: invalid event terminated/g)).toHaveLength(foreign.length);
    expect(webhook.requests.length).toBe(before.alerts);
    expect(worker.child.exitCode).toBeNull();
  });
});
