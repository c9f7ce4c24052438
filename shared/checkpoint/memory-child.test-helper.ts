// Runs one reader operation in a fresh process, so that its peak RSS is the reader's alone; prints
// one JSON line: seconds, peak RSS (VmHWM), RSS before the operation, and the error's code if any.
//   read <checkpoint>          openCheckpoint, then every tensor's values (CRC-32 checked on read)
//   export <checkpoint> <out>  exportCheckpoint (CRC-32 checks deferred to the hashing worker)
import { readFileSync } from 'node:fs';
import { openCheckpoint } from './index.ts';
import { exportCheckpoint } from '../models/localization-net/export.ts';

const [mode, path, out] = process.argv.slice(2);
const vmHwm = () => Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
const before = process.memoryUsage().rss;
const started = performance.now();
let error: { code?: string; message: string } | undefined;
let values = 0;
try {
  if (mode === 'read') {
    const checkpoint = await openCheckpoint(path!);
    try {
      for (const t of checkpoint.tensors.values()) values += (await t.readFloat32()).length;
    } finally {
      await checkpoint.close();
    }
  } else if (mode === 'export') {
    values = (await exportCheckpoint(path!, out!)).parameters;
  } else throw new Error(`unknown mode ${mode}`);
} catch (e) {
  error = { code: (e as { code?: string }).code, message: (e as Error).message };
}
console.log(JSON.stringify({ seconds: (performance.now() - started) / 1000, peakRssBytes: vmHwm(), rssBeforeBytes: before, values, error }));
