import { setTimeout as sleep } from 'node:timers/promises';
import { jetstream, type ConsumerMessages, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { MsgHdrs, NatsConnection } from '@nats-io/transport-node';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import type { Logger } from '../../logging/index.ts';
import type { ConsumerName, DeliveryLimits } from '../../bus/nats/provision.ts';
import { provisionConsumer, provisionStreams } from '../../bus/nats/provision.ts';
import { retryTransient } from '../../bus/nats/transient.ts';

/** One delivery of a message, as a processor sees it. */
export interface Delivery {
  readonly headers: MsgHdrs | undefined;
  readonly body: string;
  /** 1 on first delivery; JetStream counts redeliveries. */
  readonly attempt: number;
  readonly maxDeliver: number;
  /** Aborted when the worker must hand the message back (shutdown past its grace period). */
  readonly signal: AbortSignal;
  /** Reports progress; also tells JetStream the message is still being worked on. */
  progress(message: string): void;
}

/** What to do with a message once processed: done, try again later, or never again. */
export type Disposition = { readonly kind: 'ack' } | { readonly kind: 'retry'; readonly delayMs: number } | { readonly kind: 'term'; readonly reason: string };

export type Processor = (delivery: Delivery) => Promise<Disposition>;

/** How soon a message whose result could not be published is tried again. */
const PUBLISH_RETRY_MS = 5000;

export interface WorkerOptions {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly limits: DeliveryLimits;
  readonly logger: Logger;
  /** How long a stopping worker lets its in-flight message finish before handing it back. */
  readonly graceMs: number;
  /** HEIMDALL_NATS_REPLICAS, for the streams provisioned again when they went away (default 1: never lowers them). */
  readonly replicas?: number;
  readonly onProgress?: (message: string) => void;
  /** Another durable consumer on the same input as the named one (the local broker's HTTP delivery). */
  readonly durable?: string;
}

export interface Worker {
  readonly name: ConsumerName;
  /** Stops pulling, lets the in-flight message finish (or hands it back after the grace period). */
  stop(): Promise<void>;
}

/** How long a pull request waits on the server (the client's default is 30 s: as long to notice a dead server). */
const PULL_EXPIRES_MS = 5000;
/** After the grace period, how long a stopping worker waits for its processor to notice the abort. */
const HANDBACK_MS = 1000;
/** Backoff between attempts to consume again after the consumer failed (1 s doubling to 30 s). */
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;

/**
 * A durable pull consumer worked one message at a time (several processes on one consumer share its
 * messages). Explicit acks: a message is acknowledged only after its results are published, so a
 * crash anywhere before that means redelivery, never loss. While a message is processed the worker
 * sends `working()` heartbeats, so AckWait bounds a hung worker, not a long step.
 *
 * A worker never dies quietly: when its consumer goes away (deleted, its stream lost with a server's
 * store) or the consume loop fails for any reason, it provisions the consumer again and resumes,
 * with backoff; an error in one message is that message's (handed back), never the process's.
 * `stop` is bounded by the grace period whether or not NATS answers.
 */
export async function startWorker(name: ConsumerName, process: Processor, options: WorkerOptions): Promise<Worker> {
  const { stream, durable } = await provisionConsumer(options.jsm, name, options.limits, options.durable);
  const logger = options.logger.child({ worker: name });
  const abort = new AbortController();
  /** Set by stop(): no new message is taken, the restart loop ends. */
  const stopping = new AbortController();
  let inFlight: Promise<void> = Promise.resolve();
  let messages: ConsumerMessages | undefined;
  let heartbeatMs = (options.limits.ackWaitSeconds * 1000) / 3;

  /** Opens the consumer (provisioning it, and the streams, again when they went away). */
  const open = async (reprovision: boolean) => {
    if (reprovision) {
      await provisionStreams(options.nc, options.replicas);
      await provisionConsumer(options.jsm, name, options.limits, options.durable);
    }
    const consumer = await jetstream(options.nc).consumers.get(stream, durable);
    // Heartbeats follow the consumer's AckWait as the server has it (another process may have set it).
    heartbeatMs = ((await consumer.info()).config.ack_wait ?? options.limits.ackWaitSeconds * 1e9) / 1e6 / 3;
    // A consumer or stream that disappears ends the iterator (instead of waiting for it forever): we provision it again.
    // Pull requests expire every PULL_EXPIRES_MS: after a server dies or the consumer changes leader, the
    // client notices by missed heartbeats (half of it) and asks again, backing off by the same.
    return consumer.consume({ max_messages: 1, abort_on_missing_resource: true, expires: PULL_EXPIRES_MS });
  };
  messages = await open(false);

  const loop = (async () => {
    for (let failures = 0; ; ) {
      try {
        messages ??= await open(true);
        if (stopping.signal.aborted) messages.stop();
        for await (const message of messages) {
          inFlight = handle(message);
          await inFlight;
          failures = 0;
        }
        // The iterator also ends when the consumer went away (abort_on_missing_resource).
        const closed = await messages.closed();
        if (closed instanceof Error) throw closed;
      } catch (error) {
        if (stopping.signal.aborted) break;
        failures++;
        logger.error({ err: error, failures }, 'consumer failed; consuming again');
      }
      messages = undefined;
      if (stopping.signal.aborted) break;
      if (failures === 0) failures = 1; // ended without an error, but not stopped: still back off
      await sleep(Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** (failures - 1)), undefined, { signal: stopping.signal }).catch(() => undefined);
      if (stopping.signal.aborted) break;
    }
  })();

  async function handle(message: JsMsg): Promise<void> {
    let lastBeat = Date.now();
    const beat = () => {
      try {
        message.working();
      } catch {
        // Connection closed: nothing to keep alive; the message is redelivered if it is not acked.
      }
      lastBeat = Date.now();
    };
    const timer = setInterval(beat, heartbeatMs);
    try {
      const disposition = await process({
        headers: message.headers,
        body: message.string(),
        attempt: message.info.deliveryCount,
        maxDeliver: options.limits.maxDeliver,
        signal: abort.signal,
        progress: (text) => {
          options.onProgress?.(text);
          if (Date.now() - lastBeat > heartbeatMs / 2) beat();
        },
      });
      if (abort.signal.aborted) message.nak();
      else if (disposition.kind === 'ack') await acknowledge(message, options.nc, logger);
      else if (disposition.kind === 'retry') message.nak(disposition.delayMs);
      else {
        // The reason is logged, not sent: `+TERM <reason>` needs nats-server 2.10, and older servers ignore the term.
        logger.warn({ reason: disposition.reason }, 'message terminated');
        message.term();
      }
    } catch (error) {
      // Publishing failed (NATS unreachable, say), or the processor had a bug: handed back for a
      // retry soon; if even that cannot reach the server, JetStream redelivers after AckWait.
      logger.error({ err: error }, 'message handed back for redelivery');
      try {
        message.nak(PUBLISH_RETRY_MS);
      } catch {
        // Not connected: AckWait brings it back.
      }
    } finally {
      clearInterval(timer);
    }
  }

  return {
    name,
    async stop() {
      // The grace period starts now: past it, the in-flight message is aborted and handed back.
      const grace = setTimeout(() => abort.abort(new HeimdallError(ErrorCodes.ABORTED, `${name} worker stopping: message handed back`)), options.graceMs);
      stopping.abort();
      try {
        messages?.stop();
      } catch {
        // Already stopped, or the connection is gone: nothing more will be delivered either way.
      }
      // A processor stuck on a server that is gone (a publish that never returns) is not waited for
      // past the grace period: its message was not acknowledged, so JetStream delivers it again.
      const settled = await within(Promise.all([inFlight, loop]), options.graceMs + HANDBACK_MS);
      clearTimeout(grace);
      if (!settled) logger.warn({ graceMs: options.graceMs }, 'in-flight message did not stop within the grace period; left for redelivery');
    },
  };
}

