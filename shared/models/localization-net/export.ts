import { stat } from 'node:fs/promises';
import { openCheckpoint, type CheckpointFormat, type CheckpointLayout } from '../../checkpoint/index.ts';
import { alignedBuffer, countNonFinite } from '../../checkpoint/weight-buffers.ts';
import type { Training } from '../../events/schemas.ts';
import { readTraining } from '../../lineage/training.ts';
import { HEIMDALL_PRODUCER } from '../../onnx/model.ts';
import { writeModel, type WriteProgress, type WrittenModel } from '../../onnx/writer.ts';
import { scanFile } from '../../runtime/sha256.ts';
import type { LocalizationNetSpec } from './architecture.ts';
import { buildLocalizationGraph, DEFAULT_OPSET, IR_VERSION, type Opset } from './graph.ts';
import { inferArchitecture, parameterCount } from './infer.ts';

export const PRODUCER_VERSION = '0.1.0';

export interface ExportOptions {
  opset?: Opset;
  /** Per-phase progress: hashing the checkpoint, then writing the weights. */
  onProgress?: (event: { phase: 'hash' | 'write'; doneBytes: number; totalBytes: number }) => void;
  externalData?: boolean;
  /** Stops the export between tensors; the partial output is removed (see WriteOptions.signal). */
  signal?: AbortSignal;
  /** User metadata of the object the checkpoint was read from (its `mlflow-run-id`: the training run). */
  sourceMetadata?: Readonly<Record<string, string>>;
}

export interface ExportResult {
  readonly spec: LocalizationNetSpec;
  readonly parameters: number;
  readonly opset: Opset;
  readonly irVersion: number;
  readonly checkpoint: { readonly path: string; readonly sha256: string; readonly bytes: number; readonly format: CheckpointFormat; readonly layout: CheckpointLayout };
  readonly onnx: WrittenModel;
  /** What the trainer left beside the weights (shared/lineage/training.ts); absent when nothing was. */
  readonly training?: Training;
  readonly warnings: readonly string[];
  readonly durationMs: number;
}

/** Checkpoint in, ONNX out: reads the weights lazily and streams them into the model file. */
export async function exportCheckpoint(checkpointPath: string, outPath: string, options: ExportOptions = {}): Promise<ExportResult> {
  const started = performance.now();
  const opset = options.opset ?? DEFAULT_OPSET;
  const checkpoint = await openCheckpoint(checkpointPath);
  try {
    const spec = inferArchitecture(checkpoint.tensors, checkpoint.config);
    const lineage = readTraining(checkpoint, options.sourceMetadata);
    const parameters = parameterCount(spec);
    // A worker hashes the checkpoint while the weights are written (the digest goes into the metadata,
    // written last). It streams the whole file anyway, so it also checks the CRC-32 of the records we
    // read, which would otherwise cost this thread a pass over every weight.
    const records = checkpoint.deferRecordChecks?.();
    const scanning = scanFile({ path: checkpointPath, crc32Ranges: records?.records ?? [] }, (doneBytes, totalBytes) =>
      options.onProgress?.({ phase: 'hash', doneBytes, totalBytes }),
    );
    scanning.catch(() => undefined);
    const nonFinite = new Map<string, number>();
    const graph = buildLocalizationGraph(spec, checkpoint.tensors, opset);
    const onnx = await writeModel(
      {
        irVersion: IR_VERSION[opset],
        opsetVersion: opset,
        producerName: HEIMDALL_PRODUCER,
        producerVersion: PRODUCER_VERSION,
        docString: `LocalizationNet (ConvNeXt-${spec.variant}) exported by Heimdall from a ${checkpoint.format} checkpoint`,
        metadata: async () => {
          const scan = await scanning;
          // Every weight has been read: a damaged record fails the export before the model is published.
          records?.verify(scan.crc32s);
          return {
            model_type: 'LocalizationNet',
            architecture: `convnext-${spec.variant}`,
            variant: spec.variant,
            source_sha256: scan.sha256,
            parameters: String(parameters),
            opset: String(opset),
            dims: spec.dims.join(','),
            depths: spec.depths.join(','),
            position_head: spec.positionHidden.join(','),
            uncertainty_head: spec.uncertaintyHidden.join(','),
            uncertainty_min: String(spec.uncertaintyMin),
            uncertainty_max: String(spec.uncertaintyMax),
            checkpoint_layout: checkpoint.layout,
          };
        },
        graph,
      },
      outPath,
      {
        ...(options.externalData !== undefined ? { externalData: options.externalData } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        inspect: (name, data) => {
          const count = countNonFinite(new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4));
          if (count > 0) nonFinite.set(name, count);
        },
        onProgress: (p: WriteProgress) => options.onProgress?.({ phase: 'write', doneBytes: p.writtenBytes, totalBytes: p.totalBytes }),
        // Weights are read into these, and counted there at memory speed (weight-buffers.ts).
        scratchBuffer: alignedBuffer,
      },
    );
    const { sha256 } = await scanning;
    const warnings = [
      ...checkpoint.warnings,
      ...lineage.warnings,
      ...[...nonFinite].map(([name, count]) => `${count} NaN/Inf values in ${name}`),
    ];
    const { size } = await stat(checkpointPath);
    return {
      spec,
      parameters,
      opset,
      irVersion: IR_VERSION[opset],
      checkpoint: { path: checkpointPath, sha256, bytes: size, format: checkpoint.format, layout: checkpoint.layout },
      onnx,
      ...(lineage.training ? { training: lineage.training } : {}),
      warnings,
      durationMs: performance.now() - started,
    };
  } finally {
    await checkpoint.close();
  }
}
