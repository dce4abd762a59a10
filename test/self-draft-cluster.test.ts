import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { findPython, selfDraftCopy } from '../src/cli/quantize.ts';
import { resolveModels } from '../src/models/model-choice.ts';
import { GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { fails } from './helpers/cli.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';
import { dirOf, MODELS_DIR } from './helpers/family.ts';
import { targetOnlyText } from './helpers/oracle.ts';

/**
 * `--self-draft` in a cluster (issue 26): a draft actor started with `--self-draft int4` hosts the
 * target's own 4-bit copy, made once into the cache, and a coordinator and a gateway started with
 * the same flag name it first among the drafters without making it. draft-l2's folder is the target here (an export,
 * served as `draft-l2`, so its copy is `draft-l2-int4`), draft-l1 drafts below the copy, MaG in the
 * coordinator. Real nats-server, redis-server and role processes, driven with the official openai
 * client. The oracle is target-only decoding of draft-l2 in this process: greedy, and seeded sampling
 * under drafter-invariant verification, must give its tokens exactly.
 */
const python = (() => {
  try {
    return findPython();
  } catch (err) {
    console.warn(`test/self-draft-cluster.test.ts skipped: ${(err as Error).message}`);
    return undefined;
  }
})();
const maybe = python ? test.serial : test.skip;

const API_KEY = 'self-draft-cluster-key';
const scratch = mkdtempSync(join(tmpdir(), 'cascade-self-draft-cluster-'));
const CACHE = join(scratch, 'cache');
const TARGET = dirOf('draft-l2');
const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n';

let nats: LocalServer;
let redis: LocalServer;
const roles: RoleProcess[] = [];
let gateway: (Role & { url: string }) | undefined;
let client: OpenAI;
let tokenizer: TextTokenizer;

test.before(async () => {
  if (!python) return;
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const flags = ['--models', MODELS_DIR, '--nats', nats.url];
  const spawned = (args: string[]) => spawnRole(args).then((r) => (roles.push(r), r));
  // the draft actor makes the copy; the coordinator and the gateway only name it, so they start beside it
  await Promise.all([
    spawned(['actor', 'draft', '--model', TARGET, '--self-draft', 'int4', '--self-draft-cache', CACHE, ...flags, '--instance', 'copy-0', '--idle-ms', '20000']),
    spawned(['actor', 'verify', '--model', TARGET, ...flags, '--instance', 'verify-0', '--idle-ms', '20000']),
    spawned(['actor', 'draft', '--model', 'draft-l1', ...flags, '--instance', 'l1-0', '--idle-ms', '20000']),
    spawned(['coordinator', '--model', TARGET, '--draft-model', 'draft-l1', '--self-draft', 'int4', ...flags, '--redis', redis.url]),
  ]);
  gateway = await startGatewayRole({ models: MODELS_DIR, model: TARGET, draftModel: ['draft-l1'], selfDraft: 'int4', nats: nats.url, redis: [redis.url], port: 0, apiKeys: [API_KEY] });
  client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  tokenizer = TextTokenizer.load(join(MODELS_DIR, 'tokenizer.json'));
});

test.after.always(async () => {
  await stopCluster({ gateways: [gateway], roles, servers: [nats, redis], scratch });
});

/** Target-only decoding of the target in this process (test/helpers/oracle.ts). */
const targetOnly = (maxTokens: number, sampling: SamplingParams, seed: number): Promise<string> => targetOnlyText(TARGET, tokenizer, PROMPT, maxTokens, sampling, seed);

type Usage = OpenAI.CompletionUsage & { cascade?: { drafted_tokens: number; accepted_tokens: number } };
type Listed = OpenAI.Models.Model & { drafters?: string[] };

maybe('self-draft cluster - a draft actor hosts the target\'s own int4 copy, named first by the coordinator and the gateway: greedy csd and seeded sampled requests give target-only decoding\'s text', async (t) => {
  const listed = (await client.models.list()).data as Listed[];
  t.deepEqual(listed.map((m) => [m.id, m.drafters]), [['draft-l2', ['draft-l2-int4', 'draft-l1']]]);
  t.regex(roles.map((r) => r.output()).join(''), /draft actor draft-l2-int4\/copy-0 \(cpu, KV on the host\)/, 'the copy is served under <target>-int4, unpadded');
  // the copy alone at a fixed K, so that it certainly drafts (the adaptive schedule may leave it out)
  const alone = await client.completions.create({ model: 'draft-l2', prompt: PROMPT, max_tokens: 32, temperature: 0, cascade: { drafters: ['draft-l2-int4'], k_matrix: [[4]] } } as never);
  const greedyOracle = await targetOnly(32, GREEDY, 0);
  t.is((alone as OpenAI.Completions.Completion).choices[0]!.text, greedyOracle);
  const usage = (alone as OpenAI.Completions.Completion).usage as Usage;
  t.true(usage.cascade!.drafted_tokens > 0 && usage.cascade!.accepted_tokens > 0, 'the copy drafted and its drafts were accepted');
  // the whole stack: the copy, then draft-l1, then MaG
  const stacked = await client.completions.create({ model: 'draft-l2', prompt: PROMPT, max_tokens: 32, temperature: 0, cascade: { mode: 'csd', k_matrix: [[3, 5, 6], [0, 2, 4], [0, 0, 2]] } } as never);
  t.is((stacked as OpenAI.Completions.Completion).choices[0]!.text, greedyOracle);
  const sampled = await client.completions.create({ model: 'draft-l2', prompt: PROMPT, max_tokens: 24, temperature: 1, top_k: 50, seed: 31, cascade: { mode: 'csd' } } as never);
  t.is((sampled as OpenAI.Completions.Completion).choices[0]!.text, await targetOnly(24, { temperature: 1, topK: 50, topP: 1 }, 31));
});

maybe('self-draft cluster - two makers of the same copy at once (roles of a cluster starting together) both get it, and no temporary folder is left', async (t) => {
  const cache = join(scratch, 'race');
  const family = resolveModels({ models: MODELS_DIR, model: TARGET });
  const [a, b] = await Promise.all([selfDraftCopy(family, 'int8', cache), selfDraftCopy(family, 'int8', cache)]);
  t.is(a.dir, b.dir);
  t.true(existsSync(join(a.dir, 'model.onnx')));
  t.deepEqual(readdirSync(join(a.dir, '..')), ['draft-l2-int8']);
});

test('self-draft cluster - a verify actor refuses --self-draft, naming where it goes', async (t) => {
  const { code, stderr } = await fails(['actor', 'verify', '--self-draft', 'int4', '--models', MODELS_DIR]);
  t.is(code, 2);
  t.regex(stderr, /--self-draft is for a draft actor: the copy drafts and the target verifies/);
});
