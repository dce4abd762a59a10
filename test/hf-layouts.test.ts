import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import test from 'ava';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { loadModelSpec } from '../src/models/config.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { cascade, fails } from './helpers/cli.ts';
import { MODELS_DIR } from './helpers/family.ts';
import { concat, externalize, field, withCacheBranch, withLogitsToKeep } from './helpers/onnx-proto.ts';

/**
 * A user's export brought as it is: `cascade generate --model DIR` over the transformers exports of
 * test/fixtures/hf (which carry no tokenizer: --tokenizer names this project's, the matching one),
 * and the other layouts made from them here: transformers.js's onnx/ folder, external data, and a
 * stand-in for Optimum's merged decoder (its use_cache_branch input).
 */
const FIXTURES = new URL('./fixtures/hf', import.meta.url).pathname;
const ROOT = new URL('..', import.meta.url).pathname;
const TOKENIZER = join(MODELS_DIR, 'tokenizer.json');
const EXPORTS = ['llama-gqa', 'llama-gqa-fp16'] as const;
const reference = (name: string): { prompt_ids: number[]; greedy_ids: number[] } => JSON.parse(readFileSync(join(FIXTURES, name, 'reference.json'), 'utf8'));

const dirs: string[] = [];
const scratch = (label: string) => {
  const dir = mkdtempSync(join(tmpdir(), `cascade-layout-${label}-`));
  dirs.push(dir);
  return dir;
};
test.after.always(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** `cascade generate --json` over the reference prompt: the token ids it prints. */
async function generateIds(name: string, args: string[]): Promise<{ tokenIds: number[]; cascade: { drafters: string[] } }> {
  const ref = reference(name);
  const { stdout } = await cascade('generate', '--json', '--tokenizer', TOKENIZER, '--max-tokens', String(ref.greedy_ids.length), '--prompt-ids', ref.prompt_ids.join(','), ...args);
  return JSON.parse(stdout);
}

for (const name of EXPORTS) {
  const other = EXPORTS.find((e) => e !== name)!;
  test(`hf layouts - cascade generate --model ${name} reproduces transformers' greedy tokens under ar, sd and csd with ${other} as --draft-model`, async (t) => {
    const want = reference(name).greedy_ids;
    // one path relative to the working directory, the other absolute (it was once joined under models/)
    const model = name === 'llama-gqa' ? relative(ROOT, join(FIXTURES, name)) : join(FIXTURES, name);
    const [ar, sd, csd] = await Promise.all([
      generateIds(name, ['--model', model, '--mode', 'ar']),
      generateIds(name, ['--model', model, '--draft-model', join(FIXTURES, other), '--mode', 'sd']),
      generateIds(name, ['--model', model, '--draft-model', join(FIXTURES, other), '--mode', 'csd']),
    ]);
    t.deepEqual(ar.tokenIds, want);
    t.deepEqual(sd.tokenIds, want);
    t.deepEqual(sd.cascade.drafters, [other]);
    t.deepEqual(csd.tokenIds, want);
    t.deepEqual(csd.cascade.drafters, [other, 'mag'], 'MaG runs without the family\'s bigram table');
  });
}

/** A folder as transformers.js lays an export out: config.json and tokenizer.json on top, graphs in onnx/. */
function transformersJs(graphs: Record<string, string>): string {
  const dir = scratch('tjs');
  mkdirSync(join(dir, 'onnx'));
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(dir, 'config.json'));
  copyFileSync(TOKENIZER, join(dir, 'tokenizer.json'));
  for (const [file, from] of Object.entries(graphs)) symlinkSync(join(FIXTURES, from, 'model.onnx'), join(dir, 'onnx', file));
  return dir;
}

