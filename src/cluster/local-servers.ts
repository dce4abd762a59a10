import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect as tcpConnect } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CascadeError } from '../errors.ts';
import { natsConfig, natsServerConfig, redisConfig, type Role } from './security.ts';

/** A free TCP port on the loopback interface. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Why `port` on `host` cannot be listened on now, in words (something else listens there, a
 * privileged port, a host that is not this machine's), or undefined when it can: a listener is
 * opened and closed at once.
 */
export function portUnavailable(port: number, host = '127.0.0.1'): Promise<string | undefined> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    const why: Record<string, string> = {
      EADDRINUSE: 'another process listens there',
      EACCES: 'a port below 1024 needs privileges',
      EADDRNOTAVAIL: `${host} is not an address of this machine`,
      ENOTFOUND: `${host} does not resolve`,
    };
    srv.once('error', (err: NodeJS.ErrnoException) => resolve(why[err.code ?? ''] ?? err.code ?? err.message));
    srv.listen(port, host, () => srv.close(() => resolve(undefined)));
  });
}

/** Resolves once something accepts connections on the port. */
export async function waitForPort(port: number, timeoutMs = 10_000, child?: ChildProcess): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new CascadeError(`${child.spawnfile} exited with status ${child.exitCode} before listening on port ${port}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = tcpConnect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new CascadeError(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface LocalServer {
  readonly url: string;
  readonly port: number;
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill('SIGKILL'), 3000);
      child.once('exit', () => (clearTimeout(kill), resolve()));
      child.kill('SIGTERM');
    });
}

/** `detached`: the server outlives this process (cluster up); otherwise it is this process's child. */
function launch(cmd: string, args: string[], what: string, detached = false): ChildProcess {
  const child = spawn(cmd, args, { stdio: 'ignore', detached });
  child.on('error', () => undefined);
  if (child.pid === undefined) throw new CascadeError(`cannot start ${what} (${cmd}): is it installed? (Debian: apt-get install ${cmd})`);
  return child;
}

/** A 0600 file in `dir` (a fresh temporary directory by default). */
function privateFile(dir: string | undefined, name: string, text: string): string {
  const path = join(dir ?? mkdtempSync(join(tmpdir(), 'cascade-')), name);
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

/** A NATS server's place in a cluster: its route port and the route ports of the members it joins. */
export interface NatsClusterMember {
  readonly port: number;
  readonly routes: readonly number[];
}

/**
 * `size` nats-servers joined in one NATS cluster on loopback ports (each routes to the first). A
 * client given any one server's URL learns the others from it (server discovery) and reconnects to
 * them when its own is lost. Resolves once every route is up.
 */
export async function startNatsCluster(size = 2): Promise<LocalServer[]> {
  const routes = await Promise.all(Array.from({ length: size }, () => freePort()));
  const servers: LocalServer[] = [];
  try {
    for (const [i, port] of routes.entries()) servers.push(await startNats({ cluster: { port, routes: i ? [routes[0]!] : [] } }));
    const until = Date.now() + 10_000;
    for (;;) {
      const joined = await Promise.all(servers.map((s) => natsRoutes(s.port).catch(() => -1)));
      if (joined.every((n) => n === size - 1)) return servers;
      if (Date.now() > until) throw new CascadeError(`the NATS cluster's routes did not come up within 10 s (routes per server: ${joined.join(', ')})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await Promise.all(servers.map((s) => s.stop()));
    throw err;
  }
}

/** How many routes the server on `port` has up, from its CONNECT/INFO handshake: a client's INFO lists the cluster's client URLs. */
async function natsRoutes(port: number): Promise<number> {
  const info = await new Promise<string>((resolve, reject) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    socket.setTimeout(2000, () => socket.destroy(new Error('timeout')));
    socket.once('data', (d) => (socket.destroy(), resolve(d.toString())));
    socket.once('error', reject);
  });
  const urls = (JSON.parse(info.slice(info.indexOf('{'), info.lastIndexOf('}') + 1)) as { connect_urls?: string[] }).connect_urls ?? [];
  return Math.max(0, urls.length - 1);
}

/**
 * Starts `nats-server` on a free loopback port (JetStream off: the cluster uses core NATS). With
 * `users`, it requires credentials: one user per role with its subject permissions (security.ts),
 * from a 0600 config file in `configDir`. `maxPayload`: the server's max_payload in bytes (default 1 MiB).
 * The URL returned carries no credentials.
 */
