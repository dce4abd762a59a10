import test from 'ava';
import { review } from '../src/kernels/acceptance.ts';
import { Rng } from '../src/kernels/rng.ts';
import { sample } from '../src/kernels/sampling.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';

function randomDist(rng: Rng, n: number, zeros = 0): Float32Array {
  const d = Float32Array.from({ length: n }, () => rng.uniform() ** 2);
  for (let i = 0; i < zeros; i++) d[Math.floor(rng.uniform() * n)] = 0;
  const s = d.reduce((a, b) => a + b, 0);
  return d.map((x) => x / s);
}

const oneHot = (n: number, i: number) => Float32Array.from({ length: n }, (_, j) => (j === i ? 1 : 0));
const N = 40_000;

test('acceptance - a sampled draft with its true q yields tokens distributed as p (chi-square)', (t) => {
  const rng = new Rng(1);
  const V = 6;
  for (let trial = 0; trial < 3; trial++) {
    const p = randomDist(rng, V, trial);
    const q = randomDist(rng, V);
    const counts = new Array(V).fill(0);
    for (let i = 0; i < N; i++) {
      const x = sample(q, rng);
      const r = review([x], [q], () => p, rng);
      counts[r.accepted === 1 ? x : r.token]++;
    }
    const { chi2, df, pValue, impossible } = chiSquare(counts, p);
    t.is(impossible, 0);
    t.true(pValue > FALSE_FAILURE, `trial ${trial}: chi2 ${chi2.toFixed(2)} df ${df}`);
  }
});

test('acceptance - a one-hot draft is exact whatever produced it (chi-square)', (t) => {
  const rng = new Rng(2);
  const V = 6;
  const p = randomDist(rng, V);
  for (const x of [0, 3]) {
    const counts = new Array(V).fill(0);
    for (let i = 0; i < N; i++) {
      const r = review([x], [undefined], () => p, rng);
      counts[r.accepted === 1 ? x : r.token]++;
    }
    const { chi2, pValue, impossible } = chiSquare(counts, p);
    t.is(impossible, 0);
    t.true(pValue > FALSE_FAILURE, `x=${x}: chi2 ${chi2.toFixed(2)}`);
  }
});

test('acceptance - a two-token block reproduces the reviewer joint distribution, bonus included (chi-square)', (t) => {
  const rng = new Rng(3);
  const V = 4;
  const p0 = randomDist(rng, V);
  const p1 = Array.from({ length: V }, () => randomDist(rng, V)); // p(second | first)
  const p2 = Array.from({ length: V * V }, () => randomDist(rng, V));
  const q0 = randomDist(rng, V);
  const q1 = Array.from({ length: V }, () => randomDist(rng, V));
  const counts = new Array(V * V).fill(0);
  for (let i = 0; i < N; i++) {
    const x0 = sample(q0, rng);
    const x1 = sample(q1[x0]!, rng);
    const r = review([x0, x1], [q0, q1[x0]!], (pos) => (pos === 0 ? p0 : pos === 1 ? p1[x0]! : p2[x0 * V + x1]!), rng);
    const emitted = [x0, x1].slice(0, r.accepted).concat(r.token);
    if (emitted.length < 2) emitted.push(sample(p1[emitted[0]!]!, rng)); // the next round's first token
    counts[emitted[0]! * V + emitted[1]!]++;
  }
  const joint = Array.from({ length: V * V }, (_, c) => p0[Math.floor(c / V)]! * p1[Math.floor(c / V)]![c % V]!);
  const { chi2, df, pValue } = chiSquare(counts, joint);
  t.is(df, 15);
  t.true(pValue > FALSE_FAILURE, `chi2 ${chi2.toFixed(2)}`);
});

test('acceptance - greedy review accepts the prefix that matches the argmax and corrects the first miss', (t) => {
  const rng = new Rng(4);
  const argmaxes = [2, 0, 1, 3];
  const p = (i: number) => oneHot(4, argmaxes[i]!);
  t.deepEqual(review([2, 0, 3], [undefined, undefined, undefined], p, rng), { accepted: 2, token: 1 });
  t.deepEqual(review([2, 0, 1], [undefined, undefined, undefined], p, rng), { accepted: 3, token: 3 });
  t.deepEqual(review([1], [undefined], p, rng), { accepted: 0, token: 2 });
  t.deepEqual(review([], [], p, rng), { accepted: 0, token: 2 });
});

test('acceptance - positions after the first rejection are never evaluated', (t) => {
  const seen: number[] = [];
  const p = (i: number) => {
    seen.push(i);
    return oneHot(3, 0);
  };
  review([1, 0, 0], [undefined, undefined, undefined], p, new Rng(5));
  t.deepEqual(seen, [0]);
});

test('acceptance - lenience accepts more and is refused below 1', (t) => {
  const rng = new Rng(6);
  const p = Float32Array.from([0.5, 0.3, 0.2]);
  let strict = 0;
  let lenient = 0;
  for (let i = 0; i < 5000; i++) {
    strict += review([1], [undefined], () => p, rng).accepted;
    lenient += review([1], [undefined], () => p, rng, 3).accepted;
  }
  t.true(Math.abs(strict / 5000 - 0.3) < 0.03);
  t.true(Math.abs(lenient / 5000 - 0.9) < 0.03);
  t.throws(() => review([1], [undefined], () => p, rng, 0.5), { instanceOf: RangeError });
});
