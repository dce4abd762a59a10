import { startRedis, startRedisCluster, type LocalRedisCluster } from '../../src/cluster/local-servers.ts';
import { RedisConnection } from '../../src/cluster/redis-connection.ts';

/**
 * The Redis deployment the Redis-backed tests run against: one redis-server by default, a
 * three-master Redis Cluster with a replica per master when CASCADE_TEST_REDIS=cluster (so
 * test/cluster.test.ts, test/chaos.test.ts and test/redis-store.test.ts run unchanged on a cluster).
 */
export const testRedisKind = (): 'server' | 'cluster' => (process.env.CASCADE_TEST_REDIS === 'cluster' ? 'cluster' : 'server');

export interface TestRedis {
  /** What `--redis` takes: redis://… or redis+cluster://…. */
  readonly url: string;
  readonly kind: 'server' | 'cluster';
  /** The cluster's nodes and its failover, on a cluster. */
  readonly cluster?: LocalRedisCluster;
  /** Keys matching `pattern` on every master (KEYS is per node on a cluster). */
  keys(pattern: string): Promise<string[]>;
  /** The same, per master (by port; one entry for a single server). */
  keysByNode(pattern: string): Promise<Map<number, string[]>>;
  stop(): Promise<void>;
}

export async function startTestRedis(kind = testRedisKind()): Promise<TestRedis> {
  if (kind === 'server') {
    const server = await startRedis();
    const conn = new RedisConnection(server.url);
    return {
      url: server.url,
      kind,
      keys: (pattern) => conn.client.keys(pattern),
      keysByNode: async (pattern) => new Map([[server.port, await conn.client.keys(pattern)]]),
      stop: async () => {
        await conn.close();
        await server.stop();
      },
    };
  }
  const cluster = await startRedisCluster({ masters: 3, replicas: 1 });
  const conn = await RedisConnection.open(cluster.url);
  return {
    url: cluster.url,
    kind,
    cluster,
    keys: async (pattern) => {
      const client = conn.client as import('ioredis').Cluster;
      return (await Promise.all(client.nodes('master').map((n) => n.keys(pattern)))).flat();
    },
    keysByNode: async (pattern) => {
      const client = conn.client as import('ioredis').Cluster;
      return new Map(await Promise.all(client.nodes('master').map(async (n): Promise<[number, string[]]> => [n.options.port!, await n.keys(pattern)])));
    },
    stop: async () => {
      await conn.close();
      await cluster.stop();
    },
  };
}
