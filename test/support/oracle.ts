/**
 * The Python oracle, seen from the tests.
 *
 * Python appears only in tests, as the independent numeric reference: real PyTorch builds
 * LocalizationNet, writes checkpoints in every layout we accept and records golden outputs; real
 * `onnx.checker` judges our ONNX files; real `torch.load(weights_only=True)` judges the checkpoints
 * we write. Two interpreters (see test/oracle/setup.sh):
 *   - Debian's /usr/bin/python3 with torch 1.13 + torchvision (fixture generation),
 *   - a venv under the cache dir with torch 2.x + onnx + numpy (re-saves and checks).
 *
 * Everything is cached outside the repository, under ${HEIMDALL_CACHE_DIR:-~/.cache/heimdall}.
 * Set HEIMDALL_ORACLE_VERBOSE=1 to see the scripts' progress (stderr) live.
 *
 * Node built-ins only.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { endianness, homedir, hostname } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export type Variant = 'tiny' | 'small' | 'base' | 'large';

/** test/oracle/, where the Python scripts live. */
export const ORACLE_DIR = fileURLToPath(new URL('../oracle/', import.meta.url));

/** Debian's interpreter (torch 1.13, torchvision). */
export const DEBIAN_PYTHON = '/usr/bin/python3';

/** Sources whose content decides the fixtures; editing any of them regenerates. */
const FIXTURE_SOURCES = ['setup.sh', 'localization_net.py', 'generate.py', 'resave.py'] as const;

/** Files resave.py adds; a manifest without them is an unfinished set. */
const RESAVED_FILES = ['t2-bare.pt', 't2-full.pth'] as const;

export interface ClampStats {
  at_min: number;
  at_max: number;
  inside: number;
  at_min_per_column: number[];
  at_max_per_column: number[];
}

export interface ManifestFile {
  /** 'bare' | 'full' | 'lightning' | 'safetensors' */
  layout: string;
  /** golden file name in the same directory */
  golden: string;
  /** torch major.minor that wrote the file: '1.13' or '2.13' */
  torch: string;
  bytes: number;
  resaved_from?: string;
}

export interface Manifest {
  variant: Variant;
  seed: number;
  torch_version: string;
  resave_torch_version?: string;
  dims: number[];
  depths: number[];
  feature_dim: number;
  position_hidden: number[];
  uncertainty_hidden: number[];
  config_range: [number, number];
  default_range: [number, number];
  num_parameters: number;
  num_state_dict_entries: number;
  input_shape: number[];
  golden: Record<string, { range: [number, number]; clamp: ClampStats }>;
  files: Record<string, ManifestFile>;
}

export interface FixtureFile {
  name: string;
  /** absolute path of the checkpoint */
  path: string;
  layout: string;
  torch: string;
  /** absolute path of the golden safetensors file this checkpoint must reproduce */
  golden: string;
  bytes: number;
}

export interface FixtureSet {
  dir: string;
  manifest: Manifest;
  files: FixtureFile[];
}

export interface OraclePythons {
  debianPython: string;
  venvPython: string;
}

/** ${HEIMDALL_CACHE_DIR:-~/.cache/heimdall} */
export function heimdallCacheDir(): string {
  const fromEnv = process.env['HEIMDALL_CACHE_DIR'];
  return fromEnv ? resolve(fromEnv) : join(homedir(), '.cache', 'heimdall');
}

