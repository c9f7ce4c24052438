import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';
import type { RunStateStore } from '../pipeline/run-state/run-state.ts';
import { dashboardApp } from './app.ts';
import type { ModelsSource } from './data.ts';

export interface DashboardOptions {
  /** Where runs are read: FsRunStateStore on the embedded default, the KV bucket on NATS. */
  readonly runState: RunStateStore;
  /** Where each alias's holder and history are read. */
  readonly models: ModelsSource;
  /** 0 picks a free port (tests). */
  readonly port: number;
  /** Default loopback: the page is exposed beyond this machine only when asked (`0.0.0.0`). */
  readonly host?: string;
  readonly logger: Logger;
  readonly refreshSeconds?: number;
}

export interface Dashboard {
  readonly url: string;
  /** Stops listening and drops open connections (a browser keeps its connection alive). */
  close(): Promise<void>;
}

/** Serves the status page until `close()`. */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const host = options.host ?? '127.0.0.1';
  const app = dashboardApp({ runState: options.runState, models: options.models, logger: options.logger, refreshSeconds: options.refreshSeconds ?? 5 });
  const server = createAdaptorServer({ fetch: app.fetch }) as Server;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => reject(new HeimdallError(ErrorCodes.IO_ERROR, `status page cannot listen on ${host}:${options.port}: ${error.message}`, { cause: error })));
    server.listen(options.port, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}/`;
  options.logger.info({ url }, 'status page listening');
  return {
    url,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}
