import test from 'ava';
import { randomUUID } from 'node:crypto';
import { RedisConnection } from '../src/cluster/redis-connection.ts';
import { LogLostError, LogOffsetError, MemoryRequestLog, RedisKvStore, RequestSupersededError, sessionKey, TokenLog, type RequestLog } from '../src/cluster/redis-store.ts';
import { floatsToHalves } from '../src/kernels/half.ts';
import type { KvDtype, KvRows } from '../src/models/session.ts';
import { startTestRedis, type TestRedis } from './helpers/redis.ts';

/** A real redis-server, or a real three-master Redis Cluster with CASCADE_TEST_REDIS=cluster (test/redis-store-cluster.test.ts). */
let redis: TestRedis;
let shards: RedisConnection;

test.before(async () => {
  redis = await startTestRedis();
  shards = await RedisConnection.open(redis.url);
});

test.after.always(async () => {
  await shards?.close();
  await redis?.stop();
});

/**
 * Rows of a 2-layer cache (key0, value0, key1, value1), kvHeads 2, head dim 3, values = position + tensor
 * index; float16 rows hold those values' half bit patterns.
 */
function rows(positions: number[], dtype: KvDtype = 'float32'): KvRows {
  const count = positions.length;
  const tensors = [0, 1, 2, 3].map((k) => {
    const t = new Float32Array(2 * count * 3);
    for (let h = 0; h < 2; h++) for (let r = 0; r < count; r++) for (let d = 0; d < 3; d++) t[(h * count + r) * 3 + d] = positions[r]! * 100 + k * 10 + h + d / 10;
    return dtype === 'float16' ? floatsToHalves(t) : t;
  });
  return { dtype, count, kvHeads: 2, tensors };
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
  await shards.client.del(sessionKey('sess-a', 'kv', 'target', 9));
  t.deepEqual((await store.get('sess-a', 'target', [9, 5])).positions, [5]);
  await store.drop('sess-a', 'target');
  t.deepEqual((await store.get('sess-a', 'target', [5])).positions, []);
  t.is(await shards.client.exists(sessionKey('sess-a', 'kvindex', 'target')), 0);
});

test('redis store - float16 KV rows of a float16 export come back bit for bit, as Uint16Array', async (t) => {
  const store = new RedisKvStore(shards, 60);
  await store.put('sess-h', 'target', [3, 8], rows([3, 8], 'float16'));
  const got = await store.get('sess-h', 'target', [8, 3]);
  t.deepEqual(got.positions, [8, 3]);
  t.deepEqual(got.rows, rows([8, 3], 'float16'));
  t.true(got.rows!.tensors.every((a) => a instanceof Uint16Array));
  await store.drop('sess-h', 'target');
});

test('redis store - every key of a session carries its hash tag; on a Redis Cluster sessions spread over the masters, each session on one', async (t) => {
  const store = new RedisKvStore(shards, 60);
  const log = new TokenLog(shards, 60);
  const ids = Array.from({ length: 40 }, (_, i) => `spread-${i}-${randomUUID()}`);
  for (const id of ids) {
    await store.put(id, 'd', [0, 1], rows([0, 1]));
    await log.append(id, await log.claim(id), 0, [1, 2]);
  }
  t.is((await redis.keys('cascade:{spread-*}:kv:*')).length, 80);
  const byNode = await redis.keysByNode('cascade:{spread-*');
  const holders = new Map<number, number>();
  for (const id of ids) {
    const owners = [...byNode].filter(([, keys]) => keys.some((k) => k.startsWith(`cascade:{${id}}:`)));
    t.is(owners.length, 1, `${id}'s keys live on one node`);
    t.is(owners[0]![1].filter((k) => k.startsWith(`cascade:{${id}}:`)).length, 5, 'kv ×2, kvindex, fence, tokens, all there');
    holders.set(owners[0]![0], (holders.get(owners[0]![0]) ?? 0) + 1);
  }
  if (redis.cluster) t.is(holders.size, 3, `sessions spread over the 3 masters (${[...holders.values()].join(' / ')})`);
});

