import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { findPython } from '../src/cli/quantize.ts';
import { GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { loadModelSpec } from '../src/models/config.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { cascade } from './helpers/cli.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';
import { dirOf, MODELS_DIR } from './helpers/family.ts';
import { targetOnlyText } from './helpers/oracle.ts';

/**
 * A quantized target in the cluster (issue 26): draft-l2's `cascade quantize --bits 8` copy
 * (accuracy level 4, int8 compute, which the verify actor runs batch-invariant by default:
 * SessionOptions.batchInvariant) verified by a verify actor, with two draft actors below it: the same
 * model's 4-bit copy at accuracy level 4 (a quantized copy of the model drafting for it, as
 * `--self-draft` does embedded) and draft-l1; MaG in the coordinator. Real nats-server,
 * redis-server and role processes, driven with the official openai client. The oracle is target-only
 * decoding of the quantized target in this process: greedy, and seeded sampling under drafter-
 * invariant verification, must give its tokens exactly.
 */
const python = (() => {
  try {
    return findPython();
  } catch (err) {
    console.warn(`test/quantized-cluster.test.ts skipped: ${(err as Error).message}`);
    return undefined;
  }
})();
const maybe = python ? test.serial : test.skip;

const API_KEY = 'quantized-cluster-key';
const scratch = mkdtempSync(join(tmpdir(), 'cascade-quantized-cluster-'));
/** Folder names are model names in the cluster: the target, and its copy drafting. */
const TARGET = join(scratch, 'l2-int8');
const COPY = join(scratch, 'l2-int4-draft');
const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n';

let nats: LocalServer;
let redis: LocalServer;
const roles: RoleProcess[] = [];
let gateway: (Role & { url: string }) | undefined;
let client: OpenAI;
let tokenizer: TextTokenizer;

test.before(async () => {
  if (!python) return;
  await Promise.all([
    cascade('quantize', '--model', dirOf('draft-l2'), '--out', TARGET, '--bits', '8'),
    cascade('quantize', '--model', dirOf('draft-l2'), '--out', COPY, '--bits', '4', '--quantize-head'),
  ]);
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const models = ['--models', MODELS_DIR];
  const actor = (kind: 'verify' | 'draft', model: string) =>
    spawnRole(['actor', kind, '--model', model, ...models, '--nats', nats.url, '--instance', `${kind}-${roles.length}`, '--idle-ms', '20000']).then((r) => (roles.push(r), r));
  const choice = ['--model', TARGET, '--draft-model', COPY, '--draft-model', 'draft-l1', ...models];
  await Promise.all([actor('verify', TARGET), actor('draft', COPY), actor('draft', 'draft-l1'), spawnRole(['coordinator', ...choice, '--nats', nats.url, '--redis', redis.url]).then((r) => roles.push(r))]);
  gateway = await startGatewayRole({ models: MODELS_DIR, model: TARGET, draftModel: [COPY, 'draft-l1'], nats: nats.url, redis: [redis.url], port: 0, apiKeys: [API_KEY] });
  client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  tokenizer = TextTokenizer.forModel(loadModelSpec(TARGET));
});

test.after.always(async () => {
  await stopCluster({ gateways: [gateway], roles, servers: [nats, redis], scratch });
});

/** Target-only decoding of the quantized target in this process (test/helpers/oracle.ts). */
const targetOnly = (maxTokens: number, sampling: SamplingParams, seed: number): Promise<string> => targetOnlyText(TARGET, tokenizer, PROMPT, maxTokens, sampling, seed);

type Usage = OpenAI.CompletionUsage & { cascade?: { drafted_tokens: number; accepted_tokens: number } };

maybe('quantized cluster - an 8-bit target (accuracy level 4, batch-invariant) with a 4-bit copy of the same model and draft-l1 drafting: greedy csd and seeded sampled requests give target-only decoding\'s text', async (t) => {
  const greedy = await client.completions.create({ model: 'l2-int8', prompt: PROMPT, max_tokens: 32, temperature: 0, cascade: { mode: 'csd', k_matrix: [[3, 5, 6], [0, 2, 4], [0, 0, 2]] } } as never);
  t.is((greedy as OpenAI.Completions.Completion).choices[0]!.text, await targetOnly(32, GREEDY, 0));
  const usage = (greedy as OpenAI.Completions.Completion).usage as Usage;
  t.true(usage.cascade!.accepted_tokens > 0, 'drafts were accepted');
  // the verify actor resolved auto to on for its level-4 graph; the draft actors run theirs as they are
  const ready = roles.map((r) => r.output()).join('');
  t.regex(ready, /verify actor l2-int8\/verify-\d \(cpu, KV on the host, batch-invariant\)/);
  t.regex(ready, /draft actor l2-int4-draft\/draft-\d \(cpu, KV on the host\)/);
  const sampled = await client.completions.create({ model: 'l2-int8', prompt: PROMPT, max_tokens: 24, temperature: 1, top_k: 50, seed: 31, cascade: { mode: 'csd' } } as never);
  t.is((sampled as OpenAI.Completions.Completion).choices[0]!.text, await targetOnly(24, { temperature: 1, topK: 50, topP: 1 }, 31));
});
