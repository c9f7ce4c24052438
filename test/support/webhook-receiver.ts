import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ReceivedRequest {
  readonly path: string;
  readonly contentType: string | undefined;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: unknown;
  /** What the receiver answered: an HTTP status, or `hang` (never answered). */
  readonly answer: number | 'hang';
  /** performance.now() on arrival. */
  readonly at: number;
}

/**
 * A real HTTP server standing in for Slack's incoming webhooks: records every request and answers
 * the scripted statuses in order (`hang` never answers), then 200.
 */
export async function startWebhookReceiver(script: ReadonlyArray<number | 'hang'> = []) {
  const requests: ReceivedRequest[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const answer = script[requests.length] ?? 200;
      requests.push({ path: request.url ?? '', contentType: request.headers['content-type'], headers: request.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')), answer, at: performance.now() });
      if (answer !== 'hang') response.writeHead(answer, { 'content-type': 'text/plain' }).end(answer === 200 ? 'ok' : 'error');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    requests,
    /** The texts of the alerts it accepted (answered 200). */
    accepted: () => requests.filter((r) => r.answer === 200).map((r) => (r.body as { text: string }).text),
    async waitForRequests(count: number, timeoutMs = 10_000): Promise<void> {
      const deadline = performance.now() + timeoutMs;
      while (requests.length < count) {
        if (performance.now() > deadline) throw new Error(`webhook receiver got ${requests.length} requests, expected ${count}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
