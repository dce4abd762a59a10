import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import type { Worker } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { ModelActor } from '../src/actors/model-actor.ts';
import { Coordinator, openQueue, startCoordinatorWorker } from '../src/cluster/coordinator.ts';
import { apiFinishReason, buildGateway } from '../src/cluster/gateway/index.ts';
import { encode } from '../src/cluster/messages.ts';
import { subjects } from '../src/cluster/transport.ts';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { GatewayMetrics } from '../src/cluster/metrics.ts';
import { NatsTransport } from '../src/cluster/nats-transport.ts';
import { RedisConnection } from '../src/cluster/redis-connection.ts';
import { TokenLog } from '../src/cluster/redis-store.ts';
import { argmax } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { family, MODELS_DIR } from './helpers/family.ts';

/**
 * Chat streaming as the official openai client reads it, against the real gateway, coordinator
 * (a BullMQ worker), actor, NATS and Redis. The model is an in-memory one whose end-of-sequence
 * token is its greedy choice after the test's prompt: the bundled target almost never ends a reply
 * at once (p(EOS) after "assistant:" is at most 2e-4 over the prompts tried), and an empty reply is
 * the case under test.
 */
const MESSAGES = [{ role: 'user' as const, content: 'Say nothing.' }];
const tokenizer = TextTokenizer.load(join(MODELS_DIR, family.target, 'tokenizer.json'));
const model = new MemoryModelSession({ name: 'target', vocabSize: 8192, order: 8, seed: 21 });
const EOS = argmax(model.nextLogits(tokenizer.encodeChat(MESSAGES)));

let nats: LocalServer;
let redis: LocalServer;
const transports: NatsTransport[] = [];
let shards: RedisConnection;
let actor: ModelActor;
let worker: Worker;
let gateway: FastifyInstance;
let client: OpenAI;
const queue = () => openQueue(redis.url);
let gatewayQueue: ReturnType<typeof queue>;

test.before(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const connect = async () => {
    const t = await NatsTransport.connect({ servers: nats.url });
    transports.push(t);
    return t;
  };
  shards = new RedisConnection(redis.url);
  actor = new ModelActor(await connect(), model, { target: true }).start();
  const coordinator = new Coordinator({ transport: await connect(), log: new TokenLog(shards), family: { target: 'target', eosIds: [EOS] } });
  worker = startCoordinatorWorker(coordinator, { redis: redis.url });
  await worker.waitUntilReady();
  gatewayQueue = queue();
  gateway = buildGateway({
    transport: await connect(),
    queue: gatewayQueue,
    log: new TokenLog(shards),
    tokenizer,
    metrics: new GatewayMetrics(),
    model: { target: 'target', drafters: [] },
    defaultMode: 'ar',
  });
  await Promise.all(transports.map((t) => t.flush()));
  client = new OpenAI({ baseURL: `${await gateway.listen({ host: '127.0.0.1', port: 0 })}/v1`, apiKey: 'none', maxRetries: 0 });
});

