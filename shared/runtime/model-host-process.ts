// Loaded as CommonJS (see startChild): no top-level await, no import.meta.
// The child process of model-host.ts: one onnxruntime session, runs and the benchmark's timing on request.
import * as ort from 'onnxruntime-node';
import { HeimdallError } from '../errors/index.ts';
import { INPUT_NAME, INPUT_SHAPE } from '../models/localization-net/architecture.ts';
import type { Companion, HostReply, HostRequest, TimingRequest } from './model-host.ts';
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

/** The benchmark's batch sizes in turn, the companions (opened as the model was; those that load) interleaved with the model. */
async function time(request: TimingRequest, { session, options }: NonNullable<typeof opened>): Promise<string[]> {
  const warnings: string[] = [];
  // One after another: the peak is the sessions' memory, not their loading at once as well.
  const companions: (ort.InferenceSession | undefined)[] = [];
  try {
    for (const companion of request.companions ?? []) companions.push(await openCompanion(companion, options, warnings));
    const loaded = companions.filter((c) => c !== undefined);
    const sessions = [session.session, ...loaded];
    for (const batch of request.batches) {
      let feeds: Record<string, ort.Tensor>;
      try {
        feeds = { [INPUT_NAME]: new ort.Tensor('float32', sampleInput(batch), [batch, ...INPUT_SHAPE]) };
      } catch (error) {
        throw new Error(`cannot allocate the batch-${batch} input (${batch * 3 * 128 * 32 * 4} bytes): ${(error as Error).message}`);
      }
      const { warmup, measureMs, timings } = await timeBatch(sessions, feeds, request);
      const byCompanion = companions.map((c) => (c ? timings[sessions.indexOf(c)]! : null));
      send({ kind: 'batch', batch, warmup, measureMs, candidate: timings[0]!, companions: byCompanion });
    }
  } finally {
    await Promise.all(companions.map((c) => c?.release()));
  }
  return warnings;
}

/**
 * A companion's session, or none (and its warning) when it will not load here. The alias holder
 * passed every stage once, so this is the machine or a runtime that changed since, never the
 * candidate's fault, and failing the candidate would fail every run until the alias moves by hand.
 */
async function openCompanion(companion: Companion, options: SessionOptions, warnings: string[]): Promise<ort.InferenceSession | undefined> {
  try {
    return (await openSession(companion.path, options)).session;
  } catch (error) {
    warnings.push(`${companion.unloadable} (${(error as Error).message.split('\n')[0]})`);
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
