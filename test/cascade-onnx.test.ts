import test from 'ava';
import { generateCascade, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { MODES, planCascade } from '../src/engine/presets.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { loadBigram } from '../src/models/family.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family } from './helpers/family.ts';

const target = await OrtModelSession.open(dirOf(family.target));
const drafters = new Map(await Promise.all(family.drafters.map(async (d) => [d, await OrtModelSession.open(dirOf(d))] as const)));
const bigram = loadBigram(family);
const tok = TextTokenizer.load(target.spec.tokenizerPath);
test.after.always(() => Promise.all([target, ...drafters.values()].map((s) => s.close())));

const prompts = [
  'def parse_args(argv):\n    parser = argparse.ArgumentParser(',
  'The socket module provides access to the BSD socket interface. It is',
  'for (const entry of entries) {\n  if (entry.isFile()) {',
];

for (const mode of MODES) {
  test(`cascade (ONNX) - ${mode}: greedy output is token-identical to target-only decoding`, async (t) => {
    const plan = planCascade({ mode }, family.drafters);
    const specs: DrafterSpec[] = plan.drafters.map((d) => (d === 'mag' ? { kind: 'mag', bigram } : { kind: 'model', session: drafters.get(d)! }));
    for (const prompt of prompts) {
      const req = { promptIds: tok.encode(prompt), maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false };
      const want = await generateAutoregressive(target, req);
      const got = await generateCascade(target, { drafters: specs, kMatrix: plan.kMatrix, lenience: plan.lenience }, req);
      t.deepEqual(got.tokenIds, want.tokenIds, prompt);
    }
  });
}

test('cascade (ONNX) - lenient drafters and a custom K keep greedy output identical', async (t) => {
  const specs: DrafterSpec[] = [...family.drafters.map((d): DrafterSpec => ({ kind: 'model', session: drafters.get(d)! })), { kind: 'mag', bigram }];
  const n = specs.length;
  const kMatrix = Array.from({ length: n }, (_, r) => Array.from({ length: n }, (_, c) => (c < r ? 0 : 3 * (c - r + 1))));
  const req = { promptIds: tok.encode(prompts[0]!), maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false };
  const want = await generateAutoregressive(target, req);
  t.deepEqual((await generateCascade(target, { drafters: specs, kMatrix, lenience: 4 }, req)).tokenIds, want.tokenIds);
});
