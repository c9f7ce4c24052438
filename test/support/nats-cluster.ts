import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { heimdallCacheDir } from './oracle.ts';
import { freePort } from './services/service-process.ts';

/** The example cluster's shared settings: the tests run what an operator is shown. */
const CLUSTER_CONFIG = join(import.meta.dirname, '../../infra/nats/cluster/cluster.conf');
const NODE_COUNT = 3;
/**
 * A current nats-server (test/support/nats-setup.sh installs it from PyPI): Debian's 2.9.10 loses
 * compare-and-set writes to replicated KV buckets, which a cluster's run state depends on.
 */
const natsServer = () => join(heimdallCacheDir(), 'nats-venv/bin/nats-server');

export interface ClusterNode {
  /** The server name (`n1`, `n2`, `n3`): what JetStream reports as a stream's leader. */
  readonly name: string;
  readonly url: string;
  readonly running: boolean;
}

/**
 * A three-node JetStream cluster of real nats-server processes on free loopback ports (DESIGN §7).
 * Each node's config is written as infra/nats/cluster/n<i>.conf is (its server name and store, the
 * example's shared cluster.conf included), with addresses and routes moved to loopback on the
 * command line; a store dir each in a temp dir, so a stopped node restarted on the same ports and
 * store catches up as a production node does.
 */
export interface NatsCluster {
  /** All three client URLs, comma-separated: what NATS_URL is set to. */
  readonly url: string;
  readonly nodes: readonly ClusterNode[];
  /** SIGTERM: the server shuts down cleanly (its clients reconnect to the others). */
  stop(name: string): Promise<void>;
  /** SIGKILL: the server dies as in a power cut. */
  kill(name: string): Promise<void>;
  /** Starts a stopped or killed node again on its ports and store; resolves once it is healthy (its JetStream assets current). */
  restart(name: string): Promise<void>;
  /** The server name of the stream's current leader (JetStream stream info `cluster.leader`), waiting through an election. */
  streamLeader(stream: string): Promise<string>;
  /** Resolves once every running node reports its JetStream assets current (`/healthz`). */
  healthy(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

interface NodeProcess {
  readonly name: string;
  readonly port: number;
  readonly routePort: number;
  readonly monitorPort: number;
  readonly storeDir: string;
  child?: ChildProcess;
  log: string;
}

export async function startNatsCluster(): Promise<NatsCluster> {
  const root = await mkdtemp(join(tmpdir(), 'heimdall-nats-cluster-'));
  const nodes: NodeProcess[] = [];
  // An include is read relative to the including file: the shared part sits beside the nodes' configs.
  await copyFile(CLUSTER_CONFIG, join(root, 'cluster.conf'));
  for (let i = 1; i <= NODE_COUNT; i++) {
    const node = { name: `n${i}`, port: await freePort(), routePort: await freePort(), monitorPort: await freePort(), storeDir: join(root, `n${i}`), log: '' };
    await mkdir(node.storeDir);
    await writeFile(configOf(node), `server_name: ${node.name}\ninclude ./cluster.conf\njetstream {\n  store_dir: ${JSON.stringify(node.storeDir)}\n}\n`);
    nodes.push(node);
  }
  const routes = nodes.map((n) => `nats://127.0.0.1:${n.routePort}`).join(',');
  const url = nodes.map((n) => `nats://127.0.0.1:${n.port}`).join(',');
  const byName = (name: string) => {
    const node = nodes.find((n) => n.name === name);
    if (!node) throw new Error(`no cluster node named ${name}`);
    return node;
  };
  const isRunning = (node: NodeProcess) => node.child !== undefined && node.child.exitCode === null && node.child.signalCode === null;
  let client: NatsConnection | undefined;
  // checkAPI off: the manager is made before the cluster has a meta leader to answer account info.
  const jsm = async () => jetstreamManager((client ??= await connect({ servers: url.split(','), maxReconnectAttempts: -1, reconnectTimeWait: 100 })), { checkAPI: false });

  const healthy = async (timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (const node of nodes.filter(isRunning)) {
      while (!(await healthz(node.monitorPort))) {
        if (Date.now() > deadline) throw new Error(`cluster node ${node.name} not healthy after ${timeoutMs / 1000} s:\n${node.log.slice(-3000)}`);
        await sleep(100);
      }
    }
  };
  const end = async (node: NodeProcess, signal: NodeJS.Signals) => {
    const child = node.child;
    if (!child || !isRunning(node)) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  };

  const cluster: NatsCluster = {
    url,
    get nodes() {
      return nodes.map((n) => ({ name: n.name, url: `nats://127.0.0.1:${n.port}`, running: isRunning(n) }));
    },
    stop: (name) => end(byName(name), 'SIGTERM'),
    kill: (name) => end(byName(name), 'SIGKILL'),
    async restart(name) {
      const node = byName(name);
      await end(node, 'SIGTERM');
      await launch(node, routes);
      await healthy();
    },
    async streamLeader(stream) {
      const manager = await jsm();
      for (const deadline = Date.now() + 30_000; ; ) {
        const leader = await manager.streams.info(stream).then((info) => info.cluster?.leader, () => undefined);
        if (leader) return leader;
        if (Date.now() > deadline) throw new Error(`stream ${stream} has no leader after 30 s`);
        await sleep(100);
      }
    },
    healthy,
    async close() {
      await client?.close().catch(() => undefined);
      await Promise.all(nodes.map((n) => end(n, 'SIGTERM')));
      await rm(root, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(nodes.map((n) => launch(n, routes)));
    await metaLeader(await jsm());
    await healthy();
  } catch (error) {
    await cluster.close();
    throw error;
  }
  return cluster;
}

const configOf = (node: NodeProcess) => `${node.storeDir}.conf`;

/** Starts a node and resolves once it accepts clients. */
async function launch(node: NodeProcess, routes: string): Promise<void> {
  node.log = '';
  // Command-line options override the config's addresses and routes; its names and JetStream stay.
  // prettier-ignore
  const args = ['--config', configOf(node), '--addr', '127.0.0.1', '--port', String(node.port), '--http_port', String(node.monitorPort),
    '--cluster', `nats://127.0.0.1:${node.routePort}`, '--routes', routes];
  const child = spawn(natsServer(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
  node.child = child;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nats-server ${node.name} did not become ready in 15 s:\n${node.log}`)), 15_000);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${natsServer()} (npm run setup installs it): ${error.message}`));
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      // Only the tail is kept: enough for an error message, bounded over a long soak.
      node.log = (node.log + chunk.toString()).slice(-20_000);
      if (node.log.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`nats-server ${node.name} exited with ${code}:\n${node.log}`));
    });
  });
}

/** JetStream answers account requests once the cluster has elected a meta leader. */
async function metaLeader(jsm: Awaited<ReturnType<typeof jetstreamManager>>): Promise<void> {
  for (const deadline = Date.now() + 30_000; ; ) {
    if (await jsm.getAccountInfo().then(() => true, () => false)) return;
    if (Date.now() > deadline) throw new Error('the NATS cluster elected no JetStream meta leader in 30 s');
    await sleep(100);
  }
}

/** nats-server's health endpoint: 200 once the server's JetStream streams and consumers are current. */
async function healthz(port: number): Promise<boolean> {
  return fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false);
}
