import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseCommandArgs } from '../args.ts';
import type { CliEnvironment } from '../main.ts';
import { runCommand } from './run.ts';
import { parseSampleOptions, writeSample } from './sample.ts';

export const demoUsage = 'heimdall demo [--variant tiny|small|base|large] [--workdir DIR] [--json]';

/** The Quickstart's main job: a sample checkpoint written by our own torch writer, through the whole pipeline. */
export async function demoCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values } = parseCommandArgs(argv, demoUsage, {
    variant: { type: 'string' },
    workdir: { type: 'string' },
    json: { type: 'boolean' },
  });
  const request = parseSampleOptions({ variant: values.variant });
  const workdir = values.workdir ?? process.env.HEIMDALL_DATA_DIR ?? '.heimdall';
  const dir = join(workdir, 'demo');
  await mkdir(dir, { recursive: true });
  const checkpoint = join(dir, `localization-${request.variant}.pth`);
  await writeSample(checkpoint, request, env.io);
  return runCommand([checkpoint, '--workdir', workdir, ...(values.json ? ['--json'] : [])], env.io, env.stages, env.subscribers);
}
