// Runs one export in a fresh process so its peak RSS is the exporter's alone; prints one JSON line.
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';

const [checkpoint, out] = process.argv.slice(2);
const result = await exportCheckpoint(checkpoint!, out!);
console.log(JSON.stringify({ seconds: result.durationMs / 1000, maxRssBytes: process.resourceUsage().maxRSS * 1024, bytes: result.onnx.bytes }));
