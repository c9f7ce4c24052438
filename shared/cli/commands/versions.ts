import { loadConfig } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { createAdapters } from '../../pipeline/adapters.ts';
import { describeGate, modelVersions, type ModelVersions } from '../../registry/versions.ts';
import { parseCommandArgs } from '../args.ts';
import type { CliEnvironment } from '../main.ts';

export const versionsUsage = 'heimdall versions [--name N] [--json]   (name default: HEIMDALL_MODEL_NAME)';

/** Versions with aliases and gate verdicts, then each alias's history, from the configured registry. */
export async function versionsCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, versionsUsage, { name: { type: 'string' }, json: { type: 'boolean' } });
  if (positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${versionsUsage}`);
  const config = loadConfig();
  const summary = await modelVersions((await createAdapters(config)).registry, values.name ?? config.modelName);
  env.io.stdout(values.json ? JSON.stringify(summary) : versionsText(summary));
  return 0;
}

function versionsText({ name, versions, aliasHistory }: ModelVersions): string {
  if (versions.length === 0) return `${name}: no versions yet`;
  const rows = [['version', 'sha256', 'aliases', 'gate', 'created'], ...[...versions].reverse().map((v) => [v.version, v.sha256.slice(0, 12), v.aliases.join(',') || '-', describeGate(v.gate), when(v.created)])];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  const lines = [`${name}: ${versions.length} version${versions.length === 1 ? '' : 's'}`, ...rows.map((row) => `  ${row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()}`)];
  for (const [alias, moves] of Object.entries(aliasHistory)) {
    const holder = versions.find((v) => v.aliases.includes(alias));
    lines.push('', `${name}@${alias}${holder ? ` -> v${holder.version}` : ' (unset)'}, ${moves.length} move${moves.length === 1 ? '' : 's'}, newest first:`);
    for (const move of [...moves].reverse()) lines.push(`  ${when(move.at)}  v${move.version.padEnd(4)} ${move.reason.padEnd(11)} by ${move.actor}${move.previous ? ` (was v${move.previous})` : ''}`);
  }
  return lines.join('\n');
}

/** UTC to the second, as `status` shows times. */
function when(iso: string): string {
  return iso.slice(0, 19).replace('T', ' ');
}
