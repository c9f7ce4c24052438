/**
 * Resident memory of a process and of its children, from Linux's /proc, for the benchmarks: a
 * process's peak (VmHWM) and a way to reset it (clear_refs 5), so one process's peak can be taken
 * stage by stage; and a sampler of the summed RSS of a process tree, for stages whose work runs in
 * child processes of their own.
 */
import { readFileSync, writeFileSync } from 'node:fs';

function status(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined; // gone
  }
}

function statusBytes(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const kib = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status(pid) ?? '')?.[1];
  return kib === undefined ? 0 : Number(kib) * 1024;
}

/** The process's peak RSS since it started or since the last reset, in bytes (0 once it is gone). */
export const peakRss = (pid: number): number => statusBytes(pid, 'VmHWM');

/** Starts the process's peak RSS afresh from its current RSS. */
export function resetPeakRss(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // gone
  }
}

/** The process and all its descendants. */
export function processTree(pid: number): number[] {
  const children = (() => {
    try {
      return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  })();
  return [pid, ...children.flatMap(processTree)];
}

/** The summed RSS of the process and its descendants, in bytes. */
export const treeRss = (pid: number): number => processTree(pid).reduce((sum, p) => sum + statusBytes(p, 'VmRSS'), 0);

/**
 * Samples the summed RSS of a process tree every `intervalMs`; `take()` returns the highest sum seen
 * since the previous `take()` (or the start) and starts the next window. A peak shorter than the
 * interval can slip between samples, so the root's own exact peak (peakRss) is reported beside it.
 */
export class TreeRssSampler {
  private peak = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly pid: number,
    intervalMs = 10,
  ) {
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.sample();
  }

  take(): number {
    this.sample();
    const peak = this.peak;
    this.peak = 0;
    return peak;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private sample(): void {
    this.peak = Math.max(this.peak, treeRss(this.pid));
  }
}
