import { copyFileSync, mkdtempSync } from 'node:fs';
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
 * SessionOptions.batchInvariant), then the `--scheme w8a8` copy of its fused form (int8 weights and
 * activations; the graph pads its own attention, so it is batch-invariant with no pass padded,
 * docs/quantization.md), each in a cluster of its own, verified by a verify actor, with two draft actors below it: the same
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
const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n';

type Usage = OpenAI.CompletionUsage & { cascade?: { drafted_tokens: number; accepted_tokens: number } };

/** What a cluster has started so far: stopped in the test's `finally` whatever failed. */
interface Started {
  readonly roles: RoleProcess[];
  readonly servers: LocalServer[];
  gateway?: Role & { url: string };
}

/** NATS, Redis, a verify actor of `target`, draft actors of `copy` and draft-l1, a coordinator and a gateway; returns the gateway's openai client. */
async function startCluster(target: string, copy: string, started: Started): Promise<OpenAI> {
  const [nats, redis] = await Promise.all([startNats(), startRedis()]);
  started.servers.push(nats, redis);
  const models = ['--models', MODELS_DIR];
  const actor = (kind: 'verify' | 'draft', model: string) =>
    spawnRole(['actor', kind, '--model', model, ...models, '--nats', nats.url, '--instance', `${kind}-${started.roles.length}`, '--idle-ms', '20000']).then((r) => (started.roles.push(r), r));
  const choice = ['--model', target, '--draft-model', copy, '--draft-model', 'draft-l1', ...models];
  await Promise.all([actor('verify', target), actor('draft', copy), actor('draft', 'draft-l1'), spawnRole(['coordinator', ...choice, '--nats', nats.url, '--redis', redis.url]).then((r) => started.roles.push(r))]);
  started.gateway = await startGatewayRole({ models: MODELS_DIR, model: target, draftModel: [copy, 'draft-l1'], nats: nats.url, redis: [redis.url], port: 0, apiKeys: [API_KEY] });
  return new OpenAI({ baseURL: `${started.gateway.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
}

/** draft-l2's fused form (tools/train/fuse.py: GroupQueryAttention), graph and config only. */
const FUSED_L2 = new URL('./fixtures/fused/draft-l2', import.meta.url).pathname;

for (const scheme of ['nbits', 'w8a8'] as const) {
  /** Folder names are model names in the cluster: the target, and its copy drafting. */
  const name = scheme === 'nbits' ? 'l2-int8' : 'l2-w8a8';
  maybe(`quantized cluster - an 8-bit target (${scheme === 'nbits' ? 'MatMulNBits at accuracy level 4' : 'w8a8: int8 weights and activations'}, batch-invariant) with a 4-bit copy of the same model and draft-l1 drafting: greedy csd and seeded sampled requests give target-only decoding's text`, async (t) => {
    const scratch = mkdtempSync(join(tmpdir(), 'cascade-quantized-cluster-'));
    const target = join(scratch, name);
    const copy = join(scratch, 'l2-int4-draft');
    const started: Started = { roles: [], servers: [] };
    try {
      await Promise.all([
        cascade('quantize', '--model', scheme === 'w8a8' ? FUSED_L2 : dirOf('draft-l2'), '--out', target, '--bits', '8', ...(scheme === 'w8a8' ? ['--scheme', 'w8a8'] : [])),
        cascade('quantize', '--model', dirOf('draft-l2'), '--out', copy, '--bits', '4', '--quantize-head'),
      ]);
      // the fused fixture is a graph and its config only: it borrows the family's tokenizer
      if (scheme === 'w8a8') copyFileSync(join(MODELS_DIR, 'tokenizer.json'), join(target, 'tokenizer.json'));
      const client = await startCluster(target, copy, started);
      const tokenizer = TextTokenizer.forModel(loadModelSpec(target));
      /** Target-only decoding of the quantized target in this process (test/helpers/oracle.ts). */
      const targetOnly = (maxTokens: number, sampling: SamplingParams, seed: number): Promise<string> => targetOnlyText(target, tokenizer, PROMPT, maxTokens, sampling, seed);
      const greedy = await client.completions.create({ model: name, prompt: PROMPT, max_tokens: 32, temperature: 0, cascade: { mode: 'csd', k_matrix: [[3, 5, 6], [0, 2, 4], [0, 0, 2]] } } as never);
      t.is((greedy as OpenAI.Completions.Completion).choices[0]!.text, await targetOnly(32, GREEDY, 0));
      const usage = (greedy as OpenAI.Completions.Completion).usage as Usage;
      t.true(usage.cascade!.accepted_tokens > 0, 'drafts were accepted');
      // the verify actor resolved auto to on for its graph; the draft actors run theirs as they are
      const ready = started.roles.map((r) => r.output()).join('');
      t.regex(ready, new RegExp(`verify actor ${name}/verify-\\d \\(cpu, KV ${scheme === 'w8a8' ? 'in a host buffer' : 'on the host'}, batch-invariant\\)`));
      t.regex(ready, /draft actor l2-int4-draft\/draft-\d \(cpu, KV on the host\)/);
      const sampled = await client.completions.create({ model: name, prompt: PROMPT, max_tokens: 24, temperature: 1, top_k: 50, seed: 31, cascade: { mode: 'csd' } } as never);
      t.is((sampled as OpenAI.Completions.Completion).choices[0]!.text, await targetOnly(24, { temperature: 1, topK: 50, topP: 1 }, 31));
    } finally {
      await stopCluster({ gateways: [started.gateway], roles: started.roles, servers: started.servers, scratch });
    }
  });
}
