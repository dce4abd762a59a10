import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { QUEUE_NAME } from '../src/cluster/coordinator.ts';
import { freePort, startNats, type LocalRedisCluster, type LocalServer } from '../src/cluster/local-servers.ts';
import { parseRedis, queuePrefix, RedisConnection, RedisUnreachableError, withRedisCredentials } from '../src/cluster/redis-connection.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { fails } from './helpers/cli.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';
import { family, MODELS_DIR } from './helpers/family.ts';
import { startTestRedis, type TestRedis } from './helpers/redis.ts';

/**
 * The cluster on a real Redis Cluster: three masters with a replica each (redis-server
 * --cluster-enabled yes, joined by redis-cli --cluster create) on loopback ports, nats-server, the
 * verifier, drafter and coordinator actors as OS processes given `--redis redis+cluster://…`, the
 * gateway in this process. A master is killed mid-request (SIGKILL), or frozen (SIGSTOP, as behind
 * a partition: its connections stay open and silent); its replica takes over and every request
 * completes with target-only decoding's greedy text, no token lost or repeated.
 */
let nats: LocalServer;
let redis: TestRedis;
let gateway: Role & { url: string };
let client: OpenAI;
const roles = new Map<string, RoleProcess>();
const sessions = new FamilySessions(family, {});
const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));

const coordinator = (i: number) => spawnRole(['coordinator', '--models', MODELS_DIR, '--nats', nats.url, '--redis', redis.url, '--lock-ms', '2000', '--call-timeout-ms', '3000']).then((r) => roles.set(`coordinator-${i}`, r));

async function targetOnly(prompt: string, maxTokens: number): Promise<string> {
  const r = await generateAutoregressive(await sessions.get(family.target), { promptIds: tokenizer.encode(prompt), maxTokens, sampling: GREEDY, seed: 0 });
  return tokenizer.decode(r.tokenIds);
}

const PROMPTS = ['def parse_args(argv):\n    """Parse the command line."""\n    ', 'class Stack:\n    def __init__(self):\n', 'import os\n\ndef walk(root):\n', 'for (int i = 0; i < n; i++) {\n'];

/** Streams every prompt at once (greedy); `onFirstToken` runs once, when the first token of any arrives, while all of them run. */
async function streams(maxTokens: number, onFirstToken: () => Promise<void>): Promise<{ texts: string[]; tokens: number[] }> {
  let fired: Promise<void> | undefined;
  const out = await Promise.all(
    PROMPTS.map(async (prompt) => {
      const s = await client.completions.create({ model: family.target, prompt, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } });
      let text = '';
      let tokens = 0;
      for await (const c of s) {
        text += c.choices[0]?.text ?? '';
        if (c.usage) tokens = c.usage.completion_tokens;
        if (text && !fired) fired = onFirstToken();
      }
      return { text, tokens };
    }),
  );
  await fired;
  return { texts: out.map((o) => o.text), tokens: out.map((o) => o.tokens) };
}

test.before(async () => {
  [nats, redis] = await Promise.all([startNats(), startTestRedis('cluster')]);
  const common = ['--models', MODELS_DIR, '--nats', nats.url, '--idle-ms', '20000'];
  const started = await Promise.all([spawnRole(['actor', 'verify', ...common, '--instance', 'v0']), ...family.drafters.map((d) => spawnRole(['actor', 'draft', '--model', d, ...common, '--instance', `${d}-0`]))]);
  roles.set('verify', started[0]!);
  family.drafters.forEach((d, i) => roles.set(d, started[i + 1]!));
  await Promise.all([coordinator(0), coordinator(1)]);
  gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, requestTimeoutMs: 120_000 });
  client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
});

test.after.always(async () => {
  await stopCluster({ gateways: [gateway], roles: roles.values(), servers: [nats, redis] });
  await sessions.close();
});

