import test from 'ava';
import fc from 'fast-check';
import { ewif, fitAlpha } from '../src/bench/cascade.ts';
import { loadWorkload, splitWorkload, WORKLOADS } from '../src/bench/workloads.ts';

test('bench - EWIF: expected tokens per round over the cost of a round', (t) => {
  // α = 0.5, k = 2: 1 + 0.5 + 0.25 tokens per round for 1 + 2·0.1 target-pass equivalents.
  t.is(ewif(0.5, 2, 0.1), 1.75 / 1.2);
  t.is(ewif(0, 4, 0.05), 1 / 1.2);
  t.is(ewif(1, 3, 0), 4);
});

test('bench - fitAlpha inverts the expected round yield', (t) => {
  fc.assert(
    fc.property(fc.double({ min: 0.01, max: 0.99, noNaN: true }), fc.integer({ min: 1, max: 12 }), (alpha, k) => {
      const mean = ewif(alpha, k, 0);
      return Math.abs(fitAlpha(mean, k) - alpha) < 1e-6;
    }),
  );
  t.is(fitAlpha(1, 4), 0);
  t.is(fitAlpha(5, 4), 1);
});

// Fault: bench cascade tuned K on the first prompts of the set and then measured the set, those
// prompts included, which flatters every tuned method.
test('bench - the K sweep tunes on prompts the benchmark never measures', (t) => {
  for (const w of WORKLOADS) {
    const all = loadWorkload(w);
    const { measure, tune } = splitWorkload(w, 12, 4);
    t.is(measure.length, 12);
    t.is(tune.length, 4);
    const measured = new Set(measure.map((p) => p.id));
    t.true(tune.every((p) => !measured.has(p.id)), `${w}: disjoint`);
    t.deepEqual(measure, all.slice(0, 12));
    t.throws(() => splitWorkload(w, all.length, 1), { message: /disjoint/ });
  }
});