test('hf layouts - transformers.js onnx/ folder: model.onnx by default, --model-file picks model_fp16.onnx, and a choice among variants only is refused listing them', async (t) => {
  const dir = transformersJs({ 'model.onnx': 'llama-gqa', 'model_fp16.onnx': 'llama-gqa-fp16' });
  t.is(loadModelSpec(dir).onnxPath, join(dir, 'onnx', 'model.onnx'));
  t.is(loadModelSpec(dir).tokenizerPath, join(dir, 'tokenizer.json'));
  const fp16 = await generateIds('llama-gqa-fp16', ['--model', dir, '--model-file', 'onnx/model_fp16.onnx', '--mode', 'ar']);
  t.deepEqual(fp16.tokenIds, reference('llama-gqa-fp16').greedy_ids);
  const variants = transformersJs({ 'model_fp16.onnx': 'llama-gqa-fp16', 'model_quantized.onnx': 'llama-gqa' });
  t.throws(() => loadModelSpec(variants), { name: 'ModelLoadError', message: /several ONNX graphs \(onnx\/model_fp16\.onnx, onnx\/model_quantized\.onnx\).*--model-file/ });
  // a --model-file that names nothing is bad input (exit 2), as a --model that names no folder
  t.throws(() => loadModelSpec({ dir: variants, modelFile: 'onnx/model_q4.onnx' }), { name: 'InvalidArgumentError', message: /model_q4\.onnx does not exist \(the folder holds onnx\/model_fp16\.onnx, onnx\/model_quantized\.onnx\)/ });
});

test('hf layouts - weights in external data (model.onnx_data) load from the graph\'s path; a missing data file is named', async (t) => {
  for (const name of EXPORTS) {
    const dir = scratch('ext');
    copyFileSync(join(FIXTURES, name, 'config.json'), join(dir, 'config.json'));
    const { graph, data } = externalize(readFileSync(join(FIXTURES, name, 'model.onnx')), 'model.onnx_data');
    t.true(graph.length < data.length / 10, 'the weights left the graph');
    writeFileSync(join(dir, 'model.onnx'), graph);
    writeFileSync(join(dir, 'model.onnx_data'), data);
    const ref = reference(name);
    const s = await OrtModelSession.open({ dir, tokenizer: TOKENIZER });
    try {
      const out = await generateAutoregressive(s, { promptIds: ref.prompt_ids, maxTokens: ref.greedy_ids.length, sampling: GREEDY, seed: 0, stopAtEos: false });
      t.deepEqual(out.tokenIds, ref.greedy_ids, name);
    } finally {
      await s.close();
    }
    rmSync(join(dir, 'model.onnx_data'));
    await t.throwsAsync(OrtModelSession.open({ dir, tokenizer: TOKENIZER }), { name: 'ModelLoadError', message: /keeps its weights in external data \(.*model\.onnx_data\)/ });
  }
});

test('hf layouts - a decoder_model_merged.onnx is fed use_cache_branch: false on the first pass, true with a past', async (t) => {
  // The stand-in zeroes its logits when the flag disagrees with the past's length (helpers/onnx-proto.ts).
  const dir = scratch('merged');
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(dir, 'config.json'));
  writeFileSync(join(dir, 'decoder_model_merged.onnx'), withCacheBranch(readFileSync(join(FIXTURES, 'llama-gqa', 'model.onnx')), 1));
  copyFileSync(TOKENIZER, join(dir, 'tokenizer.json'));
  const ids = await generateIds('llama-gqa', ['--model', dir, '--mode', 'ar']);
  t.deepEqual(ids.tokenIds, reference('llama-gqa').greedy_ids);
});

test('hf layouts - a graph with num_logits_to_keep is fed the rows a pass needs and read as it returns them: the reference under ar, sd and csd', async (t) => {
  const dir = scratch('keep');
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(dir, 'config.json'));
  writeFileSync(join(dir, 'model.onnx'), withLogitsToKeep(readFileSync(join(FIXTURES, 'llama-gqa', 'model.onnx'))));
  copyFileSync(TOKENIZER, join(dir, 'tokenizer.json'));
  const [keeping, plain] = await Promise.all([OrtModelSession.open(dir), OrtModelSession.open({ dir: join(FIXTURES, 'llama-gqa'), tokenizer: TOKENIZER })]);
  try {
    const ids = reference('llama-gqa').prompt_ids;
    const [two, all] = await Promise.all([keeping.forward({ seqId: 'a', inputIds: ids }, 2), plain.forward({ seqId: 'a', inputIds: ids }, 'all')]);
    const V = keeping.spec.vocabSize;
    t.is(two.length, 2 * V);
    t.true(two.every((v, i) => Math.abs(v - all[(ids.length - 2) * V + i]!) < 1e-5), 'the last two rows');
  } finally {
    await Promise.all([keeping.close(), plain.close()]);
  }
  const [ar, sd, csd] = await Promise.all([
    generateIds('llama-gqa', ['--model', dir, '--mode', 'ar']),
    generateIds('llama-gqa', ['--model', dir, '--draft-model', join(FIXTURES, 'llama-gqa-fp16'), '--mode', 'sd']),
    generateIds('llama-gqa', ['--model', dir, '--draft-model', join(FIXTURES, 'llama-gqa-fp16'), '--mode', 'csd']),
  ]);
  for (const r of [ar, sd, csd]) t.deepEqual(r.tokenIds, reference('llama-gqa').greedy_ids);
});

