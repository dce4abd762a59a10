import test from 'ava';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { deriveSeed, Rng, seed64 } from '../src/kernels/rng.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { chiSquare, chiSquareSurvival, FALSE_FAILURE } from './helpers/stats.ts';

const draws = (seed: number | bigint, n: number) => {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.uniform());
};

/** Pearson correlation of x[i] and x[i + 1]. */
function lag1(x: readonly number[]): number {
  const mean = x.reduce((a, b) => a + b, 0) / x.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    den += (x[i]! - mean) ** 2;
    if (i + 1 < x.length) num += (x[i]! - mean) * (x[i + 1]! - mean);
  }
  return num / den;
}

test('seeds - every bit of a 53-bit seed counts: 42 and 2^32 + 42 draw different streams and texts', async (t) => {
  t.notDeepEqual(draws(42, 8), draws(2 ** 32 + 42, 8));
  t.notDeepEqual(draws(42, 8), draws(-42, 8));
  t.notDeepEqual(draws(2 ** 53 - 1, 8), draws(2 ** 53 - 2, 8));
  const model = new MemoryModelSession({ name: 'm', vocabSize: 64, order: 2, seed: 5, sharpness: 1 });
  const gen = (seed: number) => generateAutoregressive(model, { promptIds: [1, 2], maxTokens: 24, sampling: { temperature: 1, topK: 0, topP: 1 }, seed, stopAtEos: false });
  t.notDeepEqual((await gen(42)).tokenIds, (await gen(2 ** 32 + 42)).tokenIds);
  t.deepEqual((await gen(42)).tokenIds, (await gen(42)).tokenIds, 'one seed still reproduces its text');
});

test('seeds - a seed is read modulo 2^64: a negative number and its 64-bit bigint are one seed; a number past 53 bits is refused', async (t) => {
  t.deepEqual(draws(-1, 4), draws(2n ** 64n - 1n, 4));
  t.is(seed64(-1), 2n ** 64n - 1n);
  t.throws(() => new Rng(2 ** 53), { instanceOf: RangeError, message: /53 bits/ });
  t.throws(() => new Rng(0.5), { instanceOf: RangeError });
  const model = new MemoryModelSession({ name: 'm', vocabSize: 8, order: 1, seed: 5 });
  await t.throwsAsync(generateAutoregressive(model, { promptIds: [1], maxTokens: 2, sampling: { temperature: 1, topK: 0, topP: 1 }, seed: 2 ** 60 }), { message: /53 bits/ });
});

// Users collect samples over seed ranges: the first draw of consecutive seeds must look like
// independent uniforms, neither correlated nor more evenly spread than chance.
test('seeds - the first draws of consecutive seeds 1000-2999 are uncorrelated and uniform (two-sided chi-square)', (t) => {
  const firsts = Array.from({ length: 2000 }, (_, i) => new Rng(1000 + i).uniform());
  const r = lag1(firsts);
  t.true(Math.abs(r) < 4 / Math.sqrt(firsts.length), `lag-1 correlation ${r.toFixed(3)} (4 sigma = ${(4 / Math.sqrt(firsts.length)).toFixed(3)})`);
  const bins = 20;
  const counts = new Array<number>(bins).fill(0);
  for (const u of firsts) counts[Math.floor(u * bins)]!++;
  const { chi2, df, pValue } = chiSquare(counts, new Array<number>(bins).fill(1 / bins));
  t.true(pValue > FALSE_FAILURE, `too uneven: chi2 ${chi2.toFixed(1)} on ${df} df`);
  t.true(1 - chiSquareSurvival(chi2, df) > FALSE_FAILURE, `too even to be random: chi2 ${chi2.toFixed(2)} on ${df} df`);
});

test('seeds - the per-level seeds a cluster request derives are independent streams', (t) => {
  const levels = [0, 1, 2, 3].map((stream) => Array.from({ length: 2000 }, (_, i) => new Rng(deriveSeed(1000 + i, stream)).uniform()));
  for (let a = 0; a < levels.length; a++) {
    t.true(Math.abs(lag1(levels[a]!)) < 4 / Math.sqrt(2000), `stream ${a} over consecutive seeds`);
    for (let b = a + 1; b < levels.length; b++) {
      const x = levels[a]!;
      const y = levels[b]!;
      const mx = x.reduce((s, v) => s + v, 0) / x.length;
      const my = y.reduce((s, v) => s + v, 0) / y.length;
      let sxy = 0;
      let sxx = 0;
      let syy = 0;
      for (let i = 0; i < x.length; i++) {
        sxy += (x[i]! - mx) * (y[i]! - my);
        sxx += (x[i]! - mx) ** 2;
        syy += (y[i]! - my) ** 2;
      }
      t.true(Math.abs(sxy / Math.sqrt(sxx * syy)) < 4 / Math.sqrt(2000), `streams ${a} and ${b}`);
    }
  }
  t.not(deriveSeed(42, 0), deriveSeed(2 ** 32 + 42, 0));
});
