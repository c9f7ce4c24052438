import { rm, stat } from 'node:fs/promises';
import { openCheckpoint, type CheckpointFormat, type CheckpointLayout } from '../../checkpoint/index.ts';
import { alignedBuffer, countNonFinite } from '../../checkpoint/weight-buffers.ts';
import type { Training, VariantName } from '../../events/schemas.ts';
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
  /**
   * Per-phase progress: hashing the checkpoint (or, when its digest is known, checking its weight
   * records), beside writing the weights (of a variant, once the fp32 model is written).
   */
  onProgress?: (event: { phase: 'hash' | 'check' | 'write'; variant?: VariantName; doneBytes: number; totalBytes: number }) => void;
  /**
   * The checkpoint's sha256 where it is known for these bytes already (the store vouched for it:
   * ObjectStore FetchedObject): then only the records the export reads are read again, for their
   * CRC-32, instead of the whole file for its digest (most of a trainer's checkpoint is optimizer state).
   */
  sha256?: string;
  /** Derived models to write beside the fp32 one (DESIGN §3 Variants), each at variantPath(outPath, name). */
  variants?: readonly VariantName[];
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
  /** The variants asked for, in that order. */
  readonly variants: readonly { readonly name: VariantName; readonly onnx: WrittenModel }[];
  /** What the trainer left beside the weights (shared/lineage/training.ts); absent when nothing was. */
  readonly training?: Training;
  readonly warnings: readonly string[];
  readonly durationMs: number;
}

/** Where a variant of the model at `path` is written: `model.onnx` -> `model.int8.onnx`. */
export const variantPath = (path: string, variant: VariantName) => `${path.replace(/\.onnx$/, '')}.${variant}.onnx`;

/**
 * Checkpoint in, ONNX out: reads the weights lazily and streams them into the model file; then each
 * variant, streaming the weights again from the checkpoint (by then in the page cache). The variants'
 * files are removed when anything fails, so nothing is left half-done.
 */
export async function exportCheckpoint(checkpointPath: string, outPath: string, options: ExportOptions = {}): Promise<ExportResult> {
  const started = performance.now();
  const opset = options.opset ?? DEFAULT_OPSET;
  const checkpoint = await openCheckpoint(checkpointPath);
  try {
    const spec = inferArchitecture(checkpoint.tensors, checkpoint.config);
    const lineage = readTraining(checkpoint, options.sourceMetadata);
    const parameters = parameterCount(spec);
    // A worker hashes the checkpoint while the weights are written (the digest goes into the metadata,
    // written last), unless it is known. It streams the file anyway, so it also checks the CRC-32 of
    // the records we read, which would otherwise cost this thread a pass over every weight.
    const records = checkpoint.deferRecordChecks?.();
    const known = options.sha256;
    const ranges = records?.records ?? [];
    const scanning =
      known !== undefined && ranges.length === 0
        ? Promise.resolve({ sha256: known, crc32s: [] as readonly number[] })
        : scanFile({ path: checkpointPath, crc32Ranges: ranges, sha256: known === undefined }, (doneBytes, totalBytes) =>
            options.onProgress?.({ phase: known === undefined ? 'hash' : 'check', doneBytes, totalBytes }),
          ).then((scan) => ({ sha256: known ?? scan.sha256!, crc32s: scan.crc32s }));
    scanning.catch(() => undefined);
    const nonFinite = new Map<string, number>();
    const graph = buildLocalizationGraph(spec, checkpoint.tensors, opset);
    const header = {
      irVersion: IR_VERSION[opset],
      opsetVersion: opset,
      producerName: HEIMDALL_PRODUCER,
      producerVersion: PRODUCER_VERSION,
      docString: `LocalizationNet (ConvNeXt-${spec.variant}) exported by Heimdall from a ${checkpoint.format} checkpoint`,
    };
    /** The model's metadata, once the checkpoint's digest is known. */
    const describe = (scan: { sha256: string }) => ({
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
    });
    const writeOptions = {
      ...(options.externalData !== undefined ? { externalData: options.externalData } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      // Weights are read into these, and counted there at memory speed (weight-buffers.ts).
      scratchBuffer: alignedBuffer,
    };
    const onnx = await writeModel(
      {
        ...header,
        metadata: async () => {
          const scan = await scanning;
          // Every weight has been read: a damaged record fails the export before the model is published.
          records?.verify(scan.crc32s);
          return describe(scan);
        },
        graph,
      },
      outPath,
      {
        ...writeOptions,
        inspect: (name, data) => {
          const count = countNonFinite(new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4));
          if (count > 0) nonFinite.set(name, count);
        },
        onProgress: (p: WriteProgress) => options.onProgress?.({ phase: 'write', doneBytes: p.writtenBytes, totalBytes: p.totalBytes }),
      },
    );
    const { sha256 } = await scanning;
    const variants: { name: VariantName; onnx: WrittenModel }[] = [];
    try {
      for (const name of options.variants ?? []) {
        const written = await writeModel(
          {
            ...header,
            docString: `${header.docString}, ${name}: MatMul weights per-channel symmetric int8, activations quantized at run time`,
            // The fp32 model's write has verified the records already.
            metadata: async () => ({ ...describe(await scanning), quantization: name, fp32_sha256: onnx.sha256 }),
            graph: buildLocalizationGraph(spec, checkpoint.tensors, opset, name),
          },
          variantPath(outPath, name),
          { ...writeOptions, onProgress: (p: WriteProgress) => options.onProgress?.({ phase: 'write', variant: name, doneBytes: p.writtenBytes, totalBytes: p.totalBytes }) },
        );
        variants.push({ name, onnx: written });
      }
    } catch (error) {
      await Promise.all(variants.map((v) => removeModel(v.onnx)));
      throw error;
    }
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
      variants,
      ...(lineage.training ? { training: lineage.training } : {}),
      warnings,
      durationMs: performance.now() - started,
    };
  } finally {
    await checkpoint.close();
  }
}

/** A model file written by an export that then failed (its external data too). */
async function removeModel(model: WrittenModel): Promise<void> {
  await Promise.all([rm(model.path, { force: true }), model.externalData && rm(model.externalData.path, { force: true })]);
}
