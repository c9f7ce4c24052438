import { GateVerdict } from '../events/schemas.ts';
import { GATE_TAG, SHA256_TAG, type AliasChange, type ModelRegistry } from './model-registry.ts';

/** What `heimdall versions --json` prints (DESIGN §3 CLI), and what the status page shows of a model. */
export interface ModelVersions {
  readonly name: string;
  readonly versions: ReadonlyArray<VersionSummary>;
  /** Alias -> its moves, oldest first. */
  readonly aliasHistory: Readonly<Record<string, readonly AliasChange[]>>;
}

export interface VersionSummary {
  readonly version: string;
  readonly sha256: string;
  readonly aliases: readonly string[];
  /** null for a version registered without a verdict (before the gate existed, or by another tool). */
  readonly gate: GateVerdict | null;
  readonly created: string;
}

/** Every version of a model with its aliases and gate verdict, and the history of each alias. */
export async function modelVersions(registry: ModelRegistry, name: string): Promise<ModelVersions> {
  const [versions, aliasHistory] = await Promise.all([registry.listVersions(name), registry.aliasHistory(name)]);
  return {
    name,
    versions: versions.map((v) => ({ version: v.version, sha256: v.tags[SHA256_TAG] ?? '', aliases: v.aliases, gate: gateVerdictOf(v.tags[GATE_TAG]), created: v.created })),
    aliasHistory,
  };
}

/** The GATE_TAG's verdict; null when the tag is absent or not a verdict (a tag anyone can edit in MLflow). */
export function gateVerdictOf(tag: string | undefined): GateVerdict | null {
  if (tag === undefined) return null;
  try {
    const parsed = GateVerdict.safeParse(JSON.parse(tag));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** `passed`, `failed: latency`, `passed, warned: metric`, or `-` without a verdict. */
export function describeGate(gate: GateVerdict | null): string {
  if (!gate) return '-';
  const failed = (policy: 'block' | 'warn') => gate.checks.filter((c) => !c.passed && c.policy === policy).map((c) => c.name);
  const blocked = failed('block');
  const warned = failed('warn');
  return [gate.passed ? 'passed' : `failed: ${blocked.join(', ')}`, ...(warned.length > 0 ? [`warned: ${warned.join(', ')}`] : [])].join(', ');
}