test('hf layouts - folders missing a file, a graph that is a broken link, graphs outside the decoder-with-past contract and drafters with another tokenizer are refused by name', async (t) => {
  const empty = scratch('empty');
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(empty, 'config.json'));
  t.throws(() => loadModelSpec({ dir: empty, tokenizer: TOKENIZER }), { name: 'ModelLoadError', message: /has no decoder graph: expected model\.onnx, decoder_model_merged\.onnx or onnx\/model\.onnx/ });
  symlinkSync(join(FIXTURES, 'llama-gqa', 'model.onnx'), join(empty, 'model.onnx'));
  t.throws(() => loadModelSpec(empty), { name: 'ModelLoadError', message: /has no tokenizer\.json .*--tokenizer FILE/ });
  const noConfig = await fails(['generate', '--model', join(FIXTURES, '..'), '--prompt', 'x']);
  t.regex(noConfig.stderr, /has no config\.json/);
  const nowhere = await fails(['generate', '--model', join(empty, 'absent'), '--prompt', 'x']);
  t.regex(nowhere.stderr, /--model .*absent is neither a directory nor a member of the family/);
  // a graph that is a symbolic link to itself, or to nothing: said so, not ONNX Runtime's "system error number 40"
  const looping = scratch('looping');
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(looping, 'config.json'));
  symlinkSync(join(looping, 'model.onnx'), join(looping, 'model.onnx'));
  t.throws(() => loadModelSpec({ dir: looping, tokenizer: TOKENIZER }), { name: 'ModelLoadError', message: /model\.onnx is a symbolic link that loops$/ });
  rmSync(join(looping, 'model.onnx'));
  symlinkSync(join(looping, 'gone.onnx'), join(looping, 'model.onnx'));
  t.throws(() => loadModelSpec({ dir: looping, tokenizer: TOKENIZER }), { name: 'ModelLoadError', message: /model\.onnx is a symbolic link to nothing$/ });

  // input_ids -> Identity -> logits: no attention mask, no past, no presents
  const tensor = (name: string) => concat([field(1, name), field(2, field(1, field(1, 7)))]);
  const graph = concat([field(1, concat([field(1, 'input_ids'), field(2, 'logits'), field(4, 'Identity')])), field(2, 'g'), field(11, tensor('input_ids')), field(11, tensor('token_type_ids')), field(12, tensor('logits'))]);
  const bad = scratch('bad');
  writeFileSync(join(bad, 'model.onnx'), concat([field(1, 8), field(8, concat([field(1, ''), field(2, 17)])), field(7, graph)]));
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(bad, 'config.json'));
  await t.throwsAsync(OrtModelSession.open({ dir: bad, tokenizer: TOKENIZER }), {
    name: 'ModelLoadError',
    message: /decoder-with-past contract for 2 layers.*missing inputs \[attention_mask, past_key_values\.0\.key, .*\] outputs \[present\.0\.key, .*\]; inputs the runner cannot feed \[token_type_ids\]/,
  });

  // a drafter whose tokenizer gives two tokens each other's ids
  const drafter = scratch('vocab');
  symlinkSync(join(FIXTURES, 'llama-gqa-fp16', 'model.onnx'), join(drafter, 'model.onnx'));
  copyFileSync(join(FIXTURES, 'llama-gqa-fp16', 'config.json'), join(drafter, 'config.json'));
  const tok = JSON.parse(readFileSync(TOKENIZER, 'utf8'));
  const [a, b] = Object.entries(tok.model.vocab as Record<string, number>).filter(([, id]) => id === 300 || id === 301);
  tok.model.vocab[a![0]] = b![1];
  tok.model.vocab[b![0]] = a![1];
  writeFileSync(join(drafter, 'tokenizer.json'), JSON.stringify(tok));
  const refused = await fails(['generate', '--model', join(FIXTURES, 'llama-gqa'), '--tokenizer', TOKENIZER, '--draft-model', drafter, '--mode', 'sd', '--prompt', 'x']);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /drafter .* does not share the target llama-gqa's tokenizer .*first ids whose tokens differ: 300: .* vs .*, 301: /);
});
