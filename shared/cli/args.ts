import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';

/** node:util parseArgs with usage errors as HeimdallError(USAGE). */
export function parseCommandArgs<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], usage: string, options: T) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (error) {
    throw new HeimdallError(ErrorCodes.USAGE, `${(error as Error).message}\nusage: ${usage}`);
  }
}
