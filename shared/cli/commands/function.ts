import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { serveFunction, serveSubscriber } from '../../pipeline/http/server.ts';
import { parseCommandArgs } from '../args.ts';
import type { CliEnvironment } from '../main.ts';

export const functionUsage = 'heimdall function <stage|alerts>   (HTTP on $PORT, default 8080)';

/** One function as an HTTP CloudEvent service: what a Knative Service's container runs. Exits 0 after a SIGTERM drain. */
export async function functionCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { positionals } = parseCommandArgs(argv, functionUsage, {});
  const [name] = positionals;
  const stage = env.stages.find((s) => s.name === name);
  const subscriber = env.subscribers.find((s) => s.name === name);
  if ((!stage && !subscriber) || positionals.length > 1) {
    const known = [...env.stages, ...env.subscribers].map((s) => s.name).join(', ');
    throw new HeimdallError(ErrorCodes.USAGE, `${name ? `unknown function ${name}` : 'no function given'}; one of: ${known}\nusage: ${functionUsage}`);
  }
  const options = { signals: ['SIGTERM', 'SIGINT'] as NodeJS.Signals[] };
  const running = stage ? await serveFunction(stage, options) : await serveSubscriber(subscriber!, options);
  env.io.stdout(`heimdall function ${name} listening on port ${running.port} (consumes ${stage ? stage.input : 'any event'})`);
  await running.stopped;
  return 0;
}
