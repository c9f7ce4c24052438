import { createHash } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import {
  encodeNode,
  encodeOpset,
  encodeStringEntry,
  encodeTensorHeader,
  encodeValueInfo,
  fieldSize,
  GraphField,
  ModelField,
  type ModelDef,
  type Placement,
} from './model.ts';
import { ProtoMessage } from './protobuf.ts';

/**
 * Streams a ModelProto to disk: everything but the initializers is encoded in memory (kilobytes),
 * sizes are summed ahead so every length prefix is known, then each initializer's bytes are fetched
 * and written one at a time. Peak memory is one tensor, not the model.
 *
 * Protobuf caps a message at 2 GiB, so bigger models keep their weights in a side file
 * (https://onnx.ai/onnx/repo-docs/ExternalData.html): `<model>.data`, referenced by location/offset/length.
 */

/** Above this much initializer data the weights go to the external data file. */
export const EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2;
/** External tensors start on this boundary so runtimes can mmap them. */
const EXTERNAL_ALIGNMENT = 4096;
const WRITE_BUFFER = 4 * 1024 * 1024;

export interface WriteProgress {
  readonly writtenBytes: number;
  readonly totalBytes: number;
  readonly tensor: string;
}

export interface WriteOptions {
  onProgress?: (progress: WriteProgress) => void;
  /** Force external data regardless of size (tests). */
  externalData?: boolean;
  /** Called with each initializer's bytes as they pass (e.g. to scan for NaN). */
  inspect?: (name: string, data: Uint8Array) => void;
  /** Allocates the two buffers initializers are produced in (file readers want them aligned). */
  scratchBuffer?: (byteLength: number) => Uint8Array;
}

export interface WrittenModel {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
  /** The external data file, when the weights live beside the model. */
  readonly externalData?: { readonly path: string; readonly bytes: number; readonly sha256: string };
}

export async function writeModel(model: ModelDef, path: string, options: WriteOptions = {}): Promise<WrittenModel> {
  const { graph } = model;
  const weightBytes = graph.initializers.reduce((sum, i) => sum + i.byteLength, 0);
  const external = options.externalData ?? weightBytes > EXTERNAL_DATA_THRESHOLD;
  const dataName = `${basename(path)}.data`;

  let externalOffset = 0;
  const placements: Placement[] = graph.initializers.map((init) => {
    if (!external) return { kind: 'inline' };
    externalOffset = align(externalOffset);
    const placement: Placement = { kind: 'external', location: dataName, offset: externalOffset };
    externalOffset += init.byteLength;
    return placement;
  });
  const tensorHeaders = graph.initializers.map((init, i) => encodeTensorHeader(init, placements[i]!));

  const head = new ProtoMessage()
    .varint(ModelField.irVersion, model.irVersion)
    .string(ModelField.producerName, model.producerName)
    .string(ModelField.producerVersion, model.producerVersion)
    .string(ModelField.docString, model.docString)
    .message(ModelField.opsetImport, encodeOpset(model.opsetVersion));

  const graphHead = new ProtoMessage();
  for (const node of graph.nodes) graphHead.message(GraphField.node, encodeNode(node));
  graphHead.string(GraphField.name, graph.name);
  for (const input of graph.inputs) graphHead.message(GraphField.input, encodeValueInfo(input));
  for (const output of graph.outputs) graphHead.message(GraphField.output, encodeValueInfo(output));
  const graphLength =
    graphHead.byteLength +
    tensorHeaders.reduce((sum, t) => sum + fieldSize(GraphField.initializer, t.header.byteLength + t.payloadLength), 0);
  head.lengthPrefix(ModelField.graph, graphLength);

  const temporary = `${path}.partial`;
  const modelFile = await HashingFile.create(temporary);
  const dataFile = external ? await HashingFile.create(`${temporary}.data`) : undefined;
  try {
    await modelFile.write(head.finish());
    await modelFile.write(graphHead.finish());
    let written = 0;
    // Read one initializer ahead: the next tensor's bytes arrive while this one is written. Two
    // scratch buffers alternate, so weights land in memory that is already mapped instead of
    // gigabytes of fresh pages; a buffer is refilled only once the write holding it has finished.
    const largest = Math.max(0, ...graph.initializers.map((i) => i.byteLength));
    const allocate = options.scratchBuffer ?? ((n: number) => new Uint8Array(n));
    const scratch = [allocate(largest), allocate(largest)];
    const released: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
    const fetch = async (i: number) => {
      await released[i % 2];
      return graph.initializers[i]!.data(scratch[i % 2]);
    };
    let next = fetch(0);
    next.catch(() => undefined);
    for (const [i, init] of graph.initializers.entries()) {
      const { header, payloadLength } = tensorHeaders[i]!;
      await modelFile.write(new ProtoMessage().lengthPrefix(GraphField.initializer, header.byteLength + payloadLength).finish());
      await modelFile.write(header);
      const data = await next;
      if (data.byteLength !== init.byteLength) throw new Error(`initializer ${init.name} produced ${data.byteLength} bytes, declared ${init.byteLength}`);
      options.inspect?.(init.name, data);
      const placement = placements[i]!;
      if (placement.kind === 'external') {
        await dataFile!.padTo(placement.offset);
        released[i % 2] = (await dataFile!.write(data)).reusable;
      } else {
        released[i % 2] = (await modelFile.write(data)).reusable;
      }
      if (i + 1 < graph.initializers.length) {
        next = fetch(i + 1);
        next.catch(() => undefined);
      }
      written += init.byteLength;
      options.onProgress?.({ writtenBytes: written, totalBytes: weightBytes, tensor: init.name });
    }
    // Metadata after the graph: protobuf fields may come in any order, and its values may be late.
    const tail = new ProtoMessage();
    for (const [key, value] of Object.entries(await model.metadata())) tail.message(ModelField.metadataProps, encodeStringEntry(key, value));
    await modelFile.write(tail.finish());
    const modelResult = await modelFile.close();
    const dataResult = await dataFile?.close();
    // Publish the data file first: a model file never points at weights that are not there yet.
    if (dataResult) await rename(`${temporary}.data`, `${path}.data`);
    else await rm(`${path}.data`, { force: true });
    await rename(temporary, path);
    return {
      path,
      ...modelResult,
      ...(dataResult ? { externalData: { path: `${path}.data`, ...dataResult } } : {}),
    };
  } catch (error) {
    await modelFile.abandon();
    await dataFile?.abandon();
    throw error;
  }
}