const verbose = (): boolean => !!process.env['HEIMDALL_ORACLE_VERBOSE'];

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runProcess(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    }
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => {
      err.push(b);
      if (verbose()) process.stderr.write(b);
    });
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(new Error(`cannot start ${command}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolvePromise({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
  });
}

function tail(text: string, max = 8000): string {
  return text.length > max ? `…${text.slice(-max)}` : text;
}

// ---------------------------------------------------------------------------------------------
// Interpreters

let oracleReady: Promise<OraclePythons> | undefined;

/**
 * Runs test/oracle/setup.sh (once per process): installs the Debian packages when missing and
 * creates/updates the venv. Fast when everything is in place.
 */
export function ensureOracle(): Promise<OraclePythons> {
  oracleReady ??= (async () => {
    const script = join(ORACLE_DIR, 'setup.sh');
    const r = await runProcess('bash', [script]);
    if (r.code !== 0) {
      throw new Error(
        `test/oracle/setup.sh failed (exit ${r.code ?? r.signal}):\n${tail(r.stderr)}`,
      );
    }
    return {
      debianPython: DEBIAN_PYTHON,
      venvPython: join(heimdallCacheDir(), 'venv', 'bin', 'python'),
    };
  })().catch((e: unknown) => {
    oracleReady = undefined; // let a later call retry
    throw e;
  });
  return oracleReady;
}

/**
 * Runs `python script args...` and returns its stdout. `script` is absolute or relative to
 * test/oracle/. Throws with the exit status and stderr on a non-zero exit.
 */
export async function runPython(
  python: string,
  script: string,
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<string> {
  const scriptPath = isAbsolute(script) ? script : join(ORACLE_DIR, script);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...options.env,
    PYTHONNOUSERSITE: '1', // ~/.local must not shadow the interpreter's own torch
    PYTHONDONTWRITEBYTECODE: '1', // no __pycache__ inside the repository
  };
  const r = await runProcess(python, [scriptPath, ...args], {
    env,
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
  });
  if (r.code !== 0) {
    throw new Error(
      `${python} ${scriptPath} ${args.join(' ')} failed (exit ${r.code ?? r.signal}):\n${tail(r.stderr)}`,
    );
  }
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// Fixtures

let sourcesHash: Promise<string> | undefined;

/** First 12 hex of sha256 over the oracle sources that decide the fixtures. */
export function fixtureSourcesHash(): Promise<string> {
  sourcesHash ??= (async () => {
    const h = createHash('sha256');
    for (const name of FIXTURE_SOURCES) {
      const content = await readFile(join(ORACLE_DIR, name));
      h.update(`${name}\0${content.length}\0`);
      h.update(content);
    }
    return h.digest('hex').slice(0, 12);
  })();
  return sourcesHash;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** The manifest when every file it lists (and the torch-2 re-saves) is present with its size. */
async function completeManifest(dir: string): Promise<Manifest | undefined> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  } catch {
    return undefined;
  }
  if (!manifest.files || RESAVED_FILES.some((f) => !(f in manifest.files))) return undefined;
  for (const [name, file] of Object.entries(manifest.files)) {
    try {
      if ((await stat(join(dir, name))).size !== file.bytes) return undefined;
      await stat(join(dir, file.golden));
    } catch {
      return undefined;
    }
  }
  return manifest;
}

function toFixtureSet(dir: string, manifest: Manifest): FixtureSet {
  return {
    dir,
    manifest,
    files: Object.entries(manifest.files).map(([name, f]) => ({
      name,
      path: join(dir, name),
      layout: f.layout,
      torch: f.torch,
      golden: join(dir, f.golden),
      bytes: f.bytes,
    })),
  };
}

const LOCK_HEARTBEAT_MS = 5_000;
const LOCK_STALE_MS = 60_000;
const LOCK_MAX_WAIT_MS = 45 * 60_000;

interface LockOwner {
  pid: number;
  host: string;
  token: string;
  since: string;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function lockIsStale(lockDir: string): Promise<boolean> {
  let mtimeMs: number;
  try {
    mtimeMs = (await stat(lockDir)).mtimeMs;
  } catch {
    return false; // gone: not stale, just retry
  }
  try {
    const owner = JSON.parse(await readFile(join(lockDir, 'owner.json'), 'utf8')) as LockOwner;
    if (owner.host === hostname() && !pidAlive(owner.pid)) return true;
  } catch {
    // owner.json not written yet (or torn): judge by the heartbeat alone
  }
  return Date.now() - mtimeMs > LOCK_STALE_MS;
}

/**
 * An exclusive lock: a directory created with mkdir (atomic), with owner.json and a heartbeat
 * (the directory's mtime). A lock whose owner is dead (same host) or whose heartbeat stopped for
 * LOCK_STALE_MS is broken. Correctness never rests on the lock alone: results are published by an
 * atomic rename, so even two generators racing after a wrongly broken lock cannot expose a
 * half-written set. Returns undefined when `done()` became true while waiting.
 */
async function acquireLock(
  lockDir: string,
  done: () => Promise<boolean>,
): Promise<{ release: () => Promise<void> } | undefined> {
  const deadline = Date.now() + LOCK_MAX_WAIT_MS;
  for (;;) {
    if (await done()) return undefined;
    try {
      await mkdir(lockDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (await lockIsStale(lockDir)) {
        const aside = `${lockDir}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
        try {
          await rename(lockDir, aside);
          await rm(aside, { recursive: true, force: true });
        } catch {
          // someone else broke or released it first
        }
        continue;
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${LOCK_MAX_WAIT_MS / 60_000} min waiting for lock ${lockDir}`);
      }
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    const owner: LockOwner = {
      pid: process.pid,
      host: hostname(),
      token: randomBytes(8).toString('hex'),
      since: new Date().toISOString(),
    };
    await writeFile(join(lockDir, 'owner.json'), JSON.stringify(owner));
    const heartbeat = setInterval(() => {
      const now = new Date();
      utimes(lockDir, now, now).catch(() => undefined);
    }, LOCK_HEARTBEAT_MS);
    heartbeat.unref();
    return {
      release: async () => {
        clearInterval(heartbeat);
        try {
          const current = JSON.parse(await readFile(join(lockDir, 'owner.json'), 'utf8')) as LockOwner;
          if (current.token !== owner.token) return; // broken as stale and taken over: not ours
        } catch {
          return;
        }
        await rm(lockDir, { recursive: true, force: true });
      },
    };
  }
}

/** Staging dirs left by generators that died (their pid, on this host, is gone). */
async function removeOrphanedStaging(root: string, variant: Variant): Promise<void> {
  const marker = `.${variant}.staging-`;
  for (const entry of await readdir(root)) {
    const at = entry.indexOf(marker);
    if (at < 0) continue;
    const pid = Number.parseInt(entry.slice(at + marker.length), 10);
    if (Number.isInteger(pid) && pid !== process.pid && !pidAlive(pid)) {
      await rm(join(root, entry), { recursive: true, force: true });
    }
  }
}

const fixtureSets = new Map<Variant, Promise<FixtureSet>>();

/**
 * The fixture set of one variant, generated on first use (generate.py with Debian's torch 1.13,
 * then resave.py with the venv's torch 2.x) and cached under
 * ${HEIMDALL_CACHE_DIR:-~/.cache/heimdall}/fixtures/<sources hash>/<variant>.
 * Safe when several processes ask at once: one generates, the others wait for it.
 */
export function ensureFixtures(variant: Variant): Promise<FixtureSet> {
  let p = fixtureSets.get(variant);
  if (!p) {
    p = buildFixtures(variant).catch((e: unknown) => {
      fixtureSets.delete(variant);
      throw e;
    });
    fixtureSets.set(variant, p);
  }
  return p;
}

async function buildFixtures(variant: Variant): Promise<FixtureSet> {
  if (!['tiny', 'small', 'base', 'large'].includes(variant)) {
    throw new Error(`unknown variant ${String(variant)}`);
  }
  const root = join(heimdallCacheDir(), 'fixtures', await fixtureSourcesHash());
  const dir = join(root, variant);
  const ready = await completeManifest(dir);
  if (ready) return toFixtureSet(dir, ready);

  const { debianPython, venvPython } = await ensureOracle();
  await mkdir(root, { recursive: true });
  const lock = await acquireLock(
    join(root, `.${variant}.lock`),
    async () => (await completeManifest(dir)) !== undefined,
  );
  try {
    if (!(await completeManifest(dir))) {
      await removeOrphanedStaging(root, variant);
      const staging = join(root, `.${variant}.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
      try {
        await runPython(debianPython, 'generate.py', ['--variant', variant, '--out', staging]);
        await runPython(venvPython, 'resave.py', [staging]);
        if (!(await completeManifest(staging))) {
          throw new Error(`fixture generation for ${variant} left an incomplete set in ${staging}`);
        }
        if (await exists(dir)) {
          if (await completeManifest(dir)) return toFixtureSet(dir, (await completeManifest(dir))!);
          // An incomplete set that is not ours (cannot normally happen): move it out of the way.
          const aside = `${dir}.broken-${process.pid}-${randomBytes(4).toString('hex')}`;
          await rename(dir, aside);
          await rm(aside, { recursive: true, force: true });
        }
        try {
          await rename(staging, dir);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !(await completeManifest(dir))) throw e;
        }
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
    }
  } finally {
    await lock?.release();
  }
  const manifest = await completeManifest(dir);
  if (!manifest) throw new Error(`fixture set ${dir} is incomplete after generation`);
  return toFixtureSet(dir, manifest);
}