/** Whether `work` settled within `ms` (it is left running otherwise). */
export async function within(work: Promise<unknown>, ms: number): Promise<boolean> {
  const timer = new AbortController();
  const settled = await Promise.race([work.then(() => true, () => true), sleep(ms, false, { signal: timer.signal }).catch(() => false)]);
  timer.abort();
  return settled;
}

const ACK = new TextEncoder().encode('+ACK');
const ACK_TIMEOUT_MS = 5000;

/**
 * Acknowledges a message and waits for JetStream to confirm it. An ack whose confirmation does not
 * come (the consumer's leader changed, a server restarted) is sent again: acks are idempotent, and a
 * lost one would mean a redelivery and the stage done twice. The client sends `ackAck` once per
 * message, so the repeats are the same request made by hand.
 */
async function acknowledge(message: JsMsg, nc: NatsConnection, logger: Logger): Promise<void> {
  // The ack subject: the client's messages have it (JsMsgImpl.reply), though its JsMsg type does not say so.
  const subject = (message as JsMsg & { readonly reply?: string }).reply;
  let first = true;
  await retryTransient(
    'ack',
    async () => {
      if (first || !subject) {
        first = false;
        await message.ackAck();
      } else await nc.request(subject, ACK, { timeout: ACK_TIMEOUT_MS });
    },
    { logger },
  );
}
