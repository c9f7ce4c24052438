import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import type { Logger } from '../../logging/index.ts';

/**
 * A connection that outlives server restarts: it reconnects forever (a worker without NATS can do
 * nothing useful, and giving up would lose its in-flight message). Workers also wait for the first
 * server; a command a person runs (`status`, `watch`) fails at once instead.
 */
export async function connectNats(url: string, name: string, logger: Logger, options: { waitForServer: boolean }): Promise<NatsConnection> {
  const nc = await connect({ servers: url.split(','), name, maxReconnectAttempts: -1, reconnectTimeWait: 500, waitOnFirstConnect: options.waitForServer }).catch((error: Error) => {
    throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot reach NATS at ${withoutCredentials(url)}: ${error.message}`, { cause: error });
  });
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'disconnect' || status.type === 'reconnect') logger.warn({ nats: status.type, server: 'server' in status ? status.server : undefined }, `nats ${status.type}`);
    }
  })();
  return nc;
}

/** How long a closing connection waits for the server to confirm the drain before it just closes. */
export const DRAIN_TIMEOUT_MS = 2000;

/**
 * Drains the connection (subscriptions end, pending publishes are flushed), but never longer than
 * `drainMs`: a drain needs the server, and one that has gone away would be waited for forever
 * (the connection reconnects forever). Then it is closed; whatever was not flushed was not
 * acknowledged either, so JetStream redelivers it. Never throws.
 */
export async function closeNats(nc: NatsConnection, logger: Logger, drainMs = DRAIN_TIMEOUT_MS): Promise<{ drained: boolean }> {
  if (nc.isClosed()) return { drained: true };
  const drain = nc.isDraining() ? nc.closed().then(() => undefined) : nc.drain();
  let failure: unknown;
  let timer: NodeJS.Timeout | undefined;
  const drained = await Promise.race([
    drain.then(
      () => true,
      (error: unknown) => ((failure = error), false),
    ),
    new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), drainMs))),
  ]);
  clearTimeout(timer);
  if (drained) return { drained };
  logger.warn({ err: failure, drainMs }, failure ? 'nats drain failed; closing' : `nats did not answer the drain within ${drainMs} ms; closing`);
  await nc.close().catch(() => undefined);
  return { drained };
}

/** A server list for messages and logs: `nats://user:pass@host` keeps its host, not its secret. */
export function withoutCredentials(url: string): string {
  return url.replace(/\/\/[^@/,]*@/g, '//');
}
