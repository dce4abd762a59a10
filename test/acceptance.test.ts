import test from 'ava';
import { review } from '../src/kernels/acceptance.ts';
import { Rng } from '../src/kernels/rng.ts';
import { sample } from '../src/kernels/sampling.ts';
import { chiSquare, describeFits, FALSE_FAILURE, misfits, positionalChiSquare } from './helpers/stats.ts';

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

/**
 * Distributions over V tokens for every prefix of up to `depth` tokens, keyed by the prefix: the
 * reviewer's p (some tokens at probability 0) and the drafter's q, which shares part of p's mass
 * so that whole blocks are often accepted.
 */
function conditionals(rng: Rng, V: number, depth: number): { p: Map<string, Float32Array>; q: Map<string, Float32Array> } {
  const p = new Map<string, Float32Array>();
  const q = new Map<string, Float32Array>();
  const visit = (prefix: number[]) => {
    const key = prefix.join(',');
    const pi = randomDist(rng, V, 1);
    p.set(key, pi);
    const mixed = randomDist(rng, V).map((x, t) => 0.4 * x + 0.6 * pi[t]!);
    q.set(key, mixed);
    if (prefix.length < depth) for (let t = 0; t < V; t++) visit([...prefix, t]);
  };
  visit([]);
  return { p, q };
}

for (const [draft, oneHotAt] of [['sampled drafts with their q', -1], ['a one-hot draft in the middle', 1]] as const) {
  test(`acceptance - a three-token block (${draft}) emits the accepted prefix and the reviewer's token, the correction or the bonus, each distributed as p given the tokens before it (chi-square)`, (t) => {
    const rng = new Rng(oneHotAt < 0 ? 3 : 7);
    const V = 4;
    const k = 3;
    const { p, q } = conditionals(rng, V, k);
    const at = (m: Map<string, Float32Array>, prefix: readonly number[]) => m.get(prefix.join(','))!;
    const emitted: number[][] = [];
    let bonuses = 0;
    for (let n = 0; n < N; n++) {
      const drafts: number[] = [];
      const qs: (Float32Array | undefined)[] = [];
      for (let i = 0; i < k; i++) {
        const qi = at(q, drafts);
        // a deterministic drafter proposes its argmax and passes q as undefined (one-hot)
        drafts.push(i === oneHotAt ? qi.indexOf(Math.max(...qi)) : sample(qi, rng));
        qs.push(i === oneHotAt ? undefined : qi);
      }
      const r = review(drafts, qs, (i) => at(p, drafts.slice(0, i)), rng);
      if (r.accepted === k) bonuses++;
      emitted.push([...drafts.slice(0, r.accepted), r.token]);
    }
    // position i is reached when the first i drafts were accepted; what is emitted there follows p given them
    const fits = positionalChiSquare(emitted, [], (prefix) => at(p, prefix));
    t.log(describeFits(fits));
    t.is(fits.length, k + 1, 'the bonus position is tested');
    t.is(fits[k]!.samples, bonuses);
    t.true(bonuses >= N / 5, `${bonuses} blocks accepted whole`);
    t.true(fits.every((f) => f.samples - (fits[f.position + 1]?.samples ?? 0) >= N / 20), 'blocks stop at every position: corrections at 0..k-1, the bonus at k');
    t.deepEqual(misfits(fits, 0.9), [], describeFits(fits));
  });
}

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