test('redis cluster - malformed --redis values and an unreachable cluster get clear errors', async (t) => {
  t.deepEqual(parseRedis('redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001,redis-2'), { kind: 'cluster', seeds: [{ host: '10.0.0.1', port: 7000 }, { host: '::1', port: 7001 }, { host: 'redis-2', port: 6379 }], username: 'u', password: 'p@ss', tls: false });
  t.like(parseRedis(['rediss+cluster://a:1']), { kind: 'cluster', tls: true });
  t.deepEqual(parseRedis(['redis://127.0.0.1:6379']), { kind: 'server', url: 'redis://127.0.0.1:6379' });
  // Kubernetes hands the password over as its own variable (CASCADE_REDIS_PASSWORD): it applies to every seed
  t.is(withRedisCredentials('redis+cluster://a:1,b:2', 'cascade', 'p@ss:/'), 'redis+cluster://cascade:p%40ss%3A%2F@a:1,b:2');
  t.like(parseRedis(withRedisCredentials('redis+cluster://a:1,b:2', 'cascade', 'p@ss:/')), { username: 'cascade', password: 'p@ss:/', seeds: [{ host: 'a', port: 1 }, { host: 'b', port: 2 }] });
  t.is(withRedisCredentials('redis+cluster://u:x@a:1', 'cascade', 'y'), 'redis+cluster://u:x@a:1', 'credentials in the URL win');
  for (const [value, message] of [
    ['redis+cluster://a:1,,b:2', /empty one/],
    ['redis+cluster://a:99999', /"a:99999" is not a seed node/],
    ['redis+cluster://a:1/0', /no database, path or options/],
    ['redis+cluster://', /empty one/],
    ['http://a:1', /not a Redis URL/],
  ] as const) {
    t.throws(() => parseRedis(value), { name: 'InvalidArgumentError', message }, value);
  }
  t.throws(() => parseRedis(['redis://u:secret@a:1', 'redis://b:2']), { name: 'InvalidArgumentError', message: /2 Redis URLs given .*redis\+cluster:\/\/a:1,b:2\); sharding over independent servers is not supported/ });
  t.notRegex(t.throws(() => parseRedis(['redis://u:secret@a:1', 'redis://b:2']))!.message, /secret/, 'no password in the message');
  const dead = await freePort();
  const t0 = Date.now();
  const err = await t.throwsAsync(RedisConnection.open(`redis+cluster://127.0.0.1:${dead}`, { timeoutMs: 3000 }), { instanceOf: RedisUnreachableError });
  t.regex(err!.message, new RegExp(`cannot reach Redis Cluster via 127\\.0\\.0\\.1:${dead}`));
  t.true(Date.now() - t0 < 6000);
  const cli = await fails(['coordinator', '--models', MODELS_DIR, '--redis', 'redis://a:1,redis://b:2']);
  t.not(cli.code, 0);
  t.regex(cli.stderr, /give one server \(redis:\/\/host:port\) or a Redis Cluster's seed nodes \(redis\+cluster:\/\/a:1,b:2\)/);
});

test.serial('redis cluster - the cluster completes greedy requests with target-only decoding\'s text; the queue and every request\'s keys stay on one slot each', async (t) => {
  const { texts, tokens } = await streams(24, async () => undefined);
  for (const [i, p] of PROMPTS.entries()) t.is(texts[i], await targetOnly(p, 24), p);
  t.deepEqual(tokens, PROMPTS.map(() => 24));
  const byNode = await redis.keysByNode('*');
  const queueNodes = [...byNode].filter(([, keys]) => keys.some((k) => k.startsWith(`${queuePrefix(parseRedis(redis.url))}:${QUEUE_NAME}:`)));
  t.is(queueNodes.length, 1, 'every BullMQ key on one master ({bull} prefix)');
  const requests = [...new Set([...byNode.values()].flat().filter((k) => k.startsWith('cascade:{req-')).map((k) => /\{(req-[^}]+)\}/.exec(k)![1]!))];
  t.true(requests.length >= PROMPTS.length);
  for (const id of requests) t.is([...byNode].filter(([, keys]) => keys.some((k) => k.includes(`{${id}}`))).length, 1, `${id}'s keys on one master`);
  const health = await fetch(`${gateway.url}/health`);
  t.is(health.status, 200, '/health pings every master');
  t.like(await health.json(), { status: 'ok', redis: 'ok', workers: 2 }, 'BullMQ finds both coordinators on the cluster');
});

