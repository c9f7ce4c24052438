/**
 * A function's lifecycle: `starting` until the runtime and adapters are up, `ready` while it takes
 * events, `draining` after SIGTERM (readiness 503, new events 503, in-flight ones finish). Events
 * are counted in and out so the server knows when draining is done.
 */
export type FunctionState = 'starting' | 'ready' | 'draining';

export class FunctionLifecycle {
  #state: FunctionState;
  #inFlight = 0;
  #idle: (() => void)[] = [];

  constructor(state: FunctionState = 'starting') {
    this.#state = state;
  }

  get state(): FunctionState {
    return this.#state;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  ready(): void {
    if (this.#state === 'starting') this.#state = 'ready';
  }

  /** Stops taking events; resolves once the events in flight are done. */
  drain(): Promise<void> {
    this.#state = 'draining';
    return this.#inFlight === 0 ? Promise.resolve() : new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Runs one event's work, counted as in flight until it settles. */
  async track<T>(work: () => Promise<T>): Promise<T> {
    this.#inFlight++;
    try {
      return await work();
    } finally {
      if (--this.#inFlight === 0) for (const resolve of this.#idle.splice(0)) resolve();
    }
  }
}
