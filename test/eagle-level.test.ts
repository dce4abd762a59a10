import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { loadWorkload } from '../src/bench/workloads.ts';
import { generateCascade, type CascadeConfig } from '../src/engine/cascade.ts';
import { FeatureTap } from '../src/engine/eagle-level.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { InvalidArgumentError, ModelRuntimeError } from '../src/errors.ts';
import { distribution, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { loadMagTables } from '../src/models/family.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { cascade } from './helpers/cli.ts';
import { dirOf, family, MODELS_DIR } from './helpers/family.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';

// The EAGLE feature drafter (models/eagle, issue 24) as a cascade level over the shipped target,
// whose graph has the hidden_states output (tools/train/add_hidden_output.py). Real ONNX models.
const target = await OrtModelSession.open(dirOf(family.target));
const eagle = await OrtModelSession.open(`${MODELS_DIR}/eagle`);
const plain = await OrtModelSession.open(dirOf(family.drafters[1]!)); // a graph without features
const magTables = loadMagTables(family);
const tok = TextTokenizer.load(target.spec.tokenizerPath);
test.after.always(() => Promise.all([target, eagle, plain].map((s) => s.close())));

const EAGLE = { kind: 'eagle', session: eagle } as const;
const MAG = { kind: 'mag', tables: magTables } as const;
const shapes: [string, CascadeConfig][] = [
  ['eagle alone, K=4', { drafters: [EAGLE], kMatrix: [[4]], lenience: 1 }],
  ['eagle + mag (horizontal), K=[[3, 6], [0, 0]]', { drafters: [EAGLE, MAG], kMatrix: [[3, 6], [0, 0]], lenience: 1 }],
  ['eagle + mag, adaptive schedule', { drafters: [EAGLE, MAG], kMatrix: 'auto', lenience: 1 }],
  [`eagle + ${family.drafters[1]} + mag, K=[[2, 4, 6], [0, 0, 0], [0, 0, 2]]`, { drafters: [EAGLE, { kind: 'model', session: plain }, MAG], kMatrix: [[2, 4, 6], [0, 0, 0], [0, 0, 2]], lenience: 1 }],
  [`eagle + ${family.drafters[1]} + mag, adaptive schedule`, { drafters: [EAGLE, { kind: 'model', session: plain }, MAG], kMatrix: 'auto', lenience: 1 }],
];

test('eagle runner - features are returned only when asked, one row per token fed, and the logits do not change', async (t) => {
  const ids = tok.encode('def main(argv):\n    parser = argparse.ArgumentParser()\n');
  t.deepEqual(target.spec.features, { size: 512, input: false, output: 'hidden_states' });
  t.deepEqual(eagle.spec.features, { size: 512, input: true, output: 'next_hidden_states' });
  t.is(eagle.spec.draftVocab?.length, 2048);
  const a = await target.step({ seqId: 'plain', inputIds: ids }, 'all', false);
  const b = await target.step({ seqId: 'featured', inputIds: ids, returnHidden: true }, 'all', false);
  t.is(a.hidden, undefined);
  t.is(b.hidden?.length, ids.length * 512);
  t.deepEqual(a.logits, b.logits);
  // decoding one more token over the cache: its feature equals the one a full prefill computes
  const more = [...ids, 11];
  const c = await target.step({ seqId: 'featured', inputIds: [11], returnHidden: true }, 'all', false);
  const d = await target.step({ seqId: 'whole', inputIds: more, returnHidden: true }, 'all', false);
  const last = d.hidden!.subarray(ids.length * 512);
  t.true(c.hidden!.every((v, i) => Math.abs(v - last[i]!) < 1e-3));
  await Promise.all(['plain', 'featured', 'whole'].map((s) => target.release(s)));
});

test('eagle runner - the drafter needs its features; a graph without the output or input says so', async (t) => {
  await t.throwsAsync(eagle.step({ seqId: 'x', inputIds: [1, 2] }, 'last', false), { instanceOf: InvalidArgumentError, message: /needs hiddenStates/ });
  await t.throwsAsync(eagle.step({ seqId: 'x', inputIds: [1, 2], hiddenStates: new Float32Array(3) }, 'last', false), { instanceOf: InvalidArgumentError, message: /2 tokens need \[2, 512\]/ });
  await t.throwsAsync(plain.step({ seqId: 'x', inputIds: [1, 2], returnHidden: true }, 'last', false), { instanceOf: ModelRuntimeError, message: /no hidden_states output.*add_hidden_output\.py/ });
  await t.throwsAsync(target.forwardBatch([{ seqId: 'y', inputIds: [1], returnHidden: true }, { seqId: 'z', inputIds: [2] }]), { message: /one sequence at a time/ });
  t.throws(() => new FeatureTap(plain, 's'), { instanceOf: InvalidArgumentError, message: /no hidden_states output.*tools\/train\/add_hidden_output\.py/ });
  await t.throwsAsync(generateCascade(plain, { drafters: [EAGLE], kMatrix: [[4]], lenience: 1 }, { promptIds: [1, 2, 3], maxTokens: 4, sampling: GREEDY, seed: 0 }), { message: /add_hidden_output\.py/ });
});

test('eagle cascade - a feature drafter must be the first drafter and only proposes (its row of K is zero)', async (t) => {
  const req = { promptIds: [1, 2, 3], maxTokens: 4, sampling: GREEDY, seed: 0 };
  await t.throwsAsync(generateCascade(target, { drafters: [MAG, EAGLE], kMatrix: [[2, 4], [0, 2]], lenience: 1 }, req), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(generateCascade(target, { drafters: [EAGLE, MAG], kMatrix: [[2, 4], [0, 2]], lenience: 1 }, req), { instanceOf: InvalidArgumentError, message: /row 1\) must be zeros/ });
  await t.throwsAsync(generateCascade(target, { drafters: [{ kind: 'model', session: plain }, EAGLE], kMatrix: [[2, 4], [0, 0]], lenience: 1 }, req), { message: /only be the first drafter/ });
});

// prompts outside the training corpus: bench/prompts code and english, and a mid-line cut of each
const prompts = [...loadWorkload('code').slice(0, 3), ...loadWorkload('english').slice(0, 2)].flatMap((p) => [p.prompt, p.prompt.slice(0, p.prompt.length >> 1)]).map((p) => tok.encode(p));
let reference: Promise<number[][]> | undefined;
const request = (promptIds: number[]) => ({ promptIds, maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false });
const targetOutputs = () =>
  (reference ??= (async () => {
    const out: number[][] = [];
    for (const ids of prompts) out.push((await generateAutoregressive(target, request(ids))).tokenIds);
    return out;
  })());

for (const [name, config] of shapes) {
  // under the adaptive schedule the eagle level may be left idle (it lags the prompt after the first round): drafting is checked with a fixed K
  const fixed = config.kMatrix !== 'auto';
  test.serial(`eagle cascade - ${name}: greedy output is token-identical to target-only decoding on ${prompts.length} prompts${fixed ? ', and the eagle level drafts' : ''}`, async (t) => {
    const want = await targetOutputs();
    const mismatches: string[] = [];
    let drafted = 0;
    for (const [i, ids] of prompts.entries()) {
      const got = await generateCascade(target, config, request(ids));
      if (got.tokenIds.join() !== want[i]!.join()) mismatches.push(`prompt ${i}: ${JSON.stringify(tok.decode(got.tokenIds))} != ${JSON.stringify(tok.decode(want[i]!))}`);
      drafted += got.stats.models.eagle?.proposals ?? 0;
    }
    t.deepEqual(mismatches, []);
    if (fixed) t.true(drafted > prompts.length, `the eagle level proposed ${drafted} times`);
  });
}

// The sampled cascade: the first three tokens of a request (the first from the target alone, since
// the eagle level has no features before the target has read the prompt; the next two drafted by
// the eagle level, and MaG, and reviewed) are distributed as target-only sampling, whose joint
// distribution over the top-2 tokens at each position is computed from the target itself.
const SAMPLED: SamplingParams = { temperature: 0.8, topK: 2, topP: 1 };
async function targetJoint(promptIds: number[]): Promise<{ cells: number[][]; probs: number[] }> {
  const cells: number[][] = [];
  const probs: number[] = [];
  let n = 0;
  const next = async (prefix: number[]) => {
    const seqId = `oracle-${n++}`;
    const logits = await target.forward({ seqId, inputIds: prefix }, 'last');
    await target.release(seqId);
    return distribution(logits, SAMPLED, { tokens: prefix, length: prefix.length, promptLength: promptIds.length });
  };
  const support = (p: Float32Array) => [...p.keys()].filter((i) => p[i]! > 0);
  const p0 = await next(promptIds);
  for (const a of support(p0)) {
    const p1 = await next([...promptIds, a]);
    for (const b of support(p1)) {
      const p2 = await next([...promptIds, a, b]);
      for (const c of support(p2)) {
        cells.push([a, b, c]);
        probs.push(p0[a]! * p1[b]! * p2[c]!);
      }
    }
  }
  return { cells, probs };
}

{
  const verification = 'rejection' as const;
  test.serial(`eagle cascade - sampled (T=0.8, top-k 2, ${verification} verification) with eagle + mag: the first three tokens are distributed as target-only sampling (chi-square)`, async (t) => {
    const promptIds = tok.encode('import os\nimport sys\n\ndef main(');
    const { cells, probs } = await targetJoint(promptIds);
    const counts = new Array<number>(cells.length).fill(0);
    const N = 600; // 8 cells of 2 x 2 x 2 tokens: about 75 samples each
    let eagleDrafts = 0;
    for (let seed = 0; seed < N; seed++) {
      // 8 tokens: the first round (before the target has read the prompt) is MaG's alone and may give 6; the eagle level drafts in the next
      const got = await generateCascade(target, { drafters: [EAGLE, MAG], kMatrix: [[3, 5], [0, 0]], lenience: 1 }, { promptIds, maxTokens: 8, sampling: SAMPLED, seed, stopAtEos: false, ...{ verification } });
      const at = cells.findIndex((c) => c.join() === got.tokenIds.slice(0, 3).join());
      t.true(at >= 0, `tokens ${got.tokenIds.slice(0, 3).join()} are outside the target's top-2 support`);
      counts[at] = counts[at]! + 1;
      eagleDrafts += got.stats.models.eagle!.tokensScored > 0 ? 1 : 0;
    }
    t.is(eagleDrafts, N, 'the eagle level ran in every request');
    const { chi2, df, pValue, impossible } = chiSquare(counts, probs);
    t.is(impossible, 0);
    t.true(pValue > FALSE_FAILURE, `chi2 ${chi2.toFixed(1)} on ${df} df, p = ${pValue.toExponential(2)}; counts ${counts.join(' ')}`);
  });
}

// Under drafter-invariant verification the stronger oracle applies: target-only decoding's tokens for
// each seed (the noise's own distribution is tested in test/invariant.test.ts).
test.serial('eagle cascade - sampled (T=0.8, top-k 2, invariant verification) with eagle + mag: every seed gives target-only decoding\'s tokens', async (t) => {
  const promptIds = tok.encode('import os\nimport sys\n\ndef main(');
  let drafted = 0;
  for (let seed = 0; seed < 40; seed++) {
    const req = { promptIds, maxTokens: 16, sampling: SAMPLED, seed, stopAtEos: false, verification: 'invariant' as const };
    const want = (await generateAutoregressive(target, req)).tokenIds;
    const got = await generateCascade(target, { drafters: [EAGLE, MAG], kMatrix: [[3, 5], [0, 0]], lenience: 1 }, req);
    t.deepEqual(got.tokenIds, want, `seed ${seed}`);
    drafted += got.stats.draftedTokens;
  }
  t.true(drafted > 0);
});

test.serial('eagle cli - generate --eagle-model above mag, and --drafters eagle,mag: greedy text equals --mode ar; bench cascade --eagle-model runs eagle, eagle+mag and csd+eagle', async (t) => {
  const prompt = 'function parseArgs(argv) {\n  const out = {};\n';
  const run = (...args: string[]) => cascade('generate', '--json', '--temperature', '0', '--max-tokens', '24', ...args, '--prompt', prompt).then((r) => JSON.parse(r.stdout));
  // the family's own feature drafter by name (family.json "eagle") gives the same as --eagle-model
  const [ar, eagled, named] = await Promise.all([run('--mode', 'ar'), run('--eagle-model', `${MODELS_DIR}/eagle`, '--mode', 'mag'), run('--drafters', 'eagle,mag')]);
  t.deepEqual(eagled.tokenIds, ar.tokenIds);
  t.deepEqual(named.tokenIds, ar.tokenIds);
  t.deepEqual(named.cascade.drafters, ['eagle', 'mag']);
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-eagle-'));
  await cascade('bench', 'cascade', '--eagle-model', `${MODELS_DIR}/eagle`, '--methods', 'eagle,eagle+mag,csd+eagle', '--workload', 'code', '--temperatures', '0', '--repeats', '1', '--prompts', '1', '--sweep-prompts', '1', '--max-tokens', '8', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'cascade.json'), 'utf8'));
  const methods = record.results[0].methods as { method: string; identicalToAr: boolean }[];
  t.deepEqual(methods.map((m) => m.method), ['ar', 'eagle', 'eagle+mag', 'csd+eagle']);
  t.true(methods.slice(1).every((m) => m.identicalToAr));
  t.true(record.costs.eagle > 0);
});