test.after.always(async () => {
  await gateway?.close();
  await gatewayQueue?.close();
  await worker?.close();
  await actor?.stop();
  await Promise.all(transports.map((t) => t.close()));
  await shards?.close();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

test('gateway - a streamed chat reply whose first token is EOS still names its role: the openai client assembles an empty assistant message', async (t) => {
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  const stream = client.chat.completions.stream({ model: 'target', messages: MESSAGES, max_tokens: 8, temperature: 0 }).on('chunk', (c) => chunks.push(c));
  const done = await stream.finalChatCompletion();
  t.is(done.choices[0]!.message.role, 'assistant');
  t.is(done.choices[0]!.message.content ?? '', '', 'no text (the client reports it as null)');
  t.is(done.choices[0]!.finish_reason, 'stop');
  t.deepEqual(chunks[0]!.choices[0]!.delta, { role: 'assistant', content: '' }, 'the first chunk carries the role, as OpenAI sends it');
});

test('gateway - a streamed chat reply with text names its role once, in the first chunk', async (t) => {
  const messages = [{ role: 'user' as const, content: 'Say something.' }];
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  const done = await client.chat.completions.stream({ model: 'target', messages, max_tokens: 6, temperature: 0 }).on('chunk', (c) => chunks.push(c)).finalChatCompletion();
  t.is(done.choices[0]!.message.role, 'assistant');
  const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  t.true(text.length > 0);
  t.is(done.choices[0]!.message.content, text);
  t.is(chunks.filter((c) => c.choices[0]?.delta.role).length, 1, 'one chunk names the role');
});

// Fault: a request cancelled before EOS or max_tokens was reported as `length`, which clients read
// as "the reply was cut, ask for more".
test('gateway - a request cancelled mid-stream ends with finish_reason abort, never length', async (t) => {
  const messages = [{ role: 'user' as const, content: 'Tell a long story.' }];
  const greedy: number[] = [];
  const context = tokenizer.encodeChat(messages);
  for (let i = 0; i < 3000; i++) greedy.push(argmax(model.nextLogits([...context, ...greedy])));
  t.false(greedy.includes(EOS), 'precondition: the reply runs to max_tokens unless cancelled');
  const canceller = await NatsTransport.connect({ servers: nats.url });
  transports.push(canceller);
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  const stream = client.chat.completions.stream({ model: 'target', messages, max_tokens: 3000, temperature: 0 });
  stream.on('chunk', (c) => {
    if (chunks.push(c) !== 2) return;
    const requestId = `req-${c.id.slice('chatcmpl-'.length)}`;
    canceller.publish(subjects.cancel(requestId), encode({ type: 'close', session: requestId }));
  });
  const done = await stream.finalChatCompletion();
  t.is(done.choices[0]!.finish_reason as string, 'abort');
  t.true((done.usage?.completion_tokens ?? chunks.length) < 3000, 'the request stopped early');
});

test("gateway - a request without sampling settings takes the model's generation_config.json defaults; a model without a chat template refuses chats with a 400", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-gw-'));
  copyFileSync(join(MODELS_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  const bare = buildGateway({
    transport: transports[2]!,
    queue: gatewayQueue,
    log: new TokenLog(shards),
    tokenizer: TextTokenizer.load(join(dir, 'tokenizer.json')),
    metrics: new GatewayMetrics(),
    model: { target: 'target', drafters: [], generation: { temperature: 0 } },
    defaultMode: 'ar',
  });
  try {
    const prompt = 'def main():';
    const context = tokenizer.encodePrompt(prompt);
    const greedy: number[] = [];
    while (greedy.length < 6) {
      const next = argmax(model.nextLogits([...context, ...greedy]));
      if (next === EOS) break;
      greedy.push(next);
    }
    const done = await bare.inject({ method: 'POST', url: '/v1/completions', payload: { prompt, max_tokens: 6 } });
    t.is(done.statusCode, 200);
    t.is(done.json().choices[0].text, tokenizer.decode(greedy), 'greedy, as the model says, not the API default temperature 1');
    const chat = await bare.inject({ method: 'POST', url: '/v1/chat/completions', payload: { messages: MESSAGES, max_tokens: 4 } });
    t.is(chat.statusCode, 400);
    t.regex(chat.json().error.message, /has no chat template/);
    t.is(chat.json().error.param, 'messages');
  } finally {
    await bare.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('gateway - a long prompt is tokenized off the event loop with the same ids; one certainly past the context is a 400 before any tokenizing', async (t) => {
  // 20,000 spaces are about 625 tokens: long enough for the worker thread (OFF_THREAD_CHARS), short enough to serve
  const prompt = `${' '.repeat(20_000)}def main():`;
  const messages = [{ role: 'user' as const, content: `${' '.repeat(20_000)}Hello.` }];
  const done = await gateway.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'target', prompt, max_tokens: 2, temperature: 0 } });
  t.is(done.statusCode, 200, done.body);
  t.is(done.json().usage.prompt_tokens, tokenizer.encodePrompt(prompt).length);
  const chat = await gateway.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'target', messages, max_tokens: 2, temperature: 0 } });
  t.is(chat.statusCode, 200, chat.body);
  t.is(chat.json().usage.prompt_tokens, tokenizer.encodeChat(messages).length);
  const bounded = buildGateway({ transport: transports[2]!, queue: gatewayQueue, log: new TokenLog(shards), tokenizer, metrics: new GatewayMetrics(), model: { target: 'target', drafters: [], maxPositions: 2048 }, defaultMode: 'ar' });
  try {
    const huge = await bounded.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'target', prompt: 'x'.repeat(3_000_000), max_tokens: 2 } });
    t.is(huge.statusCode, 400);
    t.regex(huge.json().error.message, /^the prompt \(3000000 characters, at least \d+ tokens\) leaves no room for a completion in the model's context of 2048 tokens$/);
    t.is(huge.json().error.param, 'prompt');
  } finally {
    await bounded.close();
  }
});

test('gateway - the API finish reason of each engine finish reason', (t) => {
  t.is(apiFinishReason('stop'), 'stop');
  t.is(apiFinishReason('length'), 'length');
  t.is(apiFinishReason('cancelled'), 'abort');
  t.throws(() => apiFinishReason('other'));
});

test.serial('gateway - the n choices of one request prefill its prompt once: choices 1.. start after choice 0 and copy its KV on the verifier', async (t) => {
  const content = 'Write a Python function that reads a text file line by line, counts the words in each line, skips blank lines and comments, and returns the totals per line as a list of integers.';
  const promptTokens = tokenizer.encodeChat([{ role: 'user', content }]).length;
  t.true(promptTokens >= 40, `the prompt is long enough to reuse (${promptTokens} tokens)`);
  const before = { ...model.prefixCache };
  const r = await client.chat.completions.create({ model: 'target', messages: [{ role: 'user', content }], max_tokens: 6, n: 3, temperature: 0.8, seed: 3 });
  t.is(r.choices.length, 3);
  t.is(model.prefixCache.hits - before.hits, 2, 'choices 1 and 2 each copied a prefix');
  t.true(model.prefixCache.reusedTokens - before.reusedTokens >= 2 * (promptTokens - 1), 'the whole prompt but the token fed for its logits');
});