/** A key of a running request's log (claimed, no result yet) on the master that holds the most of them, and how many it holds. */
async function runningLogs(): Promise<[string, number]> {
  const inFlight = [...(await redis.keysByNode('cascade:{req-*'))].map(([port, keys]): [number, string[]] => [port, keys.filter((k) => k.endsWith(':fence') && !keys.includes(k.replace(/:fence$/, ':result')))]);
  const [port, fences] = inFlight.sort((a, b) => b[1].length - a[1].length)[0]!;
  if (!fences.length) throw new Error(`no master holds the log of a running request (the most: ${port})`);
  return [fences[0]!, fences.length];
}
const runningLog = async () => (await runningLogs())[0];

test.serial('redis cluster - a master holding request logs is killed mid-request: its replica takes over and every request completes with target-only text, nothing lost', async (t) => {
  let failover: { killed: number; promoted: number; inFlight: number } | undefined;
  const { texts, tokens } = await streams(48, async () => {
    const [key, inFlight] = await runningLogs();
    failover = { ...(await redis.cluster!.failover(key)), inFlight };
  });
  t.log(`killed master 127.0.0.1:${failover?.killed} (logs of running requests there: ${failover?.inFlight}); 127.0.0.1:${failover?.promoted} took over`);
  t.truthy(failover);
  t.not(failover!.promoted, failover!.killed);
  for (const [i, p] of PROMPTS.entries()) t.is(texts[i], await targetOnly(p, 48), p);
  t.deepEqual(tokens, PROMPTS.map(() => 48), 'every token, none twice');
});

test.serial('redis cluster - the master holding the BullMQ queue is killed mid-request: every request completes with target-only text', async (t) => {
  let failover: { killed: number; promoted: number } | undefined;
  const queueKey = `${queuePrefix(parseRedis(redis.url))}:${QUEUE_NAME}:id`;
  const { texts, tokens } = await streams(48, async () => {
    failover = await redis.cluster!.failover(queueKey);
  });
  t.log(`killed the queue's master 127.0.0.1:${failover?.killed}; 127.0.0.1:${failover?.promoted} took over`);
  for (const [i, p] of PROMPTS.entries()) t.is(texts[i], await targetOnly(p, 48), p);
  t.deepEqual(tokens, PROMPTS.map(() => 48));
  const after = await client.completions.create({ model: family.target, prompt: PROMPTS[0]!, max_tokens: 8, temperature: 0 });
  t.is(after.choices[0]!.text, await targetOnly(PROMPTS[0]!, 8), 'the cluster serves on after both failovers');
});

test.serial('redis cluster - masters freeze mid-request (a partition: connections open, no answer), the one holding request logs and then the queue\'s: every request completes with target-only text', async (t) => {
  for (const which of ['logs', 'queue'] as const) {
    let freeze: Awaited<ReturnType<LocalRedisCluster['freeze']>> | undefined;
    const t0 = Date.now();
    const { texts, tokens } = await streams(32, async () => {
      const key = which === 'queue' ? `${queuePrefix(parseRedis(redis.url))}:${QUEUE_NAME}:id` : await runningLog();
      freeze = await redis.cluster!.freeze(key);
    });
    t.log(`froze the ${which}' master 127.0.0.1:${freeze?.frozen}; 127.0.0.1:${freeze?.promoted} took over; the requests took ${Date.now() - t0} ms`);
    for (const [i, p] of PROMPTS.entries()) t.is(texts[i], await targetOnly(p, 32), `${which}: ${p}`);
    t.deepEqual(tokens, PROMPTS.map(() => 32));
    await freeze?.thaw();
  }
});
