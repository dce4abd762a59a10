import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';
import { MODELS_DIR } from './helpers/family.ts';

/**
 * A large vocabulary over the wire (issue: a draft actor's float32 q rows at 152k tokens were past
 * NATS's payload limit). The random-weight Qwen2-like exports of test/fixtures/hf/qwen-152k, made by
 * tools/train/export.py: a target padded to 152064 ids and a drafter of 151936, over one tokenizer
 * of 151936. A real cluster (nats-server, redis-server, actors and coordinator as processes, the
 * gateway here) serves them; the official openai client asks.
 */
const FIXTURE = new URL('./fixtures/hf/qwen-152k', import.meta.url).pathname;
const TARGET = join(FIXTURE, 'target');
const DRAFT = join(FIXTURE, 'draft');
const PROMPT = 'def parse(argv):\n    ';

let nats: LocalServer;
let small: LocalServer;
let redis: LocalServer;
let gateway: Role & { url: string };
let tight: Role & { url: string };
const roles: RoleProcess[] = [];
const models = { models: MODELS_DIR, model: TARGET, draftModel: [DRAFT] };

test.before(async () => {
  // `small`: a NATS server whose payload limit (32 KiB) cannot carry 30 sampled drafts' rows
  [nats, small, redis] = await Promise.all([startNats(), startNats({ maxPayload: 32_768 }), startRedis()]);
  roles.push(
    ...(await Promise.all([
      spawnRole(['actor', 'verify', '--model', TARGET, '--nats', nats.url, '--instance', 'v0']),
      spawnRole(['actor', 'draft', '--model', DRAFT, '--nats', nats.url, '--instance', 'd0']),
      spawnRole(['coordinator', '--model', TARGET, '--draft-model', DRAFT, '--nats', nats.url, '--redis', redis.url]),
    ])),
  );
  gateway = await startGatewayRole({ ...models, nats: nats.url, redis: [redis.url], port: 0 });
  tight = await startGatewayRole({ ...models, nats: small.url, redis: [redis.url], port: 0 });
});

test.after.always(async () => {
  await stopCluster({ gateways: [gateway, tight], roles, servers: [nats, small, redis] });
});

const client = () => new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
type Usage = { completion_tokens: number; cascade: { drafted_tokens: number; target_passes: number } };

test.serial('152k vocabulary - sampled cluster requests complete with the draft actor drafting: its q rows travel sparse over NATS', async (t) => {
  for (const [seed, k_matrix] of [[1, [[4]]], [2, [[30]]]] as const) {
    const r = (await client().completions.create({ model: 'target', prompt: PROMPT, max_tokens: 24, temperature: 1, seed, cascade: { mode: 'sd', k_matrix, verification: 'rejection' } } as never)) as unknown as OpenAI.Completions.Completion;
    const usage = r.usage as unknown as Usage;
    t.is(r.choices[0]!.finish_reason, usage.completion_tokens === 24 ? 'length' : 'stop');
    t.true(usage.completion_tokens >= 1);
    t.true(usage.cascade.drafted_tokens > 0, `K ${JSON.stringify(k_matrix)}: the drafter drafted (${usage.cascade.drafted_tokens} tokens)`);
  }
});

test.serial('152k vocabulary - greedy output through the cluster equals target-only decoding', async (t) => {
  const session = await OrtModelSession.open({ dir: TARGET });
  try {
    const tokenizer = TextTokenizer.forModel(session.spec);
    const want = await generateAutoregressive(session, { promptIds: tokenizer.encodePrompt(PROMPT), maxTokens: 16, sampling: GREEDY, seed: 0 });
    const r = await client().completions.create({ model: 'target', prompt: PROMPT, max_tokens: 16, temperature: 0, cascade: { mode: 'sd', k_matrix: [[4]] } } as never);
    t.is((r as unknown as OpenAI.Completions.Completion).choices[0]!.text, tokenizer.decode(want.tokenIds));
  } finally {
    await session.close();
  }
});

test.serial('152k vocabulary - under rejection sampling a k_matrix whose sampled drafts would exceed the payload limit gets a clear 400; under invariant verification no q rows travel and it is served', async (t) => {
  const ask = (body: object) => fetch(`${tight.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'target', prompt: PROMPT, max_tokens: 8, ...body }) });
  const refused = await ask({ temperature: 1, cascade: { mode: 'sd', k_matrix: [[30]], verification: 'rejection' } });
  t.is(refused.status, 400);
  const { error } = (await refused.json()) as { error: { message: string; param: string } };
  t.is(error.param, 'cascade.k_matrix');
  t.regex(error.message, /drafts up to 30 tokens a round.*over the 16384 bytes.*32768-byte payload limit.*K entries of at most 7/);
  // drafter-invariant verification sends drafts as token ids only: the tight server serves the same K
  const served = await ask({ temperature: 1, seed: 3, cascade: { mode: 'sd', k_matrix: [[30]], verification: 'invariant' } });
  t.is(served.status, 200);
  // the same K on the 1 MiB server is served (the sampled test above), and so is another request now
  const r = await client().completions.create({ model: 'target', prompt: PROMPT, max_tokens: 4, temperature: 1, seed: 5, cascade: { mode: 'sd', k_matrix: [[30]], verification: 'rejection' } } as never);
  t.true((r as unknown as OpenAI.Completions.Completion).usage!.completion_tokens >= 1);
});
