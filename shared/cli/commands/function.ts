import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { serveFunction } from '../../pipeline/http/server.ts';
import type { AnyStage } from '../../pipeline/stage.ts';
import { parseCommandArgs } from '../args.ts';
import type { CommandIO } from '../io.ts';

export const functionUsage = 'heimdall function <stage>';

/** One stage as an HTTP CloudEvent function: what a Knative Service's container runs. Exits 0 after a SIGTERM drain. */
export async function functionCommand(argv: string[], io: CommandIO, stages: readonly AnyStage[]): Promise<number> {
  const { positionals } = parseCommandArgs(argv, functionUsage, {});
  const [name] = positionals;
  const stage = stages.find((s) => s.name === name);
  if (!stage || positionals.length > 1) {
    const known = stages.map((s) => s.name).join(', ');
    throw new HeimdallError(ErrorCodes.USAGE, `${name ? `unknown stage ${name}` : 'no stage given'}; one of: ${known}\nusage: ${functionUsage}`);
  }
  const running = await serveFunction(stage, { signals: ['SIGTERM', 'SIGINT'] });
  io.stdout(`heimdall function ${stage.name} listening on port ${running.port} (consumes ${stage.input})`);
  await running.stopped;
  return 0;
}
