// One cold start in a fresh process (test/bench/coldstart.bench.ts): loads onnxruntime, opens the model
// as the pipeline's stages do (shared/runtime/session.ts), runs one batch-1 inference, and prints one
// JSON line with the epoch time (ms) of each milestone, so the parent can subtract its spawn time.
import { INPUT_NAME, INPUT_SHAPE } from '../../shared/models/localization-net/architecture.ts';
import { sampleInput } from '../../shared/runtime/sample-input.ts';
import { openSession } from '../../shared/runtime/session.ts';
import * as ort from 'onnxruntime-node';

const now = () => performance.timeOrigin + performance.now();
const loaded = now();
const { session } = await openSession(process.argv[2]!);
const created = now();
await session.run({ [INPUT_NAME]: new ort.Tensor('float32', sampleInput(1), [1, ...INPUT_SHAPE]) });
const firstRun = now();
console.log(JSON.stringify({ loaded, created, firstRun }));
