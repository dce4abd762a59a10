import test from 'ava';
import { startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { RedisKvStore, RedisShards, sessionKey, TokenLog } from '../src/cluster/redis-store.ts';
import type { KvRows } from '../src/models/session.ts';

/** Two real redis-server processes: the store shards sessions over both. */
let servers: LocalServer[] = [];
let shards: RedisShards;

test.before(async () => {
  servers = await Promise.all([startRedis(), startRedis()]);
  shards = new RedisShards(servers.map((s) => s.url));
});

test.after.always(async () => {
  await shards?.close();
  await Promise.all(servers.map((s) => s.stop()));
});

/** Rows of a 2-layer cache (key0, value0, key1, value1), kvHeads 2, head dim 3, values = position + tensor index. */
function rows(positions: number[]): KvRows {
  const count = positions.length;
  const tensors = [0, 1, 2, 3].map((k) => {
    const t = new Float32Array(2 * count * 3);
    for (let h = 0; h < 2; h++) for (let r = 0; r < count; r++) for (let d = 0; d < 3; d++) t[(h * count + r) * 3 + d] = positions[r]! * 100 + k * 10 + h + d / 10;
    return t;
  });
  return { count, kvHeads: 2, tensors };
}

test('redis store - released KV comes back exactly; missing positions are misses, not errors', async (t) => {
  const store = new RedisKvStore(shards, 60);
  await store.put('sess-a', 'target', [5, 9, 12], rows([5, 9, 12]));
  const got = await store.get('sess-a', 'target', [12, 7, 5]);
  t.deepEqual(got.positions, [12, 5], 'position 7 was never written: a miss');
  t.deepEqual(got.rows, rows([12, 5]));
  await store.drop('sess-a', 'target', [12]);
  t.deepEqual((await store.get('sess-a', 'target', [12, 9])).positions, [9]);
  // a data key lost behind the store's back (eviction, expiry) is a miss as well
  await shards.shard('sess-a').del(sessionKey('sess-a', 'kv', 'target', 9));
  t.deepEqual((await store.get('sess-a', 'target', [9, 5])).positions, [5]);
  await store.drop('sess-a', 'target');
  t.deepEqual((await store.get('sess-a', 'target', [5])).positions, []);
  t.is(await shards.shard('sess-a').exists(sessionKey('sess-a', 'kvindex', 'target')), 0);
});

test('redis store - sessions spread over the instances, each session on one, keys hash-tagged', async (t) => {
  const store = new RedisKvStore(shards, 60);
  const ids = Array.from({ length: 40 }, (_, i) => `spread-${i}`);
  for (const id of ids) await store.put(id, 'd', [0], rows([0]));
  const per = await Promise.all(shards.clients.map(async (c) => (await c.keys('cascade:{spread-*}:kv:*')).length));
  t.is(per[0]! + per[1]!, 40);
  t.true(per[0]! >= 8 && per[1]! >= 8, `both instances hold sessions (${per.join(' / ')})`);
  for (const id of ids) {
    const owner = shards.shard(id);
    t.is(await owner.exists(sessionKey(id, 'kv', 'd', 0)), 1);
    t.regex(sessionKey(id, 'kv', 'd', 0), new RegExp(`\\{${id}\\}`));
  }
});

test('redis store - the token log appends at an offset: a repeated append neither loses nor duplicates', async (t) => {
  const log = new TokenLog(shards, 60);
  t.deepEqual(await log.read('req-x'), []);
  t.is(await log.append('req-x', 0, [1, 2, 3]), 3);
  t.is(await log.append('req-x', 0, [1, 2, 3]), 3, 'the same append again (a retried round) is ignored');
  t.is(await log.append('req-x', 3, [4294967295, 0]), 5);
  t.is(await log.append('req-x', 9, [7]), 5, 'an append past the end is refused');
  t.deepEqual(await log.read('req-x'), [1, 2, 3, 4294967295, 0]);
  await log.finish('req-x', '{"finishReason":"stop"}');
  t.is(await log.result('req-x'), '{"finishReason":"stop"}');
  await log.forget('req-x');
  t.deepEqual(await log.read('req-x'), []);
});

test('redis store - ADORE on a draft actor spills released KV to Redis, rebuilds from it, and the output stays exact', async (t) => {
  const { ModelActor } = await import('../src/actors/model-actor.ts');
  const { Coordinator } = await import('../src/cluster/coordinator.ts');
  const { MemoryRequestLog } = await import('../src/cluster/redis-store.ts');
  const { InProcessTransport } = await import('../src/cluster/transport.ts');
  const { generateAutoregressive } = await import('../src/engine/generate.ts');
  const { GREEDY } = await import('../src/kernels/sampling.ts');
  const { loadController } = await import('../src/models/family.ts');
  const { FamilySessions } = await import('../src/models/family-sessions.ts');
  const { TextTokenizer } = await import('../src/models/tokenizer.ts');
  const { loadWorkload } = await import('../src/bench/workloads.ts');
  const { family } = await import('./helpers/family.ts');

  const inner = new RedisKvStore(shards, 60);
  const calls = { put: 0, get: 0, found: 0 };
  const store = {
    put: (...a: Parameters<RedisKvStore['put']>) => (calls.put++, inner.put(...a)),
    get: async (...a: Parameters<RedisKvStore['get']>) => {
      calls.get++;
      const r = await inner.get(...a);
      calls.found += r.positions.length;
      return r;
    },
    drop: (...a: Parameters<RedisKvStore['drop']>) => inner.drop(...a),
  };
  const sessions = new FamilySessions(family, {});
  try {
    const target = await sessions.get(family.target);
    const drafter = await sessions.get(family.drafters[0]!);
    const transport = new InProcessTransport();
    const kv = { policy: 'adore' as const, budget: { budget: 48, sinks: 4, recent: 8, rebuild: 2 }, controller: loadController(family), store };
    const actors = [new ModelActor(transport, target).start(), new ModelActor(transport, drafter, { kv }).start()];
    const tokenizer = TextTokenizer.load(target.spec.tokenizerPath);
    const promptIds = tokenizer.encode(loadWorkload('code')[0]!.prompt).slice(0, 160);
    const want = await generateAutoregressive(target, { promptIds, maxTokens: 24, sampling: GREEDY, seed: 0 });
    const log = new MemoryRequestLog();
    const coordinator = new Coordinator({ transport, log, family: { target: family.target, eosIds: target.spec.eosIds } });
    await coordinator.run({ requestId: 'adore-1', promptIds, maxTokens: 24, sampling: GREEDY, seed: 0, drafters: [family.drafters[0]!], kMatrix: [[4]], lenience: 1, enqueuedAt: Date.now() });
    t.deepEqual(await log.read('adore-1'), want.tokenIds, 'token-identical to target-only greedy decoding');
    t.true(calls.put > 0, 'released KV was written to Redis');
    t.true(calls.get > 0, 'rebuilds asked Redis for released KV');
    await Promise.all(actors.map((a) => a.stop()));
    const left = (await Promise.all(shards.clients.map((c) => c.keys('cascade:{adore-1*}:kv*')))).flat();
    t.deepEqual(left, [], 'closing the session dropped its blocks');
  } finally {
    await sessions.close();
  }
});
