// Runs one export (with the variants named after the output) in a fresh process so its peak RSS is the exporter's alone; prints one JSON line.
import { readFileSync } from 'node:fs';
import type { VariantName } from '../../shared/events/schemas.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';

// CHECKPOINT OUT [VARIANT...]
const [checkpoint, out, ...variants] = process.argv.slice(2) as [string, string, ...VariantName[]];
const result = await exportCheckpoint(checkpoint, out, { variants });
const variantBytes = Object.fromEntries(result.variants.map((v) => [v.name, v.onnx.bytes]));
console.log(JSON.stringify({ seconds: result.durationMs / 1000, maxRssBytes: peakRss(), bytes: result.onnx.bytes, variantBytes }));

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