export async function startNats(options: { users?: Record<Role, string>; configDir?: string; port?: number; detached?: boolean; maxPayload?: number; cluster?: NatsClusterMember } = {}): Promise<LocalServer> {
  const port = options.port ?? (await freePort());
  const listen = `127.0.0.1:${port}`;
  const limit = options.maxPayload !== undefined ? `max_payload: ${options.maxPayload}\n` : '';
  const args = [
    '-c',
    privateFile(options.configDir, 'nats.conf', (options.users ? natsConfig(listen, options.users) : natsServerConfig(listen)) + limit),
    ...(options.cluster ? ['--cluster_name', 'cascade-local', '--cluster', `nats://127.0.0.1:${options.cluster.port}`, ...(options.cluster.routes.length ? ['--routes', options.cluster.routes.map((p) => `nats://127.0.0.1:${p}`).join(',')] : [])] : []),
  ];
  const child = launch('nats-server', args, 'NATS', options.detached);
  await waitForPort(port, 10_000, child);
  return { url: `nats://127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
}

/**
 * Starts `redis-server` on a free loopback port, in memory only (no RDB, no AOF) unless
 * `persistenceDir` is given (append-only file there). With `acl`, the default user is off and only
 * that ACL user may connect (0600 config file in `configDir`). The URL returned carries no credentials.
 */
export async function startRedis(options: { port?: number; acl?: { user: string; password: string }; persistenceDir?: string; configDir?: string; detached?: boolean } = {}): Promise<LocalServer> {
  const port = options.port ?? (await freePort());
  const args = options.acl
    ? [privateFile(options.configDir, 'redis.conf', redisConfig(port, options.acl.user, options.acl.password, options.persistenceDir))]
    : ['--port', String(port), '--bind', '127.0.0.1', ...(options.persistenceDir ? ['--dir', options.persistenceDir, '--appendonly', 'yes'] : ['--save', '', '--appendonly', 'no'])];
  const child = launch('redis-server', args, 'Redis', options.detached);
  await waitForPort(port, 10_000, child);
  return { url: `redis://127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
}

/** A Redis Cluster of `redis-server` processes on loopback ports (startRedisCluster). */
export interface LocalRedisCluster {
  /** `redis+cluster://127.0.0.1:p1,…`: every node as a seed. */
  readonly url: string;
  /** Every node, masters first as created; a node restarted by `failover` keeps its place. */
  readonly nodes: LocalServer[];
  /** The port of the master serving `key`'s slot now. */
  masterOf(key: string): Promise<number>;
  /**
   * Kills the master serving `key`'s slot (SIGKILL), waits until a replica has taken its slots over
   * and the cluster is ok again, then restarts the dead node, which rejoins as a replica of the new
   * master. Resolves to the ports of the killed master and of the replica that took over.
   */
  failover(key: string): Promise<{ killed: number; promoted: number }>;
  /**
   * Freezes the master serving `key`'s slot (SIGSTOP): its connections stay open and silent, as
   * behind a network partition. Waits until a replica has taken its slots over; `thaw` resumes the
   * node (SIGCONT), which rejoins as a replica, and waits until the cluster is ok and in sync.
   */
  freeze(key: string): Promise<{ frozen: number; promoted: number; thaw(): Promise<void> }>;
  stop(): Promise<void>;
}

const execFileAsync = (cmd: string, args: string[]) =>
  new Promise<string>((resolve, reject) =>
    execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new CascadeError(`${cmd} ${args.join(' ')} failed: ${stderr || err.message}`, { cause: err })) : resolve(stdout))),
  );
const redisCli = (port: number, ...args: string[]) => execFileAsync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args]);

interface ClusterNodeLine {
  readonly port: number;
  readonly master: boolean;
  readonly failed: boolean;
  readonly slots: readonly [number, number][];
}

/** `CLUSTER NODES` as seen by the node on `port`. */
async function clusterNodes(port: number): Promise<ClusterNodeLine[]> {
  return (await redisCli(port, 'cluster', 'nodes'))
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(' ');
      const flags = f[2]!.split(',');
      const slots = f.slice(8).filter((s) => /^\d/.test(s)).map((s): [number, number] => {
        const [a, b] = s.split('-').map(Number);
        return [a!, b ?? a!];
      });
      return { port: Number(/:(\d+)@/.exec(f[1]!)?.[1]), master: flags.includes('master'), failed: flags.some((x) => x === 'fail' || x === 'fail?' || x === 'noaddr'), slots };
    });
}

/**
 * Starts a Redis Cluster on loopback: `masters` masters with `replicas` replicas each, every node a
 * `redis-server --cluster-enabled yes` in its own temporary directory (its nodes.conf survives a
 * restart; no data persistence: a restarted node resyncs from its master), joined with `redis-cli
 * --cluster create`. Resolves once every node reports cluster_state:ok and every replica is in sync.
 * `nodeTimeoutMs`: cluster-node-timeout, how long a master may be silent before its replica takes over.
 */
