import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { CONVNEXT_PRESETS } from '../../models/localization-net/architecture.ts';
import { writeSampleCheckpoint, type SampleLayout } from '../../models/localization-net/sample-weights.ts';
import { parseCommandArgs } from '../args.ts';
import { formatBytes, formatCount } from '../format.ts';
import type { CommandIO } from '../io.ts';

export const sampleUsage =
  'heimdall sample --out <file.pth> [--variant tiny|small|base|large] [--layout bare|model_state_dict|lightning] [--seed N]';

const LAYOUTS: readonly SampleLayout[] = ['bare', 'model_state_dict', 'lightning'];

export interface SampleRequest {
  readonly variant: string;
  readonly layout: SampleLayout;
  readonly seed: number;
}

export function parseSampleOptions(values: { variant?: string; layout?: string; seed?: string }): SampleRequest {
  const variant = values.variant ?? 'tiny';
  if (!(variant in CONVNEXT_PRESETS)) throw new HeimdallError(ErrorCodes.USAGE, `--variant must be one of ${Object.keys(CONVNEXT_PRESETS).join(', ')}`);
  const layout = (values.layout ?? 'model_state_dict') as SampleLayout;
  if (!LAYOUTS.includes(layout)) throw new HeimdallError(ErrorCodes.USAGE, `--layout must be one of ${LAYOUTS.join(', ')}`);
  const seed = Number(values.seed ?? 0);
  if (!Number.isInteger(seed)) throw new HeimdallError(ErrorCodes.USAGE, `--seed must be an integer`);
  return { variant, layout, seed };
}

export async function writeSample(path: string, request: SampleRequest, io: CommandIO): Promise<void> {
  const result = await writeSampleCheckpoint(path, request);
  io.stdout(
    `wrote ${request.variant} LocalizationNet checkpoint (${formatCount(result.parameters)} parameters, ${request.layout} layout, seed ${request.seed}) -> ${path} (${formatBytes(result.bytes)})`,
  );
}

export async function sampleCommand(argv: string[], io: CommandIO): Promise<number> {
  const { positionals, values } = parseCommandArgs(argv, sampleUsage, {
    out: { type: 'string', short: 'o' },
    variant: { type: 'string' },
    layout: { type: 'string' },
    seed: { type: 'string' },
  });
  if (!values.out || positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${sampleUsage}`);
  await writeSample(values.out, parseSampleOptions(values), io);
  return 0;
}
