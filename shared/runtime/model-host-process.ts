// Loaded as CommonJS (see startChild): no top-level await, no import.meta.
// The child process of model-host.ts: one onnxruntime session, runs and the benchmark's timing on request.
import * as ort from 'onnxruntime-node';
import { HeimdallError } from '../errors/index.ts';
import { INPUT_NAME, INPUT_SHAPE } from '../models/localization-net/architecture.ts';
import type { HostReply, HostRequest, TimingRequest } from './model-host.ts';
import { sampleInput } from './sample-input.ts';
import { openSession, type OpenedSession, type SessionOptions } from './session.ts';
import { timeBatch } from './timing.ts';

let opened: { session: OpenedSession; options: SessionOptions } | undefined;

const send = (reply: HostReply) => process.send!(reply);

async function answer(request: HostRequest): Promise<HostReply> {
  if (request.kind === 'open') {
    const session = await openSession(request.path, request.options);
    opened = { session, options: request.options };
    const { provider, threads, createMs, warnings } = session;
    return { kind: 'opened', provider, threads, createMs, warnings };
  }
  if (!opened) throw new Error('no session is open');
  if (request.kind === 'run') {
    const feeds = Object.fromEntries(Object.entries(request.feeds).map(([name, { data, dims }]) => [name, new ort.Tensor('float32', data, dims)]));
    const results = await opened.session.session.run(feeds);
    return { kind: 'outputs', outputs: Object.fromEntries(Object.entries(results).map(([name, t]) => [name, { type: t.type, dims: [...t.dims], data: t.data }])) };
  }
  return { kind: 'timed', warnings: await time(request.request, opened) };
}

/** The benchmark's batch sizes in turn, the holder (when given, opened as the model was) interleaved with the model. */
async function time(request: TimingRequest, { session, options }: NonNullable<typeof opened>): Promise<string[]> {
  const warnings: string[] = [];
  const holder = request.holderPath ? await openHolder(request.holderPath, options, warnings) : undefined;
  try {
    const sessions = holder ? [session.session, holder] : [session.session];
    for (const batch of request.batches) {
      let feeds: Record<string, ort.Tensor>;
      try {
        feeds = { [INPUT_NAME]: new ort.Tensor('float32', sampleInput(batch), [batch, ...INPUT_SHAPE]) };
      } catch (error) {
        throw new Error(`cannot allocate the batch-${batch} input (${batch * 3 * 128 * 32 * 4} bytes): ${(error as Error).message}`);
      }
      const { warmup, measureMs, timings } = await timeBatch(sessions, feeds, request);
      send({ kind: 'batch', batch, warmup, measureMs, candidate: timings[0]!, ...(timings[1] ? { holder: timings[1] } : {}) });
    }
  } finally {
    await holder?.release();
  }
  return warnings;
}

/**
 * The holder's session, or none (and a warning) when it will not load here: it passed every stage
 * once, so this is the machine or a runtime that changed since, never the candidate's fault, and
 * failing the candidate would fail every run until the alias moves by hand.
 */
async function openHolder(path: string, options: SessionOptions, warnings: string[]): Promise<ort.InferenceSession | undefined> {
  try {
    return (await openSession(path, options)).session;
  } catch (error) {
    warnings.push(`no latency baseline: the alias holder's model does not load here (${(error as Error).message.split('\n')[0]})`);
    return undefined;
  }
}

process.on('message', (request: HostRequest) => {
  answer(request).then(send, (error: unknown) =>
    send({ kind: 'failed', message: (error as Error).message, ...(error instanceof HeimdallError ? { code: error.code } : {}) }),
  );
});
// The parent gone (its end of the channel closed): there is nothing left to serve.
process.on('disconnect', () => process.exit(0));
