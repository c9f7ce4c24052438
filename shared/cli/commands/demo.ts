import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { exportCheckpoint } from '../../models/localization-net/export.ts';
import { parseCommandArgs } from '../args.ts';
import type { CommandIO } from '../io.ts';
import { ProgressLine } from '../progress.ts';
import { summaryLine } from './export.ts';
import { parseSampleOptions, writeSample } from './sample.ts';

export const demoUsage = 'heimdall demo [--variant tiny|small|base|large] [--workdir DIR]';

/** The Quickstart's main job: a sample checkpoint written by our own torch writer, exported to ONNX. */
export async function demoCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values } = parseCommandArgs(argv, demoUsage, {
    variant: { type: 'string' },
    workdir: { type: 'string' },
  });
  const request = parseSampleOptions({ variant: values.variant });
  const dir = join(values.workdir ?? process.env.HEIMDALL_DATA_DIR ?? '.heimdall', 'demo');
  await mkdir(dir, { recursive: true });
  const checkpoint = join(dir, `localization-${request.variant}.pth`);
  await writeSample(checkpoint, request, io);
  const progress = new ProgressLine(`export ${checkpoint}`);
  const result = await exportCheckpoint(checkpoint, join(dir, `localization-${request.variant}.onnx`), {
    onProgress: ({ phase, doneBytes, totalBytes }) => progress.bytes(phase === 'hash' ? 'hashing checkpoint' : 'writing weights', doneBytes, totalBytes),
  });
  progress.done();
  io.stdout(summaryLine(result));
  return 0;
}
