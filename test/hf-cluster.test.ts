import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import type { SpanRecord } from '../src/cluster/tracing.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { loadModelSpec } from '../src/models/config.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';
import { MODELS_DIR } from './helpers/family.ts';

/**
 * Issue 21's "done when": the real Hugging Face exports of test/fixtures/hf (transformers' own
 * modeling code, torch's ONNX exporter; no tokenizer of their own, so --tokenizer names this
 * project's) served by a real cluster — nats-server, redis-server, a verify actor for the target
 * export and a draft actor for the other export, each its own OS process, a coordinator process and
 * the gateway in this process, every role given --model/--draft-model folders and --tokenizer —
 * and driven with the official openai client. Both directions: fp32 verified with fp16 drafting,
 * and fp16 verified with fp32 drafting, each on its own servers.
 */
const FIXTURES = new URL('./fixtures/hf', import.meta.url).pathname;
const TOKENIZER = join(MODELS_DIR, 'tokenizer.json');
const API_KEY = 'hf-cluster-key';
const EXPORTS = ['llama-gqa', 'llama-gqa-fp16'] as const;
type Export = (typeof EXPORTS)[number];
const dirOf = (name: Export) => join(FIXTURES, name);

interface Reference {
  prompt_ids: number[];
  greedy_ids: number[];
}
const reference = (name: Export): Reference => JSON.parse(readFileSync(join(dirOf(name), 'reference.json'), 'utf8'));
const spec = (name: Export) => loadModelSpec({ dir: dirOf(name), tokenizer: TOKENIZER });
// the gateway's tokenizer for an export: the folder's tokenizer_config.json if it had one, else the one beside --tokenizer
const tokenizer = TextTokenizer.forModel(spec('llama-gqa'));

interface Cluster {
  readonly target: Export;
  readonly drafter: Export;
  readonly nats: LocalServer;
  readonly redis: LocalServer;
  readonly roles: RoleProcess[];
  readonly traceFile: string;
  gateway?: Role & { url: string };
  client?: OpenAI;
}

const scratch = mkdtempSync(join(tmpdir(), 'cascade-hf-cluster-'));
const clusters = new Map<Export, Cluster>();

