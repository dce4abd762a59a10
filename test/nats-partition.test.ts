import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { freePort, startNats, startNatsCluster, type LocalServer } from '../src/cluster/local-servers.ts';
import { NatsTransport } from '../src/cluster/nats-transport.ts';
import { startActorRole, startCoordinatorRole, startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { subjects } from '../src/cluster/transport.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { spawnRole, stopCluster } from './helpers/cluster.ts';
import { family, MODELS_DIR } from './helpers/family.ts';
import { startTestRedis, type TestRedis } from './helpers/redis.ts';

/**
 * A NATS server cut off mid-request. Two nats-servers joined in a NATS cluster on loopback ports, a
 * real redis-server, and the roles (a verify actor, a coordinator, the gateway) given the first
 * server's URL only: they learn the second from it. The first is then frozen (SIGSTOP), as a node
 * behind a partition is: its connections stay open and answer nothing. Every role must notice
 * (the client's pings go unanswered), move to the second server and finish the request, with
 * target-only decoding's text, long before the gateway's timeout. And a verify actor cut off for
 * good, one of two: the server must drop its queue subscription within seconds (NATS_SERVER_PINGS),
 * or it keeps its share of the requests, each waiting for the call timeout.
 */
let servers: LocalServer[];
let redis: TestRedis;
const sessions = new FamilySessions(family, {});

test.before(async () => {
  [servers, redis] = await Promise.all([startNatsCluster(2), startTestRedis()]);
});

test.after.always(async () => {
  for (const s of servers ?? []) s.process.kill('SIGCONT');
  await Promise.all([...(servers ?? []).map((s) => s.stop()), redis?.stop()]);
  await sessions.close();
});

test.serial('nats partition - the NATS server every role is connected to freezes mid-request: they move to the other server and the request ends with target-only decoding\'s text', async (t) => {
  const nats = servers[0]!.url;
  const roles: Role[] = [];
  // stopped when the test ends: this coordinator must not take the next test's jobs from the queue
  t.teardown(async () => {
    for (const r of roles.reverse()) await r.stop().catch(() => undefined);
  });
  roles.push(await startActorRole({ kind: 'verify', models: MODELS_DIR, nats, instance: 'v0' }));
  roles.push(await startCoordinatorRole({ models: MODELS_DIR, nats, redis: [redis.url] }));
  const gateway = await startGatewayRole({ models: MODELS_DIR, nats, redis: [redis.url], port: 0, requestTimeoutMs: 90_000 });
  roles.push(gateway);
  const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const lines: string[] = [];
  const watcher = await NatsTransport.connect({ servers: nats, name: 'watcher', log: (line) => lines.push(line) });
  t.teardown(() => watcher.close());
  const prompt = 'def parse_args(argv):\n';
  const warm = await client.completions.create({ model: family.target, prompt, max_tokens: 4, temperature: 0, cascade: { mode: 'ar' } } as never);
  t.truthy(warm.choices[0]!.text, 'the cluster serves before the partition');
  const t0 = Date.now();
  const stream = await client.completions.create({ model: family.target, prompt, max_tokens: 48, temperature: 0, stream: true, cascade: { mode: 'ar' } } as never);
  let text = '';
  let frozeAt: number | undefined;
  for await (const c of stream as unknown as AsyncIterable<OpenAI.Completions.Completion>) {
    text += c.choices[0]?.text ?? '';
    if (text && frozeAt === undefined) {
      frozeAt = Date.now() - t0;
      servers[0]!.process.kill('SIGSTOP');
    }
  }
  t.log(`froze ${servers[0]!.url} at ${frozeAt} ms; the request ended at ${Date.now() - t0} ms`);
  const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));
  const oracle = await generateAutoregressive(await sessions.get(family.target), { promptIds: tokenizer.encode(prompt), maxTokens: 48, sampling: GREEDY, seed: 0 });
  t.is(text, tokenizer.decode(oracle.tokenIds));
  const t1 = Date.now();
  const after = await client.completions.create({ model: family.target, prompt, max_tokens: 8, temperature: 0, cascade: { mode: 'ar' } } as never);
  t.is(after.choices[0]!.text, tokenizer.decode(oracle.tokenIds.slice(0, 8)), 'the cluster serves on over the other server');
  // the frozen server's interest in the queue group stays: Debian's nats-server (2.9.10) never pings a
  // route that carries messages (nats-io/nats-server#4014), and heartbeats flow. An open through the
  // queue group would go there about half the time and wait the call timeout (10 s); the coordinator
  // opens on the actor it hears instead (RemoteLevel.pick)
  t.true(Date.now() - t1 < 5000, `the next request waits for no timeout (${Date.now() - t1} ms)`);
  t.log(lines);
  t.true(lines.some((l) => /NATS \(watcher\): the server did not answer 2 pings 2000 ms apart; taking the connection for stale/.test(l)), 'the stale connection is logged');
  t.true(lines.some((l) => l === `NATS (watcher): connected to ${servers[1]!.url.replace('nats://', '')}`), 'and the server it moved to');
});