const align = (offset: number) => Math.ceil(offset / EXTERNAL_ALIGNMENT) * EXTERNAL_ALIGNMENT;

/**
 * Buffered sequential writes with a running sha256 and byte count. Large writes are queued (at most
 * one in flight) so the caller can prepare the next tensor while the disk takes this one.
 */
class HashingFile {
  private readonly hash = createHash('sha256');
  /** Two buffers, swapped on flush: the other one's write has finished by the time this one fills. */
  private buffer = new Uint8Array(WRITE_BUFFER);
  private spare = new Uint8Array(WRITE_BUFFER);
  private buffered = 0;
  private position = 0;
  private inFlight: Promise<void> = Promise.resolve();

  private constructor(
    private readonly handle: FileHandle,
    private readonly path: string,
  ) {}

  static async create(path: string): Promise<HashingFile> {
    return new HashingFile(await open(path, 'w'), path);
  }

  /**
   * Hashes and writes `bytes`; resolves once they are buffered or their write has started, with
   * `reusable` settling when `bytes` may be overwritten (at once for small writes, which are copied).
   * (An object, because a promise resolved with a promise would wait for it.)
   */
  async write(bytes: Uint8Array): Promise<{ reusable: Promise<void> }> {
    this.hash.update(bytes);
    this.position += bytes.byteLength;
    if (bytes.byteLength >= WRITE_BUFFER) {
      await this.flush();
      return { reusable: (await this.enqueue(bytes)).done };
    }
    if (this.buffered + bytes.byteLength > WRITE_BUFFER) await this.flush();
    this.buffer.set(bytes, this.buffered);
    this.buffered += bytes.byteLength;
    return { reusable: Promise.resolve() };
  }

  async padTo(offset: number): Promise<void> {
    if (offset > this.position) await this.write(new Uint8Array(offset - this.position));
  }

  async close(): Promise<{ bytes: number; sha256: string }> {
    await this.flush();
    await this.inFlight;
    await this.handle.close();
    return { bytes: this.position, sha256: this.hash.digest('hex') };
  }

  async abandon(): Promise<void> {
    await this.inFlight.catch(() => undefined);
    await this.handle.close().catch(() => undefined);
    await rm(this.path, { force: true });
  }

  private async flush(): Promise<void> {
    if (this.buffered === 0) return;
    const chunk = this.buffer.subarray(0, this.buffered);
    [this.buffer, this.spare] = [this.spare, this.buffer];
    this.buffered = 0;
    await this.enqueue(chunk);
  }

  /** Waits for the previous write, then starts this one without waiting for it; `done` is its completion. */
  private async enqueue(bytes: Uint8Array): Promise<{ done: Promise<void> }> {
    await this.inFlight;
    const done = this.writeAll(bytes);
    this.inFlight = done;
    done.catch(() => undefined);
    return { done };
  }

  private async writeAll(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.byteLength - done);
      done += bytesWritten;
    }
  }
}
