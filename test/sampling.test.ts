import test from 'ava';
import { Rng } from '../src/kernels/rng.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';
import { argmax, checkSampling, distribution, GREEDY, nextToken, processLogits, sample } from '../src/kernels/sampling.ts';

const logits = Float32Array.from([2.0, 1.0, 0.5, 3.0, -1.0, 3.0]);

test('sampling - greedy is one-hot at the first maximum', (t) => {
  t.is(argmax(logits), 3);
  const p = distribution(logits, { temperature: 0, topK: 0, topP: 1 });
  t.deepEqual([...p], [0, 0, 0, 1, 0, 0]);
  t.is(nextToken(logits, { temperature: 0, topK: 0, topP: 1 }, new Rng(1)), 3);
});

test('sampling - temperature softmax sums to one and follows the logits order', (t) => {
  const p = distribution(logits, { temperature: 0.7, topK: 0, topP: 1 });
  const sum = p.reduce((a, b) => a + b, 0);
  t.true(Math.abs(sum - 1) < 1e-6);
  t.true(p[3]! > p[0]! && p[0]! > p[1]! && p[1]! > p[2]! && p[2]! > p[4]!);
  t.true(Math.abs(p[3]! - p[5]!) < 1e-7);
});

test('sampling - top-k keeps k tokens (and ties at the boundary)', (t) => {
  const p = distribution(logits, { temperature: 1, topK: 2, topP: 1 });
  t.deepEqual([...p].map((x) => x > 0), [false, false, false, true, false, true]);
  const q = distribution(logits, { temperature: 1, topK: 3, topP: 1 });
  t.deepEqual([...q].map((x) => x > 0), [true, false, false, true, false, true]);
});

test('sampling - top-p keeps the smallest set reaching the mass', (t) => {
  const full = distribution(logits, { temperature: 1, topK: 0, topP: 1 });
  const p = distribution(logits, { temperature: 1, topK: 0, topP: 0.5 });
  t.is([...p].filter((x) => x > 0).length, 2);
  t.true(full[3]! < 0.5 && full[3]! + full[5]! >= 0.5);
  t.true(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-6);
});

test('sampling - seeded draws are reproducible and seeds differ', (t) => {
  const params = { temperature: 1, topK: 0, topP: 1 };
  const draw = (seed: number) => {
    const rng = new Rng(seed);
    return Array.from({ length: 50 }, () => nextToken(logits, params, rng));
  };
  t.deepEqual(draw(11), draw(11));
  t.notDeepEqual(draw(11), draw(12));
});

test('sampling - draw frequencies match the distribution (chi-square, p_false_fail < 1e-4)', (t) => {
  const p = distribution(logits, { temperature: 1.3, topK: 0, topP: 1 });
  const rng = new Rng(2024);
  const n = 20000;
  const counts = new Array(p.length).fill(0);
  for (let i = 0; i < n; i++) counts[sample(p, rng)]++;
  const { chi2, df, pValue } = chiSquare(counts, p);
  t.is(df, 5);
  t.true(pValue > FALSE_FAILURE, `chi2 = ${chi2}`);
});

test('sampling - out-of-range parameters are named', (t) => {
  t.regex(checkSampling({ temperature: -1, topK: 0, topP: 1 })!, /temperature/);
  t.regex(checkSampling({ temperature: 1, topK: 1.5, topP: 1 })!, /top-k/);
  t.regex(checkSampling({ temperature: 1, topK: 0, topP: 0 })!, /top-p/);
  t.is(checkSampling({ temperature: 1, topK: 5, topP: 0.9 }), undefined);
});

test('sampling - top-p applies to the top-k distribution renormalised, as transformers and vLLM apply it', (t) => {
  // three tokens: probabilities about 0.64, 0.24, 0.09, 0.03
  const row = Float32Array.of(3, 2, 1, 0);
  const full = distribution(row, { temperature: 1, topK: 0, topP: 1 });
  // top-k 2 leaves 0.64 and 0.24, renormalised 0.73 and 0.27: top-p 0.7 keeps only the first (0.73 >= 0.7)
  const p = distribution(row, { temperature: 1, topK: 2, topP: 0.7 });
  t.true(full[0]! < 0.7, 'over the whole vocabulary the first token alone would not reach 0.7');
  t.deepEqual([...p], [1, 0, 0, 0]);
});

test('sampling - min-p keeps the tokens of at least min-p times the top probability', (t) => {
  const row = Float32Array.of(3, 2, 1, 0);
  const full = distribution(row, { temperature: 1, topK: 0, topP: 1 });
  const p = distribution(row, { temperature: 1, topK: 0, topP: 1, minP: 0.2 });
  t.deepEqual([...p].map((x) => x > 0), [true, true, false, false], `${full[2]! / full[0]!} < 0.2 <= ${full[1]! / full[0]!}`);
  t.true(Math.abs(p[0]! + p[1]! - 1) < 1e-6);
});

test('sampling - logits processors: logit_bias, repetition penalty over the prefix, presence and frequency penalties over the output only', (t) => {
  const row = Float32Array.of(2, -2, 1, 0.5, 3);
  // prompt [0, 1], output [2, 2, 4]
  const prefix = { tokens: [0, 1, 2, 2, 4, 99], length: 5, promptLength: 2 };
  t.is(processLogits(row, { ...GREEDY }, prefix), row, 'no processor: the row itself');
  const biased = processLogits(row, { ...GREEDY, logitBias: { 1: 5, 4: -100 } }, prefix);
  t.deepEqual([...biased], [2, 3, 1, 0.5, -97]);
  const rep = processLogits(row, { ...GREEDY, repetitionPenalty: 2 }, prefix);
  t.deepEqual([...rep], [1, -4, 0.5, 0.5, 1.5], 'positive logits divided, negative multiplied, for prompt and output tokens');
  const pres = processLogits(row, { ...GREEDY, presencePenalty: 0.5, frequencyPenalty: 0.25 }, prefix);
  t.deepEqual([...pres], [2, -2, 1 - 0.5 - 0.5, 0.5, 3 - 0.5 - 0.25], 'output tokens only: token 2 twice, token 4 once; token 99 lies past the prefix');
  t.throws(() => processLogits(row, { ...GREEDY, presencePenalty: 1 }), { instanceOf: RangeError });
  // greedy follows the processed logits
  t.is(nextToken(row, { ...GREEDY, logitBias: { 4: -100 } }, new Rng(0), prefix), 0);
  t.is(checkSampling({ ...GREEDY, presencePenalty: 3 }), 'presence penalty must be in [-2, 2], got 3');
  t.regex(checkSampling({ ...GREEDY, logitBias: { 5: 101 } })!, /logit_bias must map token ids \(below 2\^32\) to values in \[-100, 100\]/);
  t.regex(checkSampling({ ...GREEDY, logitBias: { 4294967309: 1 } })!, /below 2\^32/);
  t.regex(checkSampling({ ...GREEDY, repetitionPenalty: 0 })!, /repetition penalty must be a finite number > 0/);
  t.regex(checkSampling({ ...GREEDY, minP: 1.5 })!, /min-p must be in \[0, 1\]/);
});
