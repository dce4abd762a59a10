import test from 'ava';
import { Rng } from '../src/kernels/rng.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';
import { argmax, checkSampling, distribution, nextToken, sample } from '../src/kernels/sampling.ts';

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
