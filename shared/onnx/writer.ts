import { createHash } from 'node:crypto';
import { lstat, open, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { fileKind } from '../checkpoint/random-access-file.ts';
import {
  encodeNode,
  encodeOpset,
  encodeStringEntry,
  encodeTensorHeader,
  encodeValueInfo,
  EXTERNAL_DATA_SHA256,
  externalDataName,
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
 * The pipeline stores every model so (`externalData: true`): onnxruntime maps page-aligned external
 * weights instead of copying them out of the protobuf, and `mlflow.onnx.log_model` saves models the
 * same way by default (`save_as_external_data=True`).
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
  /**
   * Stops the write between tensors (SIGTERM, a worker handing its message back): the temporaries
   * are removed and the reason is thrown (ABORTED unless the reason is a HeimdallError of its own).
   */
  signal?: AbortSignal;
}

export interface WrittenModel {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
  /** The external data file, when the weights live beside the model. */
  readonly externalData?: { readonly path: string; readonly bytes: number; readonly sha256: string };
}

/** A file name longer than this many bytes cannot be created (Linux, macOS, Windows alike). */
const NAME_MAX = 255;

/**
 * Refuses an output path the writer must not replace (DESIGN §4: only regular files are read or
 * replaced): the model is written to a temporary beside it, then renamed over it, and a rename
 * replaces whatever the name held — a device node (`--out /dev/full`), a FIFO, a socket. So `path`
 * (and `<path>.data`, which a write replaces or removes) must be absent or a regular file, else
 * NOT_A_FILE; callers check before any work, and `writeModel` checks again before publishing.
 *
 * A symbolic link is judged by what it points at. One to a regular file (or a dangling one) is
 * accepted, and the rename replaces the link itself, never its target: the name the user gave now
 * holds the model, and nothing else on the machine is written, so a link planted in a shared folder
 * cannot point the write at someone else's file. A link to a device or FIFO (`/dev/stdout` is one)
 * is refused like the thing it points at: replacing it would break the link for everyone else.
 */
export async function checkOutputPath(path: string): Promise<void> {
  for (const candidate of [path, `${path}.data`]) {
    if (nameBytes(candidate) > NAME_MAX) continue; // cannot exist, so nothing to replace
    const link = await lstat(candidate).catch(ignoreMissing);
    if (!link || link.isFile()) continue;
    if (link.isDirectory()) throw notAFile(candidate, 'a directory');
    if (link.isSymbolicLink()) {
      const target = await stat(candidate).catch(ignoreMissing);
      if (!target || target.isFile()) continue;
      throw notAFile(candidate, `a symbolic link to ${fileKind(target)}`);
    }
    throw notAFile(candidate, fileKind(link));
  }
}

export async function writeModel(model: ModelDef, path: string, options: WriteOptions = {}): Promise<WrittenModel> {
  const { graph } = model;
  const { signal } = options;
  const weightBytes = graph.initializers.reduce((sum, i) => sum + i.byteLength, 0);
  const external = options.externalData ?? weightBytes > EXTERNAL_DATA_THRESHOLD;
  const dataName = externalDataName(basename(path));
  if (external && Buffer.byteLength(dataName) > NAME_MAX) {
    throw new HeimdallError(ErrorCodes.USAGE, `the model's weights go to an external data file ${dataName}, a name longer than ${NAME_MAX} bytes: choose a shorter output name`);
  }
  await checkOutputPath(path);
  throwIfAborted(signal);

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

  const temporary = temporaryPath(path);
  // Every temporary is removed on every way out but success (errors, an abort), so a failed
  // export leaves nothing half-written: not `<out>.partial`, not `<out>.partial.data`.
  const files: HashingFile[] = [];
  try {
    const modelFile = await HashingFile.create(temporary);
    files.push(modelFile);
    const dataFile = external ? await HashingFile.create(`${temporary}.data`) : undefined;
    if (dataFile) files.push(dataFile);
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
    let next = graph.initializers.length > 0 ? fetch(0) : undefined;
    next?.catch(() => undefined);
    for (const [i, init] of graph.initializers.entries()) {
      throwIfAborted(signal);
      const { header, payloadLength } = tensorHeaders[i]!;
      await modelFile.write(new ProtoMessage().lengthPrefix(GraphField.initializer, header.byteLength + payloadLength).finish());
      await modelFile.write(header);
      const data = await next!;
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
    // Metadata after the graph: protobuf fields may come in any order, and its values may be late
    // (the checkpoint's digest): an abort does not wait for them.
    throwIfAborted(signal);
    const dataResult = await dataFile?.close();
    const metadata = { ...(await untilAborted(model.metadata(), signal)), ...(dataResult ? { [EXTERNAL_DATA_SHA256]: dataResult.sha256 } : {}) };
    const tail = new ProtoMessage();
    for (const [key, value] of Object.entries(metadata)) tail.message(ModelField.metadataProps, encodeStringEntry(key, value));
    await modelFile.write(tail.finish());
    const modelResult = await modelFile.close();
    throwIfAborted(signal);
    // The names may have changed hands while we wrote: check again right before replacing them.
    await checkOutputPath(path);
    for (const file of files) await file.assertStillOurs();
    // Publish the data file first: a model file never points at weights that are not there yet.
    if (dataResult) await rename(`${temporary}.data`, `${path}.data`);
    else if (nameBytes(`${path}.data`) <= NAME_MAX) await rm(`${path}.data`, { force: true });
    await rename(temporary, path);
    files.length = 0;
    return {
      path,
      ...modelResult,
      ...(dataResult ? { externalData: { path: `${path}.data`, ...dataResult } } : {}),
    };
  } finally {
    for (const file of files) await file.abandon();
  }
}

/**
 * `<path>.partial` beside the output (a rename within one folder is atomic), or, when that name (with
 * `.data` after it) would pass NAME_MAX, a short hidden name derived from it: any legal output name works.
 */
function temporaryPath(path: string): string {
  const name = basename(path);
  if (Buffer.byteLength(`${name}.partial.data`) <= NAME_MAX) return `${path}.partial`;
  return join(dirname(path), `.${createHash('sha256').update(name).digest('hex').slice(0, 24)}.partial`);
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

function abortError(signal: AbortSignal): HeimdallError {
  const reason: unknown = signal.reason;
  return reason instanceof HeimdallError ? reason : new HeimdallError(ErrorCodes.ABORTED, 'the export was stopped before it finished; nothing was written');
}

/** `work`, or the abort error as soon as `signal` fires (the work itself is left to settle on its own). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  work.catch(() => undefined);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

const nameBytes = (path: string) => Buffer.byteLength(basename(path));
const ignoreMissing = (error: NodeJS.ErrnoException): undefined => {
  if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
  throw error;
};

function notAFile(path: string, kind: string): HeimdallError {
  return new HeimdallError(ErrorCodes.NOT_A_FILE, `${path} is ${kind}, not a regular file: refusing to replace it`);
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
    /** The file's inode: what its name must still point at when we rename or remove it. */
    private readonly ino: number,
  ) {}

  /**
   * Creates `path` exclusively (O_EXCL: never through a symlink, never into a FIFO someone left
   * there). A regular file or link left at that name by an earlier run that was killed is ours to
   * replace; anything else there is refused.
   */
  static async create(path: string): Promise<HashingFile> {
    const stale = await lstat(path).catch(ignoreMissing);
    if (stale) {
      if (!stale.isFile() && !stale.isSymbolicLink()) throw notAFile(path, fileKind(stale));
      await unlink(path).catch(ignoreMissing);
    }
    const handle = await open(path, 'wx');
    try {
      return new HashingFile(handle, path, (await handle.stat()).ino);
    } catch (error) {
      await handle.close();
      await unlink(path).catch(() => undefined);
      throw error;
    }
  }

  /** Fails when the name no longer holds this file (another process took it over): never publish someone else's bytes. */
  async assertStillOurs(): Promise<void> {
    if (!(await this.isStillOurs())) throw new HeimdallError(ErrorCodes.IO_ERROR, `${this.path} was replaced while the model was written (another export to the same file?)`);
  }

  private async isStillOurs(): Promise<boolean> {
    const now = await lstat(this.path).catch(() => undefined);
    return now !== undefined && now.ino === this.ino;
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

  /** Closes and removes the temporary (only if its name still holds this file). Never throws. */
  async abandon(): Promise<void> {
    await this.inFlight.catch(() => undefined);
    await this.handle.close().catch(() => undefined);
    if (await this.isStillOurs()) await unlink(this.path).catch(() => undefined);
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
