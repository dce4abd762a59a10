import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { findPython } from '../src/cli/quantize.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { graphOpTypes } from '../src/models/graph-ops.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { cascade, fails, run } from './helpers/cli.ts';
import { maxAbsDiff, MODELS_DIR } from './helpers/family.ts';

/**
 * tools/train/fuse.py on a user's own Llama export (transformers' LlamaForCausalLM through torch.onnx,
 * the Optimum "decoder with past" layout: module names under a wrapper prefix, an untied lm_head, GQA,
 * RMSNorm weights stored once), in float32 and float16, against the export itself through the runner.
 */
const python = (() => {
  try {
    return findPython();
  } catch (err) {
    console.warn(`test/fuse-user-export.test.ts skipped: ${(err as Error).message}`);
    return undefined;
  }
})();
const maybe = python ? test : test.skip;
const FUSE = new URL('../tools/train/fuse.py', import.meta.url).pathname;
const HF = new URL('./fixtures/hf/', import.meta.url).pathname;
const TOKENIZER = join(MODELS_DIR, 'tokenizer.json');
const tmp = mkdtempSync(join(tmpdir(), 'cascade-fuse-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

/** fuse.py's exit code and stderr (0 and '' when it fused). */
async function fuse(model: string, out: string): Promise<{ code: number; stderr: string }> {
  try {
    await run(python!, [FUSE, '--model', model, '--out', out]);
    return { code: 0, stderr: '' };
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    return { code: e.code ?? -1, stderr: e.stderr ?? '' };
  }
}

/** Measured: 2.4e-7 (float32), 4.9e-4 (float16, whose logits are float16). */
const TOLERANCE = { 'llama-gqa': 1e-4, 'llama-gqa-fp16': 4e-3 } as const;

for (const name of ['llama-gqa', 'llama-gqa-fp16'] as const) {
  maybe(`fuse.py - a user's Llama export (${name}) fuses: logits within ${TOLERANCE[name]} of the export's through prefill, decode, verify, rollback and explicit positions; greedy equals transformers' own; the KV lives in a host buffer`, async (t) => {
    const src = join(HF, name);
    const out = join(tmp, name);
    t.deepEqual(await fuse(src, out), { code: 0, stderr: '' });
    const ops = graphOpTypes(join(out, 'model.onnx'));
    for (const op of ['GroupQueryAttention', 'RotaryEmbedding', 'SkipSimplifiedLayerNormalization']) t.true(ops.has(op), op);
    t.false(ops.has('Softmax'));
    t.truthy(readFileSync(join(out, 'generation_config.json')), 'the folder\'s other files come along');
    const ref = JSON.parse(readFileSync(join(src, 'reference.json'), 'utf8')) as { prompt_ids: number[]; greedy_ids: number[] };
    const [unfused, fused] = await Promise.all([OrtModelSession.open({ dir: src, tokenizer: TOKENIZER }), OrtModelSession.open({ dir: out, tokenizer: TOKENIZER })]);
    try {
      t.is(fused.kvLocation, 'host-buffer');
      t.is(fused.kvDtype, unfused.kvDtype);
      let worst = 0;
      const both = async (seqId: string, inputIds: number[], extra: { keep?: number; positionIds?: number[] } = {}) => {
        const [a, b] = await Promise.all([unfused.forward({ seqId, inputIds, ...extra }), fused.forward({ seqId, inputIds, ...extra })]);
        worst = Math.max(worst, maxAbsDiff(a, b));
      };
      await both('s', ref.prompt_ids);
      for (const id of [40, 41, 42]) await both('s', [id]);
      await both('s', [43, 44, 45, 46, 47]);
      await both('s', [48, 49, 50], { keep: ref.prompt_ids.length + 4 });
      await both('p', ref.prompt_ids.slice(0, 6), { positionIds: [0, 1, 2, 3, 4, 5] });
      await both('p', [60, 61], { positionIds: [20, 21] });
      t.true(worst < TOLERANCE[name], `max abs diff ${worst}`);
      t.log(`${name}: max abs logit difference, fused vs the export: ${worst.toExponential(2)}`);
      const req = { promptIds: ref.prompt_ids, maxTokens: ref.greedy_ids.length, sampling: GREEDY, seed: 0, stopAtEos: false };
      t.deepEqual((await generateAutoregressive(fused, req)).tokenIds, ref.greedy_ids);
    } finally {
      await Promise.all([unfused.close(), fused.close()]);
    }
  });
}

maybe('fuse.py - refuses, naming why, what its plain Llama layers do not compute, a folder without the graph, and writing over the model', async (t) => {
  const variant = (name: string, edit: (cfg: Record<string, unknown>) => void): string => {
    const dir = join(tmp, name);
    cpSync(join(HF, 'llama-gqa'), dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    edit(cfg);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    return dir;
  };
  const cases: [string, RegExp][] = [
    [variant('bias', (c) => (c.attention_bias = true)), /attention_bias: fuse.py writes plain Llama layers; keep this model in the unfused form/],
    [variant('rope', (c) => (c.rope_parameters = { rope_theta: 500000, rope_type: 'llama3', factor: 8 })), /RoPE scaling 'llama3'/],
    [variant('gelu', (c) => (c.hidden_act = 'gelu')), /hidden_act 'gelu' \(the fused MLP is SiLU-gated\)/],
    [variant('window', (c) => (c.sliding_window = 4096)), /sliding_window 4096/],
  ];
  for (const [dir, reason] of cases) {
    const r = await fuse(dir, join(dir, 'fused'));
    t.not(r.code, 0, dir);
    t.regex(r.stderr, reason);
  }
  const empty = join(tmp, 'empty');
  cpSync(join(HF, 'llama-gqa', 'config.json'), join(empty, 'config.json'));
  t.regex((await fuse(empty, join(tmp, 'x'))).stderr, /needs config.json and model.onnx/);
  const src = join(HF, 'llama-gqa');
  t.regex((await fuse(src, src)).stderr, /is the model's own folder/);
});

maybe('cascade fuse - fuses a user\'s export into a new folder and prints it; refuses an existing --out (exit 2) and passes fuse.py\'s refusal on (exit 1)', async (t) => {
  const out = join(tmp, 'via-cli');
  const { stdout } = await cascade('fuse', '--model', join(HF, 'llama-gqa'), '--out', out);
  t.regex(stdout, /fused .*llama-gqa -> .*via-cli: 41 nodes/);
  t.is(stdout.trim().split('\n').at(-1), out);
  t.true(graphOpTypes(join(out, 'model.onnx')).has('GroupQueryAttention'));
  const again = await fails(['fuse', '--model', join(HF, 'llama-gqa'), '--out', out]);
  t.is(again.code, 2);
  t.regex(again.stderr, /--out .*via-cli exists: name a new folder for the fused model/);
  const biased = join(tmp, 'biased');
  cpSync(join(HF, 'llama-gqa'), biased, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(biased, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(biased, 'config.json'), JSON.stringify({ ...cfg, attention_bias: true }));
  const refused = await fails(['fuse', '--model', biased, '--out', join(tmp, 'biased-fused')]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /attention_bias: fuse.py writes plain Llama layers[\s\S]*tools\/train\/fuse.py failed \(exit 1\)/);
});
