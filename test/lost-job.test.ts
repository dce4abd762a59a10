import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { openQueue, queueConnection, QUEUE_NAME, type JobData, type RequestOutcome } from '../src/cluster/coordinator.ts';
import { RedisConnection } from '../src/cluster/redis-connection.ts';
import { TokenLog } from '../src/cluster/redis-store.ts';
import { startNats, type LocalServer } from '../src/cluster/local-servers.ts';
import { startCoordinatorRole, startGatewayRole } from '../src/cluster/roles.ts';
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
const sessions = new FamilySessions(family, {});

test.before(async () => {
  [nats, redis] = await Promise.all([startNats(), startTestRedis()]);
});

test.after.always(async () => {
  await Promise.all([nats?.stop(), redis?.stop()]);
  await sessions.close();
});

test.serial('lost job - a request whose job vanished from the queue is queued again and completes with target-only decoding\'s text', async (t) => {
  const gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, requestTimeoutMs: 60_000 });
  t.teardown(() => gateway.stop());
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
    const coordinator = await startCoordinatorRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], verifier: {} });
    t.teardown(() => coordinator.stop());
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

/**
 * A job that finished while its ending was lost: the 'done' (or 'failed') message on NATS, and the
 * result in the log (a failover of the log's master). A BullMQ worker of the test's own stands in
 * for the coordinator and does exactly what survives such a double loss: it records target-only
 * decoding's tokens (or some of them) in the real request log and completes the job with its
 * outcome, publishing nothing and writing no result; or it fails the job for good.
 */
async function finishedJob(t: import('ava').ExecutionContext, work: (data: JobData, log: TokenLog, oracle: number[]) => Promise<RequestOutcome>): Promise<{ gateway: Awaited<ReturnType<typeof startGatewayRole>>; oracle: number[]; pending: Promise<unknown>; worker: Worker }> {
  const gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, requestTimeoutMs: 60_000 });
  t.teardown(() => gateway.stop());
  const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));
  const oracle = (await generateAutoregressive(await sessions.get(family.target), { promptIds: tokenizer.encode(PROMPT), maxTokens: 16, sampling: GREEDY, seed: 0 })).tokenIds;
  const connection = new RedisConnection(redis.url);
  const log = new TokenLog(connection);
  const { connection: queueClient, prefix, close } = queueConnection(redis.url);
  let took = 0;
  const worker = new Worker(QUEUE_NAME, async (job: Job) => (took++ ? undefined : work(job.data as JobData, log, oracle)), { connection: queueClient, prefix });
  t.teardown(async () => {
    await worker.close();
    await close();
    await connection.close();
  });
  const pending = client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 16, temperature: 0, cascade: { mode: 'ar' } } as never);
  pending.catch(() => undefined);
  return { gateway, oracle, pending, worker };
}

const PROMPT = 'def parse_args(argv):\n';
const outcome = (generatedTokens: number): RequestOutcome => ({ finishReason: 'length', generatedTokens, resumedFrom: 0, failovers: [], queueSeconds: 0, stats: undefined });
const decodeText = (ids: readonly number[]) => TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json')).decode(ids);

test.serial('lost ending - a request whose job completed while its done message and result were lost ends with the job\'s outcome and the logged text', async (t) => {
  const t0 = Date.now();
  const { oracle, pending } = await finishedJob(t, async (data, log, tokens) => {
    await log.append(data.requestId, await log.claim(data.requestId), 0, tokens);
    return outcome(tokens.length);
  });
  const done = (await pending) as OpenAI.Completions.Completion;
  t.is(done.choices[0]!.text, decodeText(oracle));
  t.is(done.usage?.completion_tokens, 16);
  t.true(Date.now() - t0 < 30_000, 'well before the request timeout');
});

test.serial('lost ending - a completed job whose log lost tokens with its result is run again and ends with target-only decoding\'s text', async (t) => {
  let completed!: (id: string) => void;
  const jobDone = new Promise<string>((resolve) => (completed = resolve));
  const { gateway, oracle, pending, worker } = await finishedJob(t, async (data, log, tokens) => {
    await log.append(data.requestId, await log.claim(data.requestId), 0, tokens.slice(0, 6));
    return outcome(tokens.length);
  });
  worker.on('completed', (job) => completed(job.id!));
  const queue = openQueue(redis.url);
  t.teardown(() => queue.close());
  t.is(await queue.getJobState(await jobDone), 'completed', 'the stand-in completed this request\'s job');
  await worker.close();
  const coordinator = await startCoordinatorRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], verifier: {} });
  t.teardown(() => coordinator.stop());
  const done = (await pending) as OpenAI.Completions.Completion;
  t.is(done.choices[0]!.text, decodeText(oracle));
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  t.regex(metrics, /^cascade_jobs_requeued_total 1$/m);
});

test.serial('lost ending - a request whose job failed for good while its failed message was lost fails with the job\'s reason', async (t) => {
  const t0 = Date.now();
  const { pending } = await finishedJob(t, async () => {
    throw new UnrecoverableError('the stand-in refused the request');
  });
  const err = await t.throwsAsync(pending);
  t.is((err as { status?: number }).status, 500);
  t.regex(err!.message, /generation failed: the stand-in refused the request/);
  t.true(Date.now() - t0 < 30_000, 'well before the request timeout');
});