export async function startRedisCluster(options: { masters?: number; replicas?: number; nodeTimeoutMs?: number } = {}): Promise<LocalRedisCluster> {
  const masters = options.masters ?? 3;
  const replicas = options.replicas ?? 1;
  if (masters < 3) throw new CascadeError('a Redis Cluster needs at least 3 masters');
  const ports = await distinctFreePorts(masters * (1 + replicas));
  const argsOf = (port: number) => {
    const dir = mkdtempSync(join(tmpdir(), `cascade-redis-cluster-${port}-`));
    return ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'), '--cluster-node-timeout', String(options.nodeTimeoutMs ?? 1000), '--cluster-replica-validity-factor', '0', '--save', '', '--appendonly', 'no'];
  };
  const nodes: LocalServer[] = [];
  const stopAll = () => Promise.all(nodes.map((n) => n.stop()));
  const start = async (port: number, args: string[]): Promise<LocalServer> => {
    const child = launch('redis-server', args, 'Redis');
    await waitForPort(port, 10_000, child);
    const node = { url: `redis://127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
    (node as { restartArgs?: string[] }).restartArgs = args;
    return node;
  };
  try {
    for (const port of ports) nodes.push(await start(port, argsOf(port)));
    await execFileAsync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes']);
    await waitForCluster(ports, masters, true);
  } catch (err) {
    await stopAll();
    throw err;
  }
  const frozen = new Set<number>();
  const livePort = async () => {
    for (const n of nodes) if (n.process.exitCode === null && n.process.signalCode === null && !frozen.has(n.port)) return n.port;
    throw new CascadeError('no node of the Redis Cluster is running');
  };
  const masterOf = async (key: string): Promise<number> => {
    const port = await livePort();
    const slot = Number((await redisCli(port, 'cluster', 'keyslot', key)).trim());
    const owner = (await clusterNodes(port)).find((n) => n.master && !n.failed && n.slots.some(([a, b]) => slot >= a && slot <= b));
    if (!owner) throw new CascadeError(`no master serves slot ${slot} (key ${key})`);
    return owner.port;
  };
  /** Waits until a master other than `gone` serves `key`'s slot. */
  const promotedFrom = async (key: string, gone: number): Promise<number> => {
    const until = Date.now() + 30_000;
    let promoted: number | undefined;
    while (promoted === undefined || promoted === gone) {
      if (Date.now() > until) throw new CascadeError(`no replica took over from the master 127.0.0.1:${gone} within 30 s`);
      await new Promise((r) => setTimeout(r, 100));
      promoted = await masterOf(key).catch(() => undefined);
    }
    return promoted;
  };
  return {
    url: `redis+cluster://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`,
    nodes,
    masterOf,
    stop: async () => {
      for (const n of nodes) if (frozen.has(n.port)) n.process.kill('SIGCONT');
      await stopAll();
    },
    freeze: async (key) => {
      const port = await masterOf(key);
      const node = nodes.find((n) => n.port === port)!;
      frozen.add(port);
      node.process.kill('SIGSTOP');
      const promoted = await promotedFrom(key, port);
      return {
        frozen: port,
        promoted,
        thaw: async () => {
          node.process.kill('SIGCONT');
          frozen.delete(port);
          await waitForCluster(nodes.map((n) => n.port), masters, true);
        },
      };
    },
    failover: async (key) => {
      const killed = await masterOf(key);
      const i = nodes.findIndex((n) => n.port === killed);
      const victim = nodes[i]!;
      await new Promise<void>((resolve) => {
        if (victim.process.exitCode !== null || victim.process.signalCode !== null) return resolve();
        victim.process.once('exit', () => resolve());
        victim.process.kill('SIGKILL');
      });
      const promoted = await promotedFrom(key, killed);
      await waitForCluster(nodes.filter((n) => n.port !== killed).map((n) => n.port), masters, false);
      nodes[i] = await start(killed, (victim as { restartArgs?: string[] }).restartArgs!);
      return { killed, promoted };
    },
  };
}

async function distinctFreePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  // a cluster node also listens on port + 10000 (the cluster bus)
  while (ports.size < n) {
    const p = await freePort();
    if (p < 55_000 && ![...ports].some((q) => Math.abs(q - p) === 10_000)) ports.add(p);
  }
  return [...ports];
}

/** Waits until every node on `ports` says cluster_state:ok and sees `masters` live masters covering every slot; `synced`: and every replica's link is up. */
async function waitForCluster(ports: readonly number[], masters: number, synced: boolean): Promise<void> {
  const until = Date.now() + 30_000;
  for (;;) {
    const ok = await Promise.all(
      ports.map(async (port) => {
        const info = await redisCli(port, 'cluster', 'info').catch(() => '');
        if (!/cluster_state:ok/.test(info)) return false;
        const live = (await clusterNodes(port).catch(() => [])).filter((n) => n.master && !n.failed && n.slots.length);
        if (live.length !== masters || live.reduce((s, n) => s + n.slots.reduce((t, [a, b]) => t + b - a + 1, 0), 0) !== 16384) return false;
        if (!synced) return true;
        const replication = await redisCli(port, 'info', 'replication').catch(() => '');
        return /role:master/.test(replication) || /master_link_status:up/.test(replication);
      }),
    );
    if (ok.every(Boolean)) return;
    if (Date.now() > until) throw new CascadeError(`the Redis Cluster on ports ${ports.join(', ')} is not ok after 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
