import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { logLine } from './log.ts';
import { redact, withCredentials } from './security.ts';

/**
 * Where the cluster's Redis is (SPEC §6), from the `--redis` value or `CASCADE_REDIS_URL`:
 * - `server`: one Redis (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS), a single
 *   server or a managed Redis's primary endpoint;
 * - `cluster`: a Redis Cluster (or a managed cluster-mode Redis / Valkey) reached through seed
 *   nodes, `redis+cluster://[user:pass@]host:port,host:port,…` (`rediss+cluster://` for TLS). Any
 *   reachable seed will do: the client discovers the masters and replicas and follows failovers.
 */
export type RedisDeployment =
  | { readonly kind: 'server'; readonly url: string }
  | {
      readonly kind: 'cluster';
      readonly seeds: readonly { readonly host: string; readonly port: number }[];
      readonly username?: string;
      readonly password?: string;
      readonly tls: boolean;
    };

/** Redis (a server, or the masters of a Redis Cluster) did not answer at startup within the time allowed; the message names the deployment and the last connection error. */
export class RedisUnreachableError extends CascadeError {
  override readonly name = 'RedisUnreachableError';
  override readonly isRetryable = true;
  constructor(where: string, timeoutMs: number, cause?: Error) {
    super(`cannot reach ${where}${timeoutMs ? ` within ${timeoutMs / 1000} s` : ''}${cause ? `: ${cause.message}` : ''}`, { cause });
  }
}

const CLUSTER_SCHEME = /^(rediss?)\+cluster:\/\//i;

/** True when `value` names a Redis Cluster (`redis+cluster://…`). */
export const isClusterUrl = (value: string): boolean => CLUSTER_SCHEME.test(value.trim());

/**
 * The deployment a `--redis` value names. Accepts one URL (a string, or a list of one, as the
 * roles carry it); a value that cannot be used throws InvalidArgumentError naming the fix. Several
 * plain URLs are refused: the client no longer shards over independent
 * servers (a Redis Cluster does that, with failover), so they must be given as a cluster's seeds.
 */
export function parseRedis(value: string | readonly string[]): RedisDeployment {
  const list = (typeof value === 'string' ? [value] : [...value]).map((s) => s.trim()).filter(Boolean);
  if (!list.length) throw new InvalidArgumentError('no Redis URL given: pass --redis redis://host:port, or redis+cluster://host:port,host:port for a Redis Cluster');
  if (list.length > 1) {
    throw new InvalidArgumentError(
      `${list.length} Redis URLs given (${list.map(redact).join(', ')}): give one server (redis://host:port) or a Redis Cluster's seed nodes (redis+cluster://${list.map(hostPortOf).join(',')}); sharding over independent servers is not supported`,
    );
  }
  const url = list[0]!;
  const scheme = CLUSTER_SCHEME.exec(url);
  if (!scheme) {
    if (!/^rediss?:\/\/[^/]/i.test(url)) throw new InvalidArgumentError(`"${redact(url)}" is not a Redis URL: expected redis://host:port, rediss://…, or redis+cluster://host:port,host:port`);
    try {
      new URL(url);
    } catch (cause) {
      throw new InvalidArgumentError(`bad Redis URL "${redact(url)}"`, { cause });
    }
    return { kind: 'server', url };
  }
  const rest = url.slice(scheme[0].length).replace(/\/+$/, '');
  const at = rest.lastIndexOf('@');
  const userinfo = at >= 0 ? rest.slice(0, at) : undefined;
  const hosts = at >= 0 ? rest.slice(at + 1) : rest;
  if (/[/?#]/.test(hosts)) throw new InvalidArgumentError(`${redact(url)}: a Redis Cluster URL takes seed nodes only (host:port,host:port), no database, path or options (a cluster has database 0 only)`);
  const seeds = hosts.split(',').map((h) => h.trim());
  if (!seeds.length || seeds.some((s) => !s)) throw new InvalidArgumentError(`${redact(url)}: expected seed nodes as host:port,host:port, got an empty one`);
  let username: string | undefined;
  let password: string | undefined;
  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(':');
    try {
      username = decodeURIComponent(colon >= 0 ? userinfo.slice(0, colon) : userinfo) || undefined;
      password = colon >= 0 ? decodeURIComponent(userinfo.slice(colon + 1)) || undefined : undefined;
    } catch (cause) {
      throw new InvalidArgumentError(`${redact(url)}: the credentials are not URL-encoded`, { cause });
    }
  }
  return { kind: 'cluster', seeds: seeds.map((s) => parseSeed(s, url)), ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}), tls: scheme[1]!.toLowerCase() === 'rediss' };
}

function parseSeed(seed: string, url: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(seed);
  const port = m?.[3] === undefined ? 6379 : Number(m[3]);
  if (!m || !(Number.isInteger(port) && port >= 1 && port <= 65535)) throw new InvalidArgumentError(`${redact(url)}: "${seed}" is not a seed node: expected host:port (port 1-65535)`);
  return { host: m[1] ?? m[2]!, port };
}

