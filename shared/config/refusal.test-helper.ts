import { expect } from 'vitest';
import { loadConfig } from './index.ts';

/** The message `loadConfig` refuses `env` with (a USAGE error), or undefined when it accepts it. */
export function refusal(env: Record<string, string>): string | undefined {
  try {
    loadConfig(env);
    return undefined;
  } catch (error) {
    expect(error).toMatchObject({ code: 'USAGE' });
    return (error as Error).message;
  }
}