/** A promise and its resolve (Node 20 has no Promise.withResolvers). */
function settler(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** The RequestLog contract, run against both implementations (the in-memory one and Redis). */
const requestLogs: [string, () => RequestLog][] = [
  ['memory', () => new MemoryRequestLog()],
  ['redis', () => new TokenLog(shards, 60)],
];

for (const [kind, open] of requestLogs) {
  test(`request log (${kind}) - appends land only at the log's length: a repeated append is a no-op, any other is refused`, async (t) => {
    const log = open();
    const id = `req-${randomUUID()}`;
    t.deepEqual(await log.read(id), []);
    const fence = await log.claim(id);
    t.is(fence, 1);
    await log.append(id, fence, 0, [1, 2, 3]);
    await log.append(id, fence, 0, [1, 2, 3]); // the same append again (a retried round)
    await log.append(id, fence, 3, [4294967295, 0]);
    await t.throwsAsync(log.append(id, fence, 9, [7]), { instanceOf: LogOffsetError }, 'an append past the end');
    await t.throwsAsync(log.append(id, fence, 3, [8, 8]), { instanceOf: LogOffsetError }, 'other tokens where tokens are recorded');
    await t.throwsAsync(log.append(id, fence, 1, [2]), { instanceOf: LogOffsetError }, 'the same tokens short of the end');
    t.deepEqual(await log.read(id), [1, 2, 3, 4294967295, 0]);
    await log.finish(id, fence, '{"finishReason":"stop"}');
    t.is(await log.result(id), '{"finishReason":"stop"}');
  });

  test(`request log (${kind}) - log probabilities are recorded with their tokens, bit for bit, and once`, async (t) => {
    const log = open();
    const id = `req-${randomUUID()}`;
    const fence = await log.claim(id);
    const a = [{ token: 1, logprob: Math.log(0.3), top: [{ token: 2, logprob: Math.log(0.6) }, { token: 1, logprob: Math.log(0.3) }] }, { token: 4294967295, logprob: -9999, top: [] }];
    const b = [{ token: 7, logprob: -1e-12, top: [{ token: 7, logprob: -1e-12 }] }];
    await log.append(id, fence, 0, [1, 4294967295], { top: 2, list: a });
    await log.append(id, fence, 0, [1, 4294967295], { top: 2, list: a }); // a retried round records nothing twice
    await log.append(id, fence, 2, [7], { top: 2, list: b });
    t.deepEqual(await log.readLogprobs(id, 2), [...a, ...b]);
    await t.throwsAsync(log.append(id, fence, 3, [8, 9], { top: 2, list: b }), { instanceOf: RangeError, message: /1 log probabilities for 2 tokens/ });
    t.deepEqual(await log.read(id), [1, 4294967295, 7]);
    t.deepEqual(await log.readLogprobs(`req-${randomUUID()}`, 2), [], 'none for a request that asked for none');
  });

  test(`request log (${kind}) - a newer claim fences the older attempt out of appending and finishing`, async (t) => {
    const log = open();
    const id = `req-${randomUUID()}`;
    const first = await log.claim(id);
    await log.append(id, first, 0, [5, 6]);
    const second = await log.claim(id);
    t.true(second > first);
    const refused = await t.throwsAsync(log.append(id, first, 2, [7]), { instanceOf: RequestSupersededError });
    t.is(refused?.name, 'RequestSupersededError');
    t.is(refused?.current, second);
    await t.throwsAsync(log.finish(id, first, '{}'), { instanceOf: RequestSupersededError });
    t.deepEqual(await log.read(id), [5, 6], 'the old attempt left nothing');
    t.is(await log.result(id), undefined);
    await log.append(id, second, 2, [9]);
    await log.finish(id, second, '{"finishReason":"length"}');
    t.deepEqual(await log.read(id), [5, 6, 9]);
    t.is(await log.result(id), '{"finishReason":"length"}');
  });
}

test('request log (redis) - a claim a failover lost (the fence gone) is no newer attempt: the append and finish fail with the retryable LogLostError, and a new claim resumes', async (t) => {
  const log = new TokenLog(shards, 60);
  const id = `req-${randomUUID()}`;
  const fence = await log.claim(id);
  await log.append(id, fence, 0, [5, 6]);
  await shards.client.del(sessionKey(id, 'fence')); // what a master dying before its replica had the claim leaves
  const lost = await t.throwsAsync(log.append(id, fence, 2, [7]), { instanceOf: LogLostError });
  t.true(lost!.isRetryable);
  t.is(lost!.current, 0);
  await t.throwsAsync(log.finish(id, fence, '{}'), { instanceOf: LogLostError });
  const again = await log.claim(id);
  await log.append(id, again, 2, [7]);
  t.deepEqual(await log.read(id), [5, 6, 7]);
});

test('redis store - on a Redis Cluster a request log\'s claim, appends and finish each wait for a replica (WAIT on the key\'s master)', async (t) => {
  if (!redis.cluster) return t.pass('one server: no replica to wait for');
  const { Redis } = await import('ioredis');
  const log = new TokenLog(shards, 60);
  const id = `req-${randomUUID()}`;
  const master = new Redis(await redis.cluster.masterOf(sessionKey(id, 'tokens')), '127.0.0.1');
  try {
    const waits = async () => Number(/cmdstat_wait:calls=(\d+)/.exec(await master.info('commandstats'))?.[1] ?? 0);
    const before = await waits();
    const fence = await log.claim(id);
    for (const [offset, tokens] of [[0, [1, 2]], [2, [3]], [3, [4, 5, 6]]] as const) await log.append(id, fence, offset, tokens);
    await log.finish(id, fence, '{}');
    t.true((await waits()) - before >= 5, 'one WAIT per write, on the master that ran it');
    t.deepEqual(await log.read(id), [1, 2, 3, 4, 5, 6]);
  } finally {
    master.disconnect();
  }
});

test('redis store - forget drops a request\'s tokens, result and fence', async (t) => {
  const log = new TokenLog(shards, 60);
  const fence = await log.claim('req-x');
  await log.append('req-x', fence, 0, [1]);
  await log.finish('req-x', fence, '{}');
  await log.forget('req-x');
  t.deepEqual(await log.read('req-x'), []);
  t.is(await log.result('req-x'), undefined);
  t.is(await log.claim('req-x'), 1);
  await log.forget('req-x');
});

/**
 * A BullMQ stall hand-over: coordinator A's lock is lost while A still runs the request (as when
 * its event loop stalls past the lock), the stalled-job check hands the job to coordinator B, which
 * resumes from the recorded tokens with its own draws. The two then race to append; the turns below
 * force the interleaving that used to splice them (A records a token after B's, at B's next offset).
 */
test.serial('redis store - a stall hand-over never splices two coordinators\' draws: the log and the stream are one continuation, the loser stops', async (t) => {
  const { ModelActor } = await import('../src/actors/model-actor.ts');
  const { Coordinator, QUEUE_NAME, jobOptions, openQueue, startCoordinatorWorker } = await import('../src/cluster/coordinator.ts');
  const { queuePrefix } = await import('../src/cluster/redis-connection.ts');
  const { decode } = await import('../src/cluster/messages.ts');
  const { InProcessTransport, subjects } = await import('../src/cluster/transport.ts');
  const { MemoryModelSession } = await import('../src/models/memory-session.ts');

  const redisUrl = redis.url;
  const transport = new InProcessTransport();
  const target = new MemoryModelSession({ name: 'target', vocabSize: 64, order: 2, seed: 21, sharpness: 1 });
  const actor = new ModelActor(transport, target).start();
  const tokenLog = new TokenLog(shards, 60);

  /** Appends wait for their coordinator's turn; a coordinator that has stopped loses its turns. */
  const turns = ['A', 'B', 'A', 'A', 'B', 'B'];
  const wrote: Record<string, { offset: number; tokens: number[]; error?: string }[]> = { A: [], B: [] };
  const stopped = new Set<string>();
  const waiting: (() => void)[] = [];
  const wake = () => waiting.splice(0).forEach((w) => w());
  const myTurn = async (who: string) => {
    for (;;) {
      while (turns.length && stopped.has(turns[0]!)) turns.shift();
      if (!turns.length || turns[0] === who) return;
      await new Promise<void>((resolve) => waiting.push(resolve));
    }
  };
  const landed = { A: settler() };
  // arguments pass through untouched, so this test runs against any version of the RequestLog contract
  const pass = (method: keyof RequestLog) => (...args: unknown[]) => (tokenLog[method] as (...a: unknown[]) => Promise<never>)(...args);
  const gated = (who: string): RequestLog => ({
    claim: pass('claim'),
    read: pass('read'),
    readLogprobs: pass('readLogprobs'),
    finish: pass('finish'),
    result: pass('result'),
    append: async (...args: unknown[]) => {
      await myTurn(who);
      const entry: { offset: number; tokens: number[]; error?: string } = { offset: args[2] as number, tokens: [...(args[3] as number[])] };
      wrote[who]!.push(entry);
      try {
        return await pass('append')(...args);
      } catch (err) {
        entry.error = (err as Error).name;
        throw err;
      } finally {
        if (turns[0] === who) turns.shift();
        if (who === 'A') landed.A.resolve();
        wake();
      }
    },
  });
  class Observed extends Coordinator {
    error: unknown;
    readonly settled = settler();
    constructor(readonly who: string) {
      super({ transport, log: gated(who), family: { target: 'target', eosIds: [] } });
    }
    override async run(raw: unknown, attempt?: number) {
      try {
        return await super.run(raw, attempt);
      } catch (err) {
        this.error = err;
        throw err;
      } finally {
        stopped.add(this.who);
        wake();
        this.settled.resolve();
      }
    }
  }
  const a = new Observed('A');
  const b = new Observed('B');

  const requestId = `handover-${randomUUID()}`;
  const streamed: number[] = [];
  const events: string[] = [];
  const stream = transport.subscribe(subjects.stream(requestId), (frame) => {
    const m = decode(frame);
    events.push(m.type);
    // the gateway's rule: a message's tokens past what the client has, at their offset
    if (m.type === 'tokens' && m.offset <= streamed.length) streamed.push(...m.tokens.slice(streamed.length - m.offset));
  });
  const queue = openQueue(redisUrl);
  const workerA = startCoordinatorWorker(a, { redis: redisUrl, concurrency: 1, lockDurationMs: 1000 });
  let workerB: ReturnType<typeof startCoordinatorWorker> | undefined;
  try {
    const maxTokens = 12;
    await queue.add('generate', { requestId, promptIds: [3, 1, 4], maxTokens, sampling: { temperature: 1, topK: 0, topP: 1 }, seed: 7, stopAtEos: false, drafters: [], kMatrix: [], lenience: 1, enqueuedAt: Date.now() }, jobOptions(requestId));
    await landed.A.promise;
    // A's lock is lost while A still runs (A waits for B's turn): BullMQ hands the job to B
    await shards.client.del(`${queuePrefix(shards.deployment)}:${QUEUE_NAME}:${requestId}:lock`);
    workerB = startCoordinatorWorker(b, { redis: redisUrl, concurrency: 1, lockDurationMs: 1000 });
    await Promise.all([a.settled.promise, b.settled.promise]);
    for (let i = 0; i < 50 && (await queue.getJobState(requestId)) !== 'completed'; i++) await new Promise((r) => setTimeout(r, 100));

    const log = await tokenLog.read(requestId);
    const seq = (who: string) => {
      const mine = wrote[who]!;
      const from = mine[0]?.offset ?? 0;
      return [...(wrote.A!.flatMap((w) => w.tokens).slice(0, from)), ...mine.flatMap((w) => w.tokens)];
    };
    t.log(`A tried ${JSON.stringify(wrote.A)}; B tried ${JSON.stringify(wrote.B)}; log ${JSON.stringify(log)}`);
    t.true(b.error === undefined, 'B, which holds the job, finishes it');
    t.deepEqual(log, seq('B'), 'the log is the tokens B resumed from and B\'s own draws, nothing of A after the hand-over');
    t.notDeepEqual(seq('A').slice(0, log.length), log, 'the two draws differ (else the test shows nothing)');
    t.deepEqual(streamed, log, 'the stream, deduplicated by offset as the gateway does, is the log');
    t.is(a.error instanceof Error ? a.error.name : undefined, 'RequestSupersededError', 'A stops at its first append after the hand-over');
    t.true(wrote.A!.slice(1).every((w) => w.error === 'RequestSupersededError'), 'nothing A drew after the hand-over was recorded');
    t.false(events.includes('failed'), 'the request is not reported failed');
    t.is(events.filter((e) => e === 'done').length, 1, 'one done, from B');
    const finished = await queue.getJob(requestId);
    t.is(await finished!.getState(), 'completed', 'BullMQ took B\'s completion and refused A\'s lock-less failure');
    t.is((finished!.returnvalue as { generatedTokens: number }).generatedTokens, maxTokens);
    t.is(actor.activeSessions, 0, 'both attempts released their sessions');
  } finally {
    await stream.close();
    await workerA.close(true);
    await workerB?.close(true);
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
    await actor.stop();
  }
});

test('redis store - ADORE on a draft actor spills released KV to Redis, rebuilds from it, and the output stays exact', async (t) => {
  const { ModelActor } = await import('../src/actors/model-actor.ts');
  const { Coordinator } = await import('../src/cluster/coordinator.ts');
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
    const left = await redis.keys('cascade:{adore-1*}:kv*');
    t.deepEqual(left, [], 'closing the session dropped its blocks');
  } finally {
    await sessions.close();
  }
});
