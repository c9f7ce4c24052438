/**
 * An HTTP proxy in front of a real service, for what the service will not do on demand: answer
 * 503 for a while or a given answer once, demand a bearer token (as an auth gateway before MLflow
 * does), corrupt a body in transit, or record the requests a client makes. Everything else passes
 * through unchanged (headers included, Host too, so S3 signatures stay valid).
 */
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import { Transform } from 'node:stream';

export interface ProxyOptions {
  /**
   * Decides on a request's Authorization header: the header to send upstream instead, `undefined`
   * to answer 401. Without it the header passes unchanged.
   */
  readonly authorize?: (authorization: string | undefined) => string | undefined;
}

/** A request as the proxy received it. */
export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
}

export interface HttpProxy {
  readonly url: string;
  /** Requests received, failed ones included. */
  readonly requests: number;
  /** Paths of the requests received, in order. */
  readonly paths: readonly string[];
  /** The requests received, in order, with their headers. */
  readonly received: readonly RecordedRequest[];
  /** Answers the next `count` requests with `status` (default 503) instead of passing them on. */
  failNext(count: number, status?: number): void;
  /** Flips one byte in the body of the next request that has one, as a bad link or NIC would (the length stays). */
  corruptNextBody(): void;
  /** Answers the next request that `matches` accepts with `status` and `body` (XML) instead of passing it on. */
  answerNext(matches: (request: RecordedRequest) => boolean, status: number, body: string): void;
  stop(): Promise<void>;
}

export async function startHttpProxy(target: string, options: ProxyOptions = {}): Promise<HttpProxy> {
  const upstream = new URL(target);
  const received: RecordedRequest[] = [];
  let failures: { count: number; status: number } = { count: 0, status: 503 };
  let corruptNext = false;
  const answers: Array<{ matches: (request: RecordedRequest) => boolean; status: number; body: string }> = [];

  const server = createServer((incoming: IncomingMessage, outgoing: ServerResponse) => {
    const recorded = { method: incoming.method ?? '', path: incoming.url ?? '', headers: { ...incoming.headers } };
    received.push(recorded);
    const answer = answers.findIndex((a) => a.matches(recorded));
    if (answer >= 0) {
      const { status, body } = answers.splice(answer, 1)[0]!;
      incoming.resume();
      outgoing.writeHead(status, { 'content-type': 'application/xml' }).end(body);
      return;
    }
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
    const hasBody = Number(incoming.headers['content-length'] ?? 0) > 0;
    if (corruptNext && hasBody) {
      corruptNext = false;
      incoming.pipe(flipFirstByte()).pipe(forward);
    } else {
      incoming.pipe(forward);
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return received.length;
    },
    get paths() {
      return received.map((r) => r.path);
    },
    received,
    failNext(count, status = 503) {
      failures = { count, status };
    },
    corruptNextBody() {
      corruptNext = true;
    },
    answerNext(matches, status, body) {
      answers.push({ matches, status, body });
    },
    async stop() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

function flipFirstByte(): Transform {
  let flipped = false;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (!flipped && chunk.length > 0) {
        flipped = true;
        chunk = Buffer.from(chunk);
        chunk[0] = chunk[0]! ^ 0xff;
      }
      done(null, chunk);
    },
  });
}
