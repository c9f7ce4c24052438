import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import { HeimdallError } from '../../shared/errors/index.ts';
import { targetNamed } from './targets.ts';

/**
 * Runs fuzz inputs on a thread of its own, so that the harness can stop an input that never ends
 * (a synchronous loop cannot be interrupted in place) and a heap blow-up kills this thread, not
 * the run. One input at a time; file targets reuse one path per target.
 */

export interface RunRequest {
  readonly id: number;
  readonly target: string;
  readonly bytes: Uint8Array;
  /** Collect garbage first (the previous input left a lot), so that this input's figures are its own. */
  readonly gc?: boolean;
}

export type Outcome =
  | { readonly kind: 'ok' }
  | {
      readonly kind: 'heimdall';
      readonly code: string;
      readonly message: string;
      /** A JavaScript error the reader caught and re-threw under its code (`cause`), e.g. a TypeError. */
      readonly wrapped?: { readonly name: string; readonly message: string; readonly stack: string };
    }
  | { readonly kind: 'error'; readonly name: string; readonly message: string; readonly stack: string };

export interface RunReply {
  readonly id: number;
  readonly outcome: Outcome;
  readonly ms: number;
  /**
   * CPU time the process spent meanwhile (this thread, GC and I/O helpers; the harness thread only
   * waits): unlike `ms`, not stretched when other work shares the cores.
   */
  readonly cpuMs: number;
  /** heapUsed + external (array buffers included) after the run minus before, while its result is still held. */
  readonly heapGrowth: number;
  /** Growth of the process's peak RSS during the run (catches what was allocated and freed again). */
  readonly peakRssGrowth: number;
}

function wrapped(cause: unknown): { wrapped?: { name: string; message: string; stack: string } } {
  if (!(cause instanceof Error) || cause instanceof HeimdallError) return {};
  return { wrapped: { name: cause.constructor.name, message: cause.message, stack: cause.stack ?? '' } };
}

const { dir } = workerData as { dir: string };
const port = parentPort!;
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * Full collections until the figures settle: one is not always enough for array buffers that a
 * resolved promise held (their memory is released by the next).
 */
async function collect(): Promise<void> {
  let external = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
    const now = process.memoryUsage().external;
    if (now >= external) return;
    external = now;
  }
}

port.on('message', async (request: RunRequest) => {
  const target = targetNamed(request.target);
  const path = join(dir, `${request.target}.input`);
  if (target.file) await writeFile(path, request.bytes);
  if (request.gc) await collect();
  const before = process.memoryUsage();
  const peakBefore = process.resourceUsage().maxRSS * 1024;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  let outcome: Outcome;
  let result: unknown;
  try {
    result = await target.run({ bytes: request.bytes, path });
    outcome = { kind: 'ok' };
  } catch (error) {
    outcome =
      error instanceof HeimdallError
        ? { kind: 'heimdall', code: error.code, message: error.message, ...wrapped(error.cause) }
        : {
            kind: 'error',
            name: error instanceof Error ? error.constructor.name : typeof error,
            message: error instanceof Error ? error.message : String(error),
            stack: error instanceof Error ? (error.stack ?? '') : '',
          };
  }
  const ms = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  const after = process.memoryUsage();
  void result; // held until measured
  const reply: RunReply = {
    id: request.id,
    outcome,
    ms,
    cpuMs: (cpu.user + cpu.system) / 1000,
    heapGrowth: after.heapUsed + after.external - (before.heapUsed + before.external),
    peakRssGrowth: process.resourceUsage().maxRSS * 1024 - peakBefore,
  };
  port.postMessage(reply);
});

port.postMessage({ ready: true });