/** A cluster serving `target` with `drafter` on its own draft actor; all on servers of its own. */
async function startCluster(target: Export, drafter: Export): Promise<Cluster> {
  const [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const traceFile = join(scratch, `${target}-spans.jsonl`);
  const c: Cluster = { target, drafter, nats, redis, roles: [], traceFile };
  clusters.set(target, c);
  const env = { CASCADE_TRACE_FILE: traceFile };
  const models = ['--models', MODELS_DIR, '--tokenizer', TOKENIZER];
  const actor = (kind: 'verify' | 'draft', name: Export) =>
    spawnRole(['actor', kind, '--model', dirOf(name), ...models, '--nats', nats.url, '--instance', `${kind}-0`, '--idle-ms', '20000'], env).then((r) => (c.roles.push(r), r));
  await Promise.all([
    actor('verify', target),
    actor('draft', drafter),
    spawnRole(['coordinator', '--model', dirOf(target), '--draft-model', dirOf(drafter), ...models, '--nats', nats.url, '--redis', redis.url], env).then((r) => c.roles.push(r)),
  ]);
  c.gateway = await startGatewayRole({ models: MODELS_DIR, model: dirOf(target), draftModel: [dirOf(drafter)], tokenizer: TOKENIZER, nats: nats.url, redis: [redis.url], port: 0, apiKeys: [API_KEY] });
  c.client = new OpenAI({ baseURL: `${c.gateway.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  return c;
}

test.before(async () => {
  await Promise.all([startCluster('llama-gqa', 'llama-gqa-fp16'), startCluster('llama-gqa-fp16', 'llama-gqa')]);
});

test.after.always(async () => {
  await Promise.all(
    [...clusters.values()].map(async (c) => {
      await stopCluster({ gateways: [c.gateway], roles: c.roles, servers: [c.nats, c.redis] });
    }),
  );
  rmSync(scratch, { recursive: true, force: true });
});

type Usage = OpenAI.CompletionUsage & { cascade?: { target_passes: number; drafted_tokens: number; accepted_tokens: number; dropped_levels: string[] } };

/** A non-streamed completion with the cascade extension of the request body. */
async function complete(c: Cluster, body: Record<string, unknown>): Promise<{ text: string; finish: string; usage: Usage }> {
  const r = (await c.client!.completions.create({ model: c.target, ...body } as never)) as unknown as OpenAI.Completions.Completion;
  if (r.choices.length !== 1) throw new Error(`expected one choice, got ${r.choices.length}`);
  return { text: r.choices[0]!.text, finish: r.choices[0]!.finish_reason, usage: r.usage as Usage };
}

/** The spans a service of the cluster wrote to its trace file so far (the other processes export each span as it ends). */
function spansOf(c: Cluster, service: string, name: string): SpanRecord[] {
  if (!existsSync(c.traceFile)) return [];
  return readFileSync(c.traceFile, 'utf8')
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as SpanRecord)
    .filter((s) => s.service === service && s.name === name);
}

/** The drafter's actor.propose spans after a request: polled briefly, since another process writes them. */
async function draftCallsSince(c: Cluster, before: number, expectSome: boolean): Promise<number> {
  const count = () => spansOf(c, `cascade-actor-${c.drafter}`, 'actor.propose').length - before;
  for (let i = 0; i < 30 && expectSome && count() === 0; i++) await new Promise((r) => setTimeout(r, 100));
  if (!expectSome) await new Promise((r) => setTimeout(r, 300));
  return count();
}

/** The modes a request runs in: target only, sd with the other export drafting (a fixed K, so that it drafts every round), and the full cascade under auto K. */
const MODES = [
  { label: 'target only (ar)', cascade: { mode: 'ar' }, drafts: false },
  { label: 'sd, the other export drafting', cascade: { mode: 'sd', k_matrix: [[4]] }, drafts: true },
  { label: 'csd (the other export, then MaG), K auto', cascade: { mode: 'csd' }, drafts: undefined },
] as const;

for (const [target, drafter] of [
  ['llama-gqa', 'llama-gqa-fp16'],
  ['llama-gqa-fp16', 'llama-gqa'],
] as const) {
  test.serial(`hf cluster - ${target} verified, ${drafter} drafting: the reference has no EOS, and its prompt ids cannot travel as text`, (t) => {
    const ref = reference(target);
    const eos = spec(target).eosIds;
    t.deepEqual([...eos].sort(), [0, 2], 'generation_config.json eos_token_id [0, 2] replaces config.json\'s 0');
    // transformers generated with EOS switched off; the gateway stops at EOS, so the comparison is
    // only to the whole reference when no EOS id occurs in it (none does)
    t.false(ref.greedy_ids.some((id) => eos.includes(id)), 'no EOS id in the reference continuation');
    // The gateway would encode a text prompt itself. The reference prompt holds byte tokens
    // (159, 196, 233) that are no valid UTF-8 on their own: decoded they become U+FFFD, which
    // encodes to other ids. So only a prompt of token ids reproduces the reference's input.
    const text = tokenizer.decode(ref.prompt_ids);
    t.notDeepEqual(tokenizer.encodePrompt(text), ref.prompt_ids);
    t.true(text.includes('\uFFFD'));
  });

  for (const m of MODES) {
    // the gateway takes the prompt as token ids (`prompt: number[]`, OpenAI's own form): the reference
    // prompt does not survive text (its byte tokens are not UTF-8 on their own)
    test.serial(`hf cluster - ${target} verified, ${drafter} drafting: the reference prompt as token ids through the openai client gives transformers' greedy ids, ${m.label}`, async (t) => {
      const c = clusters.get(target)!;
      const ref = reference(target);
      const before = spansOf(c, `cascade-actor-${drafter}`, 'actor.propose').length;
      // `prompt: number[]` is the OpenAI API's (and the official client's) form of a prompt of token ids
      const r = await complete(c, { prompt: ref.prompt_ids, max_tokens: ref.greedy_ids.length, temperature: 0, cascade: m.cascade });
      // the gateway returns text, not ids: the text of the reference ids, and their count
      t.is(r.text, tokenizer.decode(ref.greedy_ids));
      t.is(r.usage.prompt_tokens, ref.prompt_ids.length);
      t.is(r.usage.completion_tokens, ref.greedy_ids.length);
      t.is(r.finish, 'length');
      if (m.drafts === true) {
        t.true(r.usage.cascade!.drafted_tokens > 0, 'the drafter proposed tokens');
        t.true(r.usage.cascade!.accepted_tokens > 0, 'the target accepted some of them');
        t.true((await draftCallsSince(c, before, true)) > 0, `the ${drafter} actor served proposals`);
      } else if (m.drafts === false) {
        t.is(r.usage.cascade!.drafted_tokens, 0);
        t.is(await draftCallsSince(c, before, false), 0, `target only: the ${drafter} actor is not called`);
      }
    });
  }

  /** Target-only decoding of the export in this process: the ONNX runner that hf-layouts.test.ts shows reproduces transformers. */
  const oracle = async (prompt: string, maxTokens: number) => {
    const s = await OrtModelSession.open({ dir: dirOf(target), tokenizer: TOKENIZER });
    try {
      return await generateAutoregressive(s, { promptIds: tokenizer.encodePrompt(prompt), maxTokens, sampling: GREEDY, seed: 0 });
    } finally {
      await s.close();
    }
  };
  const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n';

  test.serial(`hf cluster - ${target} verified, ${drafter} drafting: a text prompt's greedy completion equals target-only decoding of the export, under ar, sd and csd`, async (t) => {
    const c = clusters.get(target)!;
    const want = await oracle(PROMPT, 32);
    for (const m of MODES) {
      const before = spansOf(c, `cascade-actor-${drafter}`, 'actor.propose').length;
      const r = await complete(c, { prompt: PROMPT, max_tokens: 32, temperature: 0, cascade: m.cascade });
      t.is(r.text, tokenizer.decode(want.tokenIds), m.label);
      t.is(r.usage.prompt_tokens, tokenizer.encodePrompt(PROMPT).length);
      t.is(r.usage.completion_tokens, want.tokenIds.length, m.label);
      t.is(r.finish, want.finishReason === 'stop' ? 'stop' : 'length', m.label);
      if (m.drafts === true) {
        t.true(r.usage.cascade!.drafted_tokens > 0, `${m.label}: the drafter proposed tokens`);
        t.true(r.usage.cascade!.accepted_tokens > 0, `${m.label}: the target accepted some of them`);
        t.true((await draftCallsSince(c, before, true)) > 0, `${m.label}: the ${drafter} actor served proposals`);
      } else if (m.drafts === false) {
        t.is(r.usage.cascade!.drafted_tokens, 0, m.label);
        t.is(await draftCallsSince(c, before, false), 0, `${m.label}: the ${drafter} actor is not called`);
      }
    }
  });

  test.serial(`hf cluster - ${target} verified, ${drafter} drafting: a sampled request (temperature 0.8, seed) completes, reproducibly with a fixed K`, async (t) => {
    const c = clusters.get(target)!;
    const body = { prompt: PROMPT, max_tokens: 24, temperature: 0.8, seed: 4242, cascade: { mode: 'sd', k_matrix: [[4]] } };
    const a = await complete(c, body);
    t.true(a.finish === 'length' ? a.usage.completion_tokens === 24 : a.finish === 'stop' && a.usage.completion_tokens <= 24, `${a.finish} after ${a.usage.completion_tokens} tokens`);
    t.true(a.usage.cascade!.drafted_tokens > 0);
    const b = await complete(c, body);
    t.is(b.text, a.text, 'the same seed and K give the same text');
    const greedy = await complete(c, { ...body, temperature: 0 });
    t.not(a.text, greedy.text, 'sampling at 0.8 is not the greedy text');
  });
}
