import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../../logging/index.ts';

/**
 * A connection that outlives server restarts: it waits for the first server and reconnects forever
 * (a worker without NATS can do nothing useful, and giving up would lose its in-flight message).
 */
export async function connectNats(url: string, name: string, logger: Logger): Promise<NatsConnection> {
  const nc = await connect({ servers: url.split(','), name, maxReconnectAttempts: -1, reconnectTimeWait: 500, waitOnFirstConnect: true });
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'disconnect' || status.type === 'reconnect') logger.warn({ nats: status.type, server: 'server' in status ? status.server : undefined }, `nats ${status.type}`);
    }
  })();
  return nc;
}
