/**
 * `npm run bench:events`: the event hop on a real nats-server over loopback — from a stage
 * publishing its result to the next stage's worker starting on it — through the production worker
 * (durable pull consumer, explicit ack, heartbeats). Reports p50/p99 of the hop against the target
 * (p99 <= 10 ms) and messages per second for a burst, next to the anchor measured in the same run:
 * a bare NATS round trip (flush) on the same connection.
 */
import { jetstream } from '@nats-io/jetstream';
import { provisionStreams } from '../../shared/bus/nats/provision.ts';
import { encodeEvent } from '../../shared/bus/nats/codec.ts';
import { connectNats } from '../../shared/bus/nats/connection.ts';
import { subjectOf } from '../../shared/bus/nats/subjects.ts';
import { createEvent, runIdOf } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { startWorker } from '../../shared/pipeline/nats/worker.ts';
import { startNatsServer } from '../support/nats-server.ts';

const HOPS = Number(process.env.BENCH_HOPS ?? 500);
const BURST = Number(process.env.BENCH_BURST ?? 2000);
const TARGET_P99_MS = 10;
const SENT_AT = 'heimdall-bench-sent-at';

const logger = createLogger('warn');
const server = await startNatsServer();
const nc = await connectNats(server.url, 'bench-events', logger, { waitForServer: false });
try {
  const jsm = await provisionStreams(nc);
  const js = jetstream(nc);
  let onHandled: (latencyMs: number) => void = () => undefined;
  const worker = await startWorker(
    'export',
    async (delivery) => {
      onHandled(performance.now() - Number(delivery.headers!.get(SENT_AT)));
      return { kind: 'ack' };
    },
    { nc, jsm, limits: { ackWaitSeconds: 30, maxDeliver: 5 }, logger, graceMs: 1000 },
  );
  let sequence = 0;
  const publish = async () => {
    const sha = (sequence++).toString(16).padStart(64, '0');
    const event = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'k.pth', size: 1, etag: 'e', runId: runIdOf(sha) } });
    const { headers, body } = encodeEvent(event);
    headers.set(SENT_AT, String(performance.now()));
    await js.publish(subjectOf(event.type), body, { msgID: `${event.id}.${sequence}`, headers });
  };

  // Anchor: a bare round trip to the server.
  const rtts: number[] = [];
  for (let i = 0; i < HOPS; i++) {
    const t = performance.now();
    await nc.flush();
    rtts.push(performance.now() - t);
  }

  // Hop latency, one event at a time (warm-up first).
  const hops: number[] = [];
  for (let i = 0; i < HOPS + 50; i++) {
    const handled = new Promise<number>((resolve) => (onHandled = resolve));
    await publish();
    const latency = await handled;
    if (i >= 50) hops.push(latency);
  }

  // Throughput: a burst published at once, worked by one worker.
  let remaining = BURST;
  const allHandled = new Promise<void>((resolve) => (onHandled = () => --remaining === 0 && resolve()));
  const started = performance.now();
  await Promise.all(Array.from({ length: BURST }, publish));
  await allHandled;
  const burstSeconds = (performance.now() - started) / 1000;
  await worker.stop();

  const p = (values: number[], q: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(q * values.length))]!;
  const hop = { p50: p(hops, 0.5), p99: p(hops, 0.99) };
  const anchor = { p50: p(rtts, 0.5), p99: p(rtts, 0.99) };
  const perSecond = BURST / burstSeconds;
  console.log(
    [
      `event hop (publish -> handler start), ${HOPS} hops: p50 ${hop.p50.toFixed(2)} ms, p99 ${hop.p99.toFixed(2)} ms   [${hop.p99 <= TARGET_P99_MS ? 'meets target' : 'MISSES target'}: p99 <= ${TARGET_P99_MS} ms]`,
      `anchor: bare NATS round trip p50 ${anchor.p50.toFixed(3)} ms, p99 ${anchor.p99.toFixed(3)} ms; hop / round trip: p50 x${(hop.p50 / anchor.p50).toFixed(1)}, p99 x${(hop.p99 / anchor.p99).toFixed(1)}`,
      `burst of ${BURST}: ${perSecond.toFixed(0)} messages/s through one worker (publish, pull, handle, ack)`,
    ].join('\n'),
  );
  console.log(JSON.stringify({ hopMs: hop, anchorMs: anchor, messagesPerSecond: perSecond, hops: HOPS, burst: BURST }));
} finally {
  await nc.drain();
  await server.stop();
}
