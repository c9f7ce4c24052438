// What the benchmarks say about the machine and the fixtures beside their figures.
import { availableParallelism, loadavg } from 'node:os';
import { openCheckpoint } from '../../shared/checkpoint/index.ts';

/** The float32 bytes of a checkpoint's tensors: what the memory targets are ratios of. */
export async function weightBytes(path: string): Promise<number> {
  const checkpoint = await openCheckpoint(path);
  let bytes = 0;
  for (const t of checkpoint.tensors.values()) bytes += t.numel * 4;
  await checkpoint.close();
  return bytes;
}

/** The machine is shared: the load average at start and now says how much of it the runs had. */
export function loadAverageLine(atStart: readonly number[]): string {
  const load = (l: readonly number[]) => l.map((x) => x.toFixed(2)).join(' ');
  return `load average (1/5/15 min) at start ${load(atStart)}, at end ${load(loadavg())} (${availableParallelism()} cores; other work on the machine is not controlled)`;
}
