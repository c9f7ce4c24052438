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

/** A server list for messages and logs: `nats://user:pass@host` keeps its host, not its secret. */
export function withoutCredentials(url: string): string {
  return url.replace(/\/\/[^@/,]*@/g, '//');
}
