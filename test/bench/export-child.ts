// Runs one export in a fresh process so its peak RSS is the exporter's alone; prints one JSON line.
import { readFileSync } from 'node:fs';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';

const [checkpoint, out] = process.argv.slice(2);
const result = await exportCheckpoint(checkpoint!, out!);
console.log(JSON.stringify({ seconds: result.durationMs / 1000, maxRssBytes: peakRss(), bytes: result.onnx.bytes }));

/**
 * This process's own peak RSS. Linux carries getrusage's maxrss across exec, so a child spawned by a
 * bench that holds hundreds of MB (onnxruntime sessions) would report the bench's RSS; VmHWM is this
 * process image's alone.
 */
function peakRss(): number {
  try {
    const hwm = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (hwm) return Number(hwm[1]) * 1024;
  } catch {
    // No /proc: not Linux, where the quirk is.
  }
  return process.resourceUsage().maxRSS * 1024;
}
