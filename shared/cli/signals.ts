import { constants } from 'node:os';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';

const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT'];
/** After a stopped command has cleaned up, the process exits within this even if a thread (a hash still running) would keep it alive. */
const EXIT_AFTER_CLEANUP_MS = 1000;

/** Resolves on the first SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C): when a long-running command stops. */
export function untilStopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      for (const s of STOP_SIGNALS) process.off(s, stop);
      resolve(signal);
    };
    for (const s of STOP_SIGNALS) process.once(s, stop);
  });
}

/**
 * Ends the process the way the signal would have, had we not caught it: the status a shell sees is
 * the same 128 + n, and no exit handlers run. (process.exit() would tear down native add-ons while
 * a worker thread still runs inside one — onnxruntime aborts the process then, status 134.)
 */
function dieBy(signal: NodeJS.Signals): void {
  for (const s of STOP_SIGNALS) process.removeAllListeners(s);
  process.kill(process.pid, signal);
}

/** The exit status of a command stopped by a signal, as shells report one: 128 + its number (SIGINT 130, SIGTERM 143). */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}

/** A command that stops cleanly on SIGTERM or SIGINT (`heimdall export`, `heimdall run`). */
export interface StopSignals {
  /** Aborted on the first SIGTERM or SIGINT, with an ABORTED HeimdallError naming the signal as its reason. */
  readonly signal: AbortSignal;
  /** The signal received, if one was. */
  readonly received: NodeJS.Signals | undefined;
  /** The ABORTED error the signal's reason is. */
  readonly error: HeimdallError | undefined;
  /**
   * Removes the handlers. When a signal was received the command has cleaned up by now, so the
   * process is made to exit shortly (with the exit code the CLI set) instead of waiting for
   * background threads that cannot be cancelled.
   */
  dispose(): void;
}

/**
 * Turns SIGTERM/SIGINT into an abort of the command's work: the command removes what it half wrote,
 * records the run as failed with ABORTED and exits with `signalExitCode`. A second signal while it
 * cleans up exits at once.
 */
export function watchStopSignals(what: string, say: (line: string) => void = (line) => process.stderr.write(`${line}\n`)): StopSignals {
  const controller = new AbortController();
  let received: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (received) return dieBy(signal);
    received = signal;
    say(`${signal}: stopping ${what} and removing its partial output (send it again to exit at once)`);
    controller.abort(new HeimdallError(ErrorCodes.ABORTED, `${what} stopped by ${signal}`));
  };
  for (const s of STOP_SIGNALS) process.on(s, onSignal);
  return {
    signal: controller.signal,
    get received() {
      return received;
    },
    get error() {
      return received ? (controller.signal.reason as HeimdallError) : undefined;
    },
    dispose() {
      for (const s of STOP_SIGNALS) process.off(s, onSignal);
      const signal = received;
      if (signal) setTimeout(() => dieBy(signal), EXIT_AFTER_CLEANUP_MS).unref();
    },
  };
}
