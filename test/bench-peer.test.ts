import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test from 'ava';
import { hasNodeLlamaCpp, INSTALL_HINT } from '../src/bench/peer-llama.ts';
import { benchPeer, type PeerRow } from '../src/bench/peer.ts';
import { findPython } from '../src/cli/quantize.ts';
import { dirOf, MODELS_DIR } from './helpers/family.ts';

/**
 * `cascade bench peer` at its smallest: draft-l2 as the target and draft-l1 as every drafter,
 * exported to GGUF by tools/gguf/export_gguf.py (llama.cpp's gguf-py from node-llama-cpp's bundle),
 * 2 held-out prompts, 16 tokens, f32 and 8-bit, 1 thread, one repeat. llama.cpp's f32 must
 * reproduce this project's greedy target-only tokens, and this project's speculation its own plain
 * tokens. Skipped, saying why, without node-llama-cpp (installed on demand; .ci/run installs it) or Python's onnx.
 */
const why = await (async () => {
  if (!(await hasNodeLlamaCpp())) return `node-llama-cpp is not installed. ${INSTALL_HINT}`;
  try {
    findPython();
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
})();
if (why) console.warn(`test/bench-peer.test.ts skipped: ${why}`);
const maybe = why ? test.skip : test.serial;

const tmp = mkdtempSync(join(tmpdir(), 'cascade-bench-peer-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));
const exporter = new URL('../tools/gguf/export_gguf.py', import.meta.url).pathname;

maybe('bench peer - llama.cpp on the f32 GGUF gives this project\'s greedy target-only tokens; the table has both engines at f32 and 8-bit', async (t) => {
  const out = join(tmp, 'out');
  const result = await benchPeer({
    models: { models: MODELS_DIR, model: 'draft-l2', draftModels: ['draft-l1'] },
    prompts: 2,
    maxTokens: 16,
    repeats: 1,
    threads: [1, 2],
    weights: ['f32', '8'],
    // the fused form (the unfused one is the same path without fuse.py)
    forms: ['fused'],
    accuracyLevel: 4,
    // blocks of 64, not the default 32: the quantizer's block size reaches the copy and its label
    blockSize: 64,
    python: findPython(),
    cacheDir: join(tmp, 'cache'),
    out,
  });
  const record = JSON.parse(readFileSync(join(out, 'peer.json'), 'utf8')) as { what: string; identity: { prompts: number; identical: number }; rows: PeerRow[] };
  t.deepEqual(result.identity, { prompts: 2, identical: 2 });
  t.deepEqual(record.identity, { prompts: 2, identical: 2 });
  t.true(record.what.includes('llama.cpp f32 reproduced this project\'s f32 greedy target-only tokens on 2/2 prompts'));
  const engines = new Set(record.rows.map((r) => `${r.engine} ${r.weights} ${r.method}`));
  for (const want of ['cascade-cluster f32 target only', 'cascade-cluster 8 MaG', 'llama.cpp f32 target only', 'llama.cpp 8 target only', 'llama.cpp 8 prompt lookup']) t.true(engines.has(want), want);
  t.is(record.rows.filter((r) => r.engine === 'llama.cpp' && r.weights === 'f32' && r.method === 'target only')[0]!.sameAsF32, 2);
  // this project's speculation over the f32 target gives its plain greedy tokens. Not asserted over an int8
  // target: in bench/results/peer its speculative output equalled its plain output on only 4-6 of 6 prompts,
  // cause not yet established (docs/quantization.md)
  // (against the fused form's own plain decoding: the fused graph is within 1e-4 of the unfused one, not equal)
  for (const r of record.rows.filter((r) => r.engine === 'cascade-cluster' && r.weights === 'f32')) t.is(r.sameAsPlain, 2, `${r.format} ${r.method}`);
  const formats = new Set(record.rows.filter((r) => r.engine === 'cascade-cluster').map((r) => r.format));
  t.deepEqual([...formats].sort(), ['ONNX f32 fused', 'ONNX int8+head (cascade quantize, blocks of 64) fused'], 'the fused form at both widths');
  for (const r of record.rows) t.true(r.tokensPerSecond > 0 && r.decodeTokensPerSecond > 0, `${r.engine} ${r.weights} ${r.method}`);
  const md = readFileSync(join(out, 'peer.md'), 'utf8');
  t.true(md.includes('## Side by side'));
  // with two thread counts, a row per width has each engine at its fastest count, which the cells name
  t.regex(md, /\n8-bit +each best +\d+ \(\d+\) @[12] /);
});

maybe('bench peer - the GGUF exporter refuses a folder that is not a Llama export, saying why', async (t) => {
  const python = findPython();
  const notLlama = join(tmp, 'gpt2');
  mkdirSync(notLlama);
  writeFileSync(join(notLlama, 'config.json'), JSON.stringify({ model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], vocab_size: 8, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 1, intermediate_size: 8 }));
  const err = await promisify(execFile)(python, [exporter, '--model', notLlama, '--out', join(tmp, 'x.gguf')]).then(() => undefined, (e: { code: number; stderr: string }) => e);
  t.truthy(err);
  t.regex(err!.stderr, /only Llama exports \(model_type llama\) convert/);
  const noConfig = await promisify(execFile)(python, [exporter, '--model', join(dirOf('target'), '..', 'controller'), '--out', join(tmp, 'y.gguf')]).then(() => undefined, (e: { stderr: string }) => e);
  t.regex(noConfig!.stderr, /has no config\.json: not a model folder/);
});
