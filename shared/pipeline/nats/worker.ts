import { jetstream, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { MsgHdrs, NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../../logging/index.ts';
import type { ConsumerName, DeliveryLimits } from '../../bus/nats/provision.ts';
import { provisionConsumer } from '../../bus/nats/provision.ts';

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
  /** Called when JetStream gave up on a message after MaxDeliver deliveries (worker crashes, timeouts). */
  readonly onExhausted?: (delivery: Pick<Delivery, 'headers' | 'body' | 'attempt'>) => Promise<void>;
  readonly onProgress?: (message: string) => void;
  /** Another durable consumer on the same input as the named one (the local broker's HTTP delivery). */
  readonly durable?: string;
}

export interface Worker {
  readonly name: ConsumerName;
  /** Stops pulling, lets the in-flight message finish (or hands it back after the grace period). */
  stop(): Promise<void>;
}

/**
 * A durable pull consumer worked one message at a time (several processes on one consumer share its
 * messages). Explicit acks: a message is acknowledged only after its results are published, so a
 * crash anywhere before that means redelivery, never loss. While a message is processed the worker
 * sends `working()` heartbeats, so AckWait bounds a hung worker, not a long step.
 */
export async function startWorker(name: ConsumerName, process: Processor, options: WorkerOptions): Promise<Worker> {
  const { stream, durable } = await provisionConsumer(options.jsm, name, options.limits, options.durable);
  const logger = options.logger.child({ worker: name });
  const consumer = await jetstream(options.nc).consumers.get(stream, durable);
  // Heartbeats follow the consumer's AckWait as the server has it (another process may have set it).
  const heartbeatMs = ((await consumer.info()).config.ack_wait ?? options.limits.ackWaitSeconds * 1e9) / 1e6 / 3;
  const messages = await consumer.consume({ max_messages: 1 });
  const abort = new AbortController();
  let inFlight: Promise<void> = Promise.resolve();

  const advisories = options.onExhausted ? watchExhausted(stream, durable, options, logger) : undefined;

  const loop = (async () => {
    for await (const message of messages) {
      inFlight = handle(message);
      await inFlight;
    }
  })().catch((error: unknown) => logger.error({ err: error }, 'consumer stopped'));

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
      else if (disposition.kind === 'ack') await message.ackAck();
      else if (disposition.kind === 'retry') message.nak(disposition.delayMs);
      else {
        // The reason is logged, not sent: `+TERM <reason>` needs nats-server 2.10, and older servers ignore the term.
        logger.warn({ reason: disposition.reason }, 'message terminated');
        message.term();
      }
    } catch (error) {
      // Publishing failed (NATS unreachable, say): handed back for a retry soon; if even that cannot
      // reach the server, JetStream redelivers after AckWait.
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
      const grace = setTimeout(() => abort.abort(), options.graceMs);
      messages.stop();
      await inFlight;
      await loop;
      clearTimeout(grace);
      advisories?.unsubscribe();
    },
  };
}

/**
 * JetStream stops delivering a message after MaxDeliver without telling the consumer; it publishes
 * an advisory instead (https://docs.nats.io/using-nats/developer/develop_jetstream/consumers,
 * "MaxDeliver"). One worker per consumer (queue group) turns it into the stage's failure.
 */
function watchExhausted(stream: string, durable: string, options: WorkerOptions, logger: Logger) {
  const subject = `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${stream}.${durable}`;
  return options.nc.subscribe(subject, {
    queue: `${durable}-advisories`,
    callback: (error, advisory) => {
      if (error) return;
      void (async () => {
        const { stream_seq: seq, deliveries } = advisory.json<{ stream_seq: number; deliveries: number }>();
        const stored = await options.jsm.streams.getMessage(stream, { seq });
        if (!stored) return;
        await options.onExhausted!({ headers: stored.header, body: stored.string(), attempt: deliveries });
      })().catch((failure: unknown) => logger.error({ err: failure }, 'cannot report an exhausted message'));
    },
  });
}
