/**
 * An HTTP proxy in front of a real service, for what the service will not do on demand: answer
 * 503 for a while, demand a bearer token (as an auth gateway before MLflow does), or count the
 * requests a client makes. Everything else passes through unchanged (headers included, so S3
 * signatures stay valid).
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { once } from 'node:events';

export interface ProxyOptions {
  /**
   * Decides on a request's Authorization header: the header to send upstream instead, `undefined`
   * to answer 401. Without it the header passes unchanged.
   */
  readonly authorize?: (authorization: string | undefined) => string | undefined;
}

export interface HttpProxy {
  readonly url: string;
  /** Requests received, failed ones included. */
  readonly requests: number;
  /** Paths of the requests received, in order. */
  readonly paths: readonly string[];
  /** Answers the next `count` requests with `status` (default 503) instead of passing them on. */
  failNext(count: number, status?: number): void;
  stop(): Promise<void>;
}

export async function startHttpProxy(target: string, options: ProxyOptions = {}): Promise<HttpProxy> {
  const upstream = new URL(target);
  const paths: string[] = [];
  let failures: { count: number; status: number } = { count: 0, status: 503 };

  const server = createServer((incoming: IncomingMessage, outgoing: ServerResponse) => {
    paths.push(incoming.url ?? '');
    if (failures.count > 0) {
      failures.count--;
      incoming.resume();
      outgoing.writeHead(failures.status, { 'content-type': 'text/plain' }).end('injected failure');
      return;
    }
    const headers = { ...incoming.headers };
    if (options.authorize) {
      const authorization = options.authorize(incoming.headers.authorization);
      if (authorization === undefined) {
        incoming.resume();
        outgoing.writeHead(401, { 'content-type': 'text/plain' }).end('bearer token required');
        return;
      }
      headers.authorization = authorization;
    }
    const forward = request({ host: upstream.hostname, port: upstream.port, method: incoming.method, path: incoming.url, headers }, (response) => {
      outgoing.writeHead(response.statusCode ?? 502, response.headers);
      response.pipe(outgoing);
    });
    forward.on('error', () => outgoing.destroy());
    incoming.pipe(forward);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return paths.length;
    },
    paths,
    failNext(count, status = 503) {
      failures = { count, status };
    },
    async stop() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
