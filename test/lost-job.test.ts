import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { openQueue } from '../src/cluster/coordinator.ts';
import { startNats, type LocalServer } from '../src/cluster/local-servers.ts';
import { startCoordinatorRole, startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { family, MODELS_DIR } from './helpers/family.ts';
import { startTestRedis, type TestRedis } from './helpers/redis.ts';

/**
 * A job lost from the queue. Redis replicates asynchronously: a master that dies moments after a
 * write takes it along, and a job added (or moved to its retry) just before its queue's master
 * failed is gone from the promoted replica (seen in test/redis-cluster.test.ts as BullMQ's "Missing
 * key for job"). The gateway following the request finds the job gone and adds it again. Here the
 * loss is made by removing the job while no coordinator runs: a real nats-server and redis-server,
 * the gateway, then a coordinator (verifying in its own process) started once the job is gone.
 */
let nats: LocalServer;
let redis: TestRedis;
const roles: Role[] = [];
const sessions = new FamilySessions(family, {});

test.before(async () => {
  [nats, redis] = await Promise.all([startNats(), startTestRedis()]);
});

test.after.always(async () => {
  for (const r of roles.reverse()) await r.stop().catch(() => undefined);
  await Promise.all([nats?.stop(), redis?.stop()]);
  await sessions.close();
});

test('lost job - a request whose job vanished from the queue is queued again and completes with target-only decoding\'s text', async (t) => {
  const gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, requestTimeoutMs: 60_000 });
  roles.push(gateway);
  const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const queue = openQueue(redis.url);
  try {
    const prompt = 'def parse_args(argv):\n';
    const pending = client.completions.create({ model: family.target, prompt, max_tokens: 16, temperature: 0, cascade: { mode: 'ar' } } as never);
    let jobs = await queue.getJobs(['wait']);
    for (let i = 0; i < 100 && jobs.length === 0; i++) jobs = await new Promise((r) => setTimeout(r, 50)).then(() => queue.getJobs(['wait']));
    t.is(jobs.length, 1, 'the request waits in the queue');
    await jobs[0]!.remove();
    t.is(await queue.getJobState(jobs[0]!.id!), 'unknown', 'the job is gone');
    let back = 'unknown';
    for (let i = 0; i < 150 && back === 'unknown'; i++) back = await new Promise((r) => setTimeout(r, 100)).then(() => queue.getJobState(jobs[0]!.id!));
    t.is(back, 'waiting', 'the gateway added it again');
    roles.push(await startCoordinatorRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], verifier: {} }));
    const done = (await pending) as OpenAI.Completions.Completion;
    const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));
    const oracle = await generateAutoregressive(await sessions.get(family.target), { promptIds: tokenizer.encode(prompt), maxTokens: 16, sampling: GREEDY, seed: 0 });
    t.is(done.choices[0]!.text, tokenizer.decode(oracle.tokenIds));
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    t.regex(metrics, /^cascade_jobs_requeued_total 1$/m);
  } finally {
    await queue.close();
  }
});