function hostPortOf(url: string): string {
  try {
    return new URL(url).host || url;
  } catch {
    return url;
  }
}

/** `value` with credentials added where it carries none (Kubernetes hands them over as separate variables); a cluster URL's apply to every node. */
export function withRedisCredentials(value: string, user: string, password: string): string {
  const scheme = CLUSTER_SCHEME.exec(value);
  if (!scheme) return new URL(value).password ? value : withCredentials(value, user, password);
  const rest = value.slice(scheme[0].length);
  return rest.includes('@') ? value : `${scheme[0]}${encodeURIComponent(user)}:${encodeURIComponent(password)}@${rest}`;
}

/** A value for logs and state files: the deployment without credentials. */
export function describeRedis(d: RedisDeployment): string {
  return d.kind === 'server' ? redact(d.url) : `Redis Cluster via ${d.seeds.map((s) => `${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`).join(',')}`;
}

/** Both kinds of client: a command on a key goes to the node holding the key's slot. */
export type RedisClient = Redis | Cluster;

/**
 * How long a connection may owe a reply without receiving a byte before it is taken for dead and
 * closed (ioredis `socketTimeout`), ms. A master that freezes or is cut off by a partition keeps its
 * TCP connections open and answers nothing: without this, every command sent to it waits for ever,
 * though its replica has long taken its slots over. Closed, it fails as a killed master does: a
 * cluster client finds the slots' new master and sends the command there. Far above any command's
 * time here (short scripts, and WAIT bounded by replicaAckMs).
 */
export const SOCKET_TIMEOUT_MS = 5000;

/**
 * SOCKET_TIMEOUT_MS for BullMQ's connections, whose blocking commands wait up to 10 s for a job by
 * design (BZPOPMIN, bounded by BullMQ's maximumBlockTimeout; never set a worker's drainDelay near
 * this). Kept near the coordinators' 10 s job lock, so that a frozen queue master costs few stalled
 * jobs. ioredis 5.11 leaves a socket timer armed across a reconnect (redis/ioredis#2147): after a
 * connection drops with a command owed, the new connection may be closed once more at the old
 * deadline; the commands owed are sent again (every script here may run twice).
 */
export const QUEUE_SOCKET_TIMEOUT_MS = 15_000;

/**
 * A client for the deployment. `queue`: for BullMQ (blocking commands never give up, as BullMQ
 * requires). Cluster clients follow MOVED/ASK redirections and, when a master fails, retry a
 * command until a replica has taken its slots over (cluster-node-timeout plus an election), so a
 * failover shows up as latency, not as errors, unless it takes longer than about 10 s.
 */
export function openRedis(d: RedisDeployment, options: { queue?: boolean; name?: string } = {}): RedisClient {
  const common: RedisOptions = {
    maxRetriesPerRequest: options.queue ? null : 20,
    enableReadyCheck: true,
    socketTimeout: options.queue ? QUEUE_SOCKET_TIMEOUT_MS : SOCKET_TIMEOUT_MS,
    ...(options.name ? { connectionName: options.name } : {}),
  };
  if (d.kind === 'server') {
    try {
      return new Redis(d.url, { ...common, ...(options.queue ? {} : { maxRetriesPerRequest: 3 }) });
    } catch (cause) {
      throw new InvalidArgumentError(`bad Redis URL ${redact(d.url)}`, { cause });
    }
  }
  const clusterOptions: ClusterOptions = {
    redisOptions: { ...common, ...(d.username !== undefined ? { username: d.username } : {}), ...(d.password !== undefined ? { password: d.password } : {}), ...(d.tls ? { tls: {} } : {}) },
    enableReadyCheck: true,
    // a command on a failed master's slots waits for the slots to move (a failover), then goes to the new master
    retryDelayOnFailover: 200,
    retryDelayOnClusterDown: 300,
    retryDelayOnTryAgain: 100,
    retryDelayOnMoved: 0,
    maxRedirections: 64,
    slotsRefreshTimeout: 2000,
    clusterRetryStrategy: (times) => (times > 50 ? null : Math.min(100 * times, 2000)),
  };
  return new Cluster(
    d.seeds.map((s) => ({ host: s.host, port: s.port })),
    clusterOptions,
  );
}

/**
 * Logs a Redis client's lost and regained connections for an operator, one line each (a client
 * retrying says so once, not at every try; a node of a cluster once a minute at most): `Redis
 * (name): <error>; reconnecting`, `Redis (name): connected again`.
 */
export function logRedisEvents(client: RedisClient, name: string, log: (line: string) => void = logLine): void {
  let lost = false;
  client.on('error', (err: Error) => {
    if (lost) return;
    lost = true;
    log(`Redis (${name}): ${err.message.replace(/\.$/, '')}; reconnecting`);
  });
  client.on('ready', () => {
    if (lost) log(`Redis (${name}): connected again`);
    lost = false;
  });
  if (client instanceof Cluster) {
    const due = onceAMinute();
    client.on('node error', (err: Error, address: string) => {
      if (due(address)) log(`Redis (${name}): node ${address}: ${err.message}`);
    });
    client.on('-node', (node: { options?: { host?: string; port?: number } }) => log(`Redis (${name}): node ${node.options?.host}:${node.options?.port} left the cluster's slots`));
  }
}

/**
 * A sink for a client's errors that logs each distinct message once a minute at most (BullMQ's
 * worker and queue report every failed retry of their own connections as an 'error').
 */
export function throttledErrorLog(prefix: string, log: (line: string) => void = logLine): (err: Error) => void {
  const due = onceAMinute();
  return (err) => {
    if (due(err.message)) log(`${prefix}: ${err.message}`);
  };
}

/** Whether a line about `key` is due: true the first time, then once a minute at most per key. */
function onceAMinute(): (key: string) => boolean {
  const last = new Map<string, number>();
  return (key) => {
    const now = Date.now();
    if (now - (last.get(key) ?? -Infinity) < 60_000) return false;
    last.set(key, now);
    return true;
  };
}

/** Resolves when every node that holds data answers PING (every master of a cluster). */
export async function pingRedis(client: RedisClient): Promise<void> {
  if (client instanceof Cluster) {
    const masters = client.nodes('master');
    if (!masters.length) throw new RedisUnreachableError('any master of the Redis Cluster', 0);
    await Promise.all(masters.map((n) => n.ping()));
  } else await client.ping();
}

/**
 * BullMQ's key prefix. On a Redis Cluster every key of a queue must hash to one slot (its Lua
 * scripts touch several of them), so the prefix is a hash tag: `{bull}`. One server keeps BullMQ's
 * default `bull`, so queued jobs of an existing deployment stay where they are.
 */
export const queuePrefix = (d: RedisDeployment): string => (d.kind === 'cluster' ? '{bull}' : 'bull');

/**
 * The cluster's Redis for session state and request logs: one client over the deployment. Every key
 * of a session or request carries its hash tag `{id}` (sessionKey), so on a Redis Cluster all of
 * them share one slot and every multi-key command, MULTI and script of redis-store.ts stays on one
 * node. `replicaAcks`: how many replicas must have a request log's write before it counts (WAIT,
 * sent in the same pipeline, to the key's master), so a failover keeps every token the coordinator
 * streamed; 1 on a cluster, 0 on one server. A replica that does not answer within `replicaAckMs`
 * only costs that wait: the write stands (a master without replicas keeps serving).
 */
export class RedisConnection {
  readonly deployment: RedisDeployment;
  readonly client: RedisClient;
  readonly replicaAcks: number;
  readonly replicaAckMs: number;

  constructor(value: string | readonly string[] | RedisDeployment, options: { replicaAcks?: number; replicaAckMs?: number; name?: string } = {}) {
    this.deployment = typeof value === 'object' && 'kind' in value ? value : parseRedis(value as string | readonly string[]);
    this.client = openRedis(this.deployment, { name: options.name });
    // reconnects on its own (callers see failed commands); an operator sees the losses and returns
    logRedisEvents(this.client, options.name ?? 'client');
    this.replicaAcks = options.replicaAcks ?? (this.deployment.kind === 'cluster' ? 1 : 0);
    this.replicaAckMs = options.replicaAckMs ?? 100;
    // a WAIT owes its reply for replicaAckMs: at the socket timeout it would be taken for a dead master
    if (!(this.replicaAckMs < SOCKET_TIMEOUT_MS / 2)) throw new InvalidArgumentError(`replicaAckMs ${this.replicaAckMs} must be below ${SOCKET_TIMEOUT_MS / 2} ms (half the socket timeout)`);
  }

  /**
   * A connection that answers: resolves once the client is ready (a cluster's slots are known) and
   * every master answers PING; otherwise closes it and throws RedisUnreachableError naming the
   * deployment and the last connection error.
   */
  static async open(value: string | readonly string[] | RedisDeployment, options: ConstructorParameters<typeof RedisConnection>[1] & { timeoutMs?: number } = {}): Promise<RedisConnection> {
    const connection = new RedisConnection(value, options);
    const { client } = connection;
    let last: Error | undefined;
    const onError = (err: Error) => (last = err);
    client.on('error', onError);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new RedisUnreachableError(connection.describe, options.timeoutMs ?? 10_000, last)), options.timeoutMs ?? 10_000);
        const done = () => (clearTimeout(timer), resolve());
        if (client.status === 'ready') return done();
        client.once('ready', done);
        client.once('end', () => (clearTimeout(timer), reject(new RedisUnreachableError(connection.describe, 0, last))));
      });
      await connection.ping();
      return connection;
    } catch (err) {
      connection.client.disconnect();
      throw err instanceof RedisUnreachableError ? err : new RedisUnreachableError(connection.describe, 0, err as Error);
    } finally {
      client.off('error', onError);
    }
  }

  get describe(): string {
    return describeRedis(this.deployment);
  }

  ping(): Promise<void> {
    return pingRedis(this.client);
  }

  async close(): Promise<void> {
    await this.client.quit().catch(() => this.client.disconnect());
  }
}