test.serial('nats partition - a verify actor cut off for good: the NATS server drops it within seconds, and every later request goes to the other instance without a timeout', async (t) => {
  const nats = await startNats();
  const common = ['--models', MODELS_DIR, '--nats', nats.url, '--idle-ms', '20000'];
  const actors = await Promise.all(['v0', 'v1'].map((id) => spawnRole(['actor', 'verify', ...common, '--instance', id])));
  const coordinator = await startCoordinatorRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url] });
  const gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, requestTimeoutMs: 90_000 });
  t.teardown(async () => {
    for (const a of actors) a.child.kill('SIGCONT');
    await stopCluster({ gateways: [gateway], roles: [coordinator, ...actors], servers: [nats] });
  });
  const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const prompt = 'class Stack:\n    def __init__(self):\n';
  const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));
  const want = tokenizer.decode((await generateAutoregressive(await sessions.get(family.target), { promptIds: tokenizer.encode(prompt), maxTokens: 8, sampling: GREEDY, seed: 0 })).tokenIds);
  const ask = async () => {
    const t0 = Date.now();
    const r = await client.completions.create({ model: family.target, prompt, max_tokens: 8, temperature: 0, cascade: { mode: 'ar' } } as never);
    return { text: r.choices[0]!.text, ms: Date.now() - t0 };
  };
  t.is((await ask()).text, want);
  actors[0]!.child.kill('SIGSTOP');
  // the server pings every 2 s and drops a peer after 2 unanswered (NATS_SERVER_PINGS): 4-6 s
  await new Promise((r) => setTimeout(r, 8000));
  const after = [];
  for (let i = 0; i < 6; i++) after.push(await ask());
  t.log(after.map((a) => `${a.ms} ms`).join(', '));
  for (const a of after) t.is(a.text, want);
  // an open sent to the frozen instance would wait for the call timeout (10 s)
  t.true(after.every((a) => a.ms < 5000), 'no request waited on the frozen instance');
  // the coordinator opens sessions on the instances it hears, so the requests above would avoid the
  // frozen one whatever the server's pings; the queue group itself (placement while none is heard)
  // must have dropped it: of 8 requests on it, each would go to the frozen member half the time
  const probe = await NatsTransport.connect({ servers: nats.url, name: 'probe' });
  t.teardown(() => probe.close());
  const answered = await Promise.all(Array.from({ length: 8 }, () => probe.request(subjects.open(family.target), Uint8Array.of(0), { timeoutMs: 2000 }).then(() => true, () => false)));
  t.deepEqual(answered, Array(8).fill(true), 'every request on the queue group is answered (a malformed frame gets an error reply)');
});

test.serial('nats partition - the only verify actor stops answering for 12 s: a request sent meanwhile waits for it and ends with target-only decoding\'s text', async (t) => {
  const nats = await startNats();
  const actor = await spawnRole(['actor', 'verify', '--models', MODELS_DIR, '--nats', nats.url, '--idle-ms', '20000', '--instance', 'v0']);
  const healthPort = await freePort();
  const coordinator = await startCoordinatorRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], healthPort });
  const gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, requestTimeoutMs: 90_000 });
  t.teardown(async () => {
    actor.child.kill('SIGCONT');
    await stopCluster({ gateways: [gateway], roles: [coordinator, actor], servers: [nats] });
  });
  const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const prompt = 'import os\n\ndef walk(root):\n';
  const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));
  const want = tokenizer.decode((await generateAutoregressive(await sessions.get(family.target), { promptIds: tokenizer.encode(prompt), maxTokens: 8, sampling: GREEDY, seed: 0 })).tokenIds);
  const ask = () => client.completions.create({ model: family.target, prompt, max_tokens: 8, temperature: 0, cascade: { mode: 'ar' } } as never).then((r) => r.choices[0]!.text);
  t.is(await ask(), want);
  actor.child.kill('SIGSTOP');
  setTimeout(() => actor.child.kill('SIGCONT'), 12_000).unref();
  // one request while NATS still routes to the silent actor (its call times out), one after NATS dropped it (no responders)
  const early = ask();
  await new Promise((r) => setTimeout(r, 7000));
  const late = ask();
  t.is(await early, want);
  t.is(await late, want);
  const metrics = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
  const retried = /^cascade_request_attempts_failed_total\{error="LevelUnavailableError",final="false"[^}]*\} (\d+)$/m.exec(metrics);
  t.true(Number(retried?.[1]) >= 2, `the coordinator counts the retried attempts:\n${metrics.split('\n').filter((l) => l.includes('attempts_failed')).join('\n')}`);
  t.notRegex(metrics, /^cascade_request_attempts_failed_total\{[^}]*final="true"/m, 'and no request failed');
  const calls = metrics.split('\n').filter((l) => l.includes('calls_failed')).join('\n');
  const timedOut = /^cascade_actor_calls_failed_total\{kind="verify",reason="timeout"[^}]*\} (\d+)$/m.exec(metrics);
  t.true(Number(timedOut?.[1]) >= 1, `the coordinator counts the verify calls that timed out:\n${calls}`);
  // a lone actor has no others whose heartbeats would show its silence (ActorLiveness): its calls keep the timeout
  t.notRegex(metrics, /^cascade_actor_calls_failed_total\{[^}]*reason="silent"/m, `and none as silent:\n${calls}`);
});