// ---------------------------------------------------------------------------------------------
// Safetensors (golden files). Deliberately independent of the product's reader.

const BIG_ENDIAN_HOST = endianness() === 'BE';

export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

interface SafetensorsHeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

function readSafetensorsHeader(path: string): {
  fd: number;
  size: number;
  dataStart: number;
  header: Record<string, unknown>;
} {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new Error(`${path}: not safetensors (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const len = lenBuf.readBigUInt64LE(0);
    if (len > BigInt(Math.min(size - 8, 100 * 1024 * 1024))) {
      throw new Error(`${path}: header length ${len} exceeds the file`);
    }
    const headerBuf = Buffer.alloc(Number(len));
    readSync(fd, headerBuf, 0, headerBuf.length, 8);
    const header = JSON.parse(headerBuf.toString('utf8')) as unknown;
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new Error(`${path}: header is not a JSON object`);
    }
    return { fd, size, dataStart: 8 + Number(len), header: header as Record<string, unknown> };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** `__metadata__` of a safetensors file ({} when absent). */
export function readSafetensorsMetadata(path: string): Record<string, string> {
  const { fd, header } = readSafetensorsHeader(path);
  closeSync(fd);
  return (header['__metadata__'] as Record<string, string> | undefined) ?? {};
}

/**
 * All F32 tensors of a safetensors file. Entries of another dtype are an error unless
 * `skipNonF32` is set (then they are left out).
 */
export function readSafetensorsF32(
  path: string,
  options: { skipNonF32?: boolean } = {},
): Map<string, F32Tensor> {
  const { fd, size, dataStart, header } = readSafetensorsHeader(path);
  try {
    const out = new Map<string, F32Tensor>();
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const entry = raw as SafetensorsHeaderEntry;
      if (entry.dtype !== 'F32') {
        if (options.skipNonF32) continue;
        throw new Error(`${path}: tensor ${name} has dtype ${entry.dtype}, expected F32`);
      }
      const shape = entry.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
        throw new Error(`${path}: tensor ${name} has a bad shape ${JSON.stringify(shape)}`);
      }
      const [begin, end] = entry.data_offsets;
      const count = shape.reduce((a, b) => a * b, 1);
      if (
        !Number.isInteger(begin) ||
        !Number.isInteger(end) ||
        begin < 0 ||
        end < begin ||
        dataStart + end > size ||
        end - begin !== count * 4
      ) {
        throw new Error(`${path}: tensor ${name} has bad data_offsets [${begin}, ${end}] for shape [${shape}]`);
      }
      const data = new Float32Array(count);
      const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      let done = 0;
      while (done < bytes.length) {
        const n = readSync(fd, bytes, done, bytes.length - done, dataStart + begin + done);
        if (n === 0) throw new Error(`${path}: truncated in tensor ${name}`);
        done += n;
      }
      if (BIG_ENDIAN_HOST) {
        for (let i = 0; i < count; i++) data[i] = bytes.readFloatLE(i * 4);
      }
      out.set(name, { shape, data });
    }
    return out;
  } finally {
    closeSync(fd);
  }
}
