import { randomBytes } from 'node:crypto';
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { hostname } from 'node:os';
import type { KV } from '@nats-io/kv';
import { writeAtomically } from '../storage/fs.ts';

/**
 * A lease that one process at a time holds, so that several `serve` processes (or a `serve` and a
 * `heimdall reconcile`) never sweep together. It expires unless renewed: a holder that dies (kill -9)
 * leaves it to be taken over once its time is up, never held for good.
 */
export interface SweepLock {
  /** The lease, or who holds it and until when. */
  acquire(): Promise<Lease | Held>;
}

export interface Lease {
  readonly kind: 'lease';
  /** Aborted when the lease was lost (a renewal failed: another process took it over), so the work stops. */
  readonly lost: AbortSignal;
  release(): Promise<void>;
}

export interface Held {
  readonly kind: 'held';
  readonly owner: string;
  readonly until: Date;
}

/** What a lock's value says: who holds it, until when (ms since the epoch). */
interface Holder {
  readonly owner: string;
  readonly expiresAt: number;
}

/** A lease is renewed this often within its time to live, so that one late renewal is not a lost lease. */
const RENEWALS_PER_TTL = 3;

/** This process, as lock values and logs name it: host, pid, and a nonce (pids repeat across containers). */
export const lockOwner = () => `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;

/**
 * The lock as a JetStream KV key (bucket `heimdall_locks`): `create` succeeds only where the key has
 * no value, renewals and the release are checked against the revision this holder wrote, and an
 * expired holder's value is replaced by revision too, so of two processes taking it over one wins.
 * The expiry is in the value (nats-server 2.9 has no per-key TTL); clocks need only agree to
 * within a fraction of `ttlMs`.
 */
export class KvSweepLock implements SweepLock {
  constructor(
    private readonly kv: KV,
    private readonly key: string,
    private readonly owner: string,
    private readonly ttlMs: number,
  ) {}

  async acquire(): Promise<Lease | Held> {
    const mine = () => JSON.stringify({ owner: this.owner, expiresAt: Date.now() + this.ttlMs } satisfies Holder);
    let revision: number;
    try {
      revision = await this.kv.create(this.key, mine());
    } catch (failure) {
      const entry = await this.kv.get(this.key);
      // No lock there: the create failed for another reason (or raced a release: the next sweep takes it).
      if (!entry || entry.operation !== 'PUT') throw failure;
      const holder = entry.json<Holder>();
      if (holder.expiresAt > Date.now()) return held(holder);
      try {
        revision = await this.kv.update(this.key, mine(), entry.revision);
      } catch {
        // Another process took the expired lease over first.
        const now = await this.kv.get(this.key);
        return held(now?.operation === 'PUT' ? now.json<Holder>() : holder);
      }
    }
    let current = revision;
    return renewing(
      async () => {
        current = await this.kv.update(this.key, mine(), current);
      },
      () => this.kv.delete(this.key, { previousSeq: current }),
      this.ttlMs,
    );
  }
}

/**
 * The lock as a file (the embedded default, one machine): created exclusively; an expired one is
 * removed, if it still holds what was judged expired, and created again, so of two processes
 * taking it over the second's create fails. Renewals and the release touch it only while it holds
 * this owner's value.
 */
export class FileSweepLock implements SweepLock {
  constructor(
    private readonly path: string,
    private readonly owner: string,
    private readonly ttlMs: number,
  ) {}

  async acquire(): Promise<Lease | Held> {
    const mine = () => JSON.stringify({ owner: this.owner, expiresAt: Date.now() + this.ttlMs } satisfies Holder);
    await mkdir(dirname(this.path), { recursive: true });
    const created = await writeFile(this.path, mine(), { flag: 'wx' }).then(
      () => true,
      (error: NodeJS.ErrnoException) => {
        if (error.code === 'EEXIST') return false;
        throw error;
      },
    );
    if (!created) {
      const text = await this.read();
      const holder = text === undefined ? undefined : parseHolder(text);
      if (holder && holder.expiresAt > Date.now()) return held(holder);
      // Expired, torn, or released meanwhile: removed only if it is still what we judged, then created as ours.
      if (text !== undefined && (await this.read()) === text) await unlink(this.path).catch(() => undefined);
      const retook = await writeFile(this.path, mine(), { flag: 'wx' }).then(
        () => true,
        () => false,
      );
      if (!retook) {
        const now = parseHolder((await this.read()) ?? '');
        return held(now ?? { owner: 'unknown', expiresAt: Date.now() + this.ttlMs });
      }
    }
    const stillMine = async () => parseHolder((await this.read()) ?? '')?.owner === this.owner;
    return renewing(
      async () => {
        if (!(await stillMine())) throw new Error(`lock ${this.path} was taken over`);
        await writeAtomically(this.path, mine());
      },
      async () => {
        if (await stillMine()) await unlink(this.path).catch(() => undefined);
      },
      this.ttlMs,
    );
  }

  private read(): Promise<string | undefined> {
    return readFile(this.path, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
  }
}

function held(holder: Holder): Held {
  return { kind: 'held', owner: holder.owner, until: new Date(holder.expiresAt) };
}

function parseHolder(text: string): Holder | undefined {
  try {
    const value = JSON.parse(text) as Partial<Holder>;
    return typeof value.owner === 'string' && typeof value.expiresAt === 'number' ? (value as Holder) : undefined;
  } catch {
    return undefined;
  }
}

/** A held lease, renewed in the background until released; a failed renewal aborts `lost`. */
function renewing(renew: () => Promise<void>, release: () => Promise<unknown>, ttlMs: number): Lease {
  const lost = new AbortController();
  let renewal = Promise.resolve();
  const timer = setInterval(() => {
    renewal = renewal.then(renew).catch((error: unknown) => {
      clearInterval(timer);
      lost.abort(error);
    });
  }, ttlMs / RENEWALS_PER_TTL);
  timer.unref();
  return {
    kind: 'lease',
    lost: lost.signal,
    async release() {
      clearInterval(timer);
      await renewal;
      if (!lost.signal.aborted) await release().catch(() => undefined);
    },
  };
}
