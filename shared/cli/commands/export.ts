import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { exportCheckpoint, type ExportResult } from '../../models/localization-net/export.ts';
import { SUPPORTED_OPSETS, type Opset } from '../../models/localization-net/graph.ts';
import { formatBytes, formatCount, formatSeconds } from '../format.ts';
import { ProgressLine } from '../progress.ts';
import type { CommandIO } from '../io.ts';
import { parseCommandArgs } from '../args.ts';
import { signalExitCode, watchStopSignals } from '../signals.ts';
import { checkOutputPath } from '../../onnx/writer.ts';

export const exportUsage = 'heimdall export <checkpoint> --out <file.onnx> [--opset 14|17|20]';

export async function exportCommand(argv: string[], io: CommandIO): Promise<number> {
  const { positionals, values } = parseCommandArgs(argv, exportUsage, {
    out: { type: 'string', short: 'o' },
    opset: { type: 'string' },
  });
  const [checkpoint] = positionals;
  if (!checkpoint || positionals.length > 1 || !values.out) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${exportUsage}`);
  const opset = parseOpset(values.opset);
  // Before any work: an --out that is a device, FIFO, directory or socket is refused (NOT_A_FILE).
  await checkOutputPath(values.out);
  const progress = new ProgressLine(`export ${checkpoint}`);
  const stop = watchStopSignals(`export of ${checkpoint}`, (line) => {
    progress.done();
    io.stderr(line);
  });
  try {
    const result = await exportCheckpoint(checkpoint, values.out, {
      opset,
      signal: stop.signal,
      onProgress: ({ phase, doneBytes, totalBytes }) => progress.bytes(phase === 'hash' ? 'hashing checkpoint' : 'writing weights', doneBytes, totalBytes),
    });
    progress.done();
    io.stdout(summaryLine(result));
    for (const warning of result.warnings) io.stderr(`warning: ${warning}`);
    return 0;
  } catch (error) {
    // Stopped by a signal: whatever failed on the way out, the cause is the stop; the writer has
    // removed its temporaries and --out is as it was.
    if (!stop.received) throw error;
    progress.done();
    io.stderr(`error: ${stop.error!.code}: ${stop.error!.message}; ${values.out} was not written`);
    return signalExitCode(stop.received);
  } finally {
    progress.done();
    stop.dispose();
  }
}

export function summaryLine(result: ExportResult): string {
  const size = formatBytes(result.onnx.bytes + (result.onnx.externalData?.bytes ?? 0));
  return (
    `exported ${result.spec.variant} LocalizationNet (${formatCount(result.parameters)} parameters) ` +
    `opset ${result.opset} -> ${result.onnx.path} (${size}) in ${formatSeconds(result.durationMs)}, ` +
    `${result.warnings.length} warning${result.warnings.length === 1 ? '' : 's'}`
  );
}

function parseOpset(value: string | undefined): Opset {
  if (value === undefined) return 14;
  const opset = Number(value) as Opset;
  if (!SUPPORTED_OPSETS.includes(opset)) {
    throw new HeimdallError(ErrorCodes.USAGE, `--opset must be one of ${SUPPORTED_OPSETS.join(', ')}, got ${value}`);
  }
  return opset;
}
