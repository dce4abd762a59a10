import test from 'ava';
import fc from 'fast-check';
import { checkBudget, KvLedger, planStep, positionalScore, topByScore, type KvBudget } from '../src/kernels/kv-policy.ts';

/** Decodes `steps` tokens one at a time, scoring every token (resident or released) with `score`. */
function simulate(budget: KvBudget, steps: number, score: (p: number, step: number) => number, onStep?: (l: KvLedger, t: number) => void): KvLedger {
  const ledger = new KvLedger(budget);
  for (let t = 0; t < steps; t++) {
    ledger.append([t]);
    const all = [...ledger.order, ...ledger.released.keys()];
    ledger.score(all, all.map((p) => score(p, t)));
    ledger.apply(ledger.plan(t));
    onStep?.(ledger, t);
  }
  return ledger;
}

const budgets = fc
  .record({ budget: fc.integer({ min: 2, max: 24 }), sinks: fc.integer({ min: 0, max: 4 }), recent: fc.integer({ min: 0, max: 6 }), rebuild: fc.integer({ min: 0, max: 3 }) })
  .filter((b) => b.sinks + b.recent < b.budget);

test('kv policy - the cache never exceeds its budget and never releases a protected token', (t) => {
  fc.assert(
    fc.property(budgets, fc.integer({ min: 1, max: 80 }), fc.integer(), (b, steps, seed) => {
      const score = (p: number, step: number) => Math.sin(seed + p * 12.9898 + step * 78.233) * 43758.5453 % 1;
      simulate(b, steps, score, (l, newest) => {
        if (l.size > b.budget) throw new Error(`${l.size} resident > budget ${b.budget}`);
        for (let p = 0; p <= newest; p++) {
          const isProtected = p < b.sinks || p > newest - b.recent;
          if (isProtected && !l.order.includes(p)) throw new Error(`protected position ${p} released at step ${newest}`);
          if (l.order.includes(p) === l.released.has(p)) throw new Error(`position ${p} must be exactly one of resident / released`);
        }
      });
      return true;
    }),
  );
  t.pass();
});

test('kv policy - window keeps the newest m tokens; streaming keeps the sinks and the newest m - sinks', (t) => {
  const window = simulate({ budget: 8, sinks: 0, recent: 0, rebuild: 0 }, 30, (p) => positionalScore('window', p));
  t.deepEqual([...window.order].sort((a, b) => a - b), [22, 23, 24, 25, 26, 27, 28, 29]);
  const streaming = simulate({ budget: 8, sinks: 4, recent: 0, rebuild: 0 }, 30, (p) => positionalScore('streaming', p));
  t.deepEqual([...streaming.order].sort((a, b) => a - b), [0, 1, 2, 3, 26, 27, 28, 29]);
});

test('kv policy - one release per step once over budget, plus one per rebuilt token', (t) => {
  fc.assert(
    fc.property(budgets, fc.integer({ min: 1, max: 60 }), fc.integer(), (b, steps, seed) => {
      const ledger = new KvLedger(b);
      for (let step = 0; step < steps; step++) {
        ledger.append([step]);
        const all = [...ledger.order, ...ledger.released.keys()];
        ledger.score(all, all.map((p) => Math.abs(Math.sin(seed * 0.37 + p * 3.1 + step * 1.7))));
        const before = ledger.size;
        const plan = ledger.plan(step);
        if (plan.rebuild.length > b.rebuild) throw new Error('rebuilt more than R');
        const expected = Math.max(0, before + plan.rebuild.length - b.budget);
        if (plan.release.length !== expected) throw new Error(`released ${plan.release.length}, expected ${expected}`);
        ledger.apply(plan);
      }
      return true;
    }),
  );
  t.pass();
});

test('kv policy - a released token comes back only when it outscores a resident one', (t) => {
  const b: KvBudget = { budget: 3, sinks: 0, recent: 1, rebuild: 1 };
  const resident = new Map([[10, 0.5], [11, 0.6], [12, 0.9]]);
  t.deepEqual(planStep(b, resident, new Map([[3, 0.4]]), 12), { release: [], rebuild: [] });
  t.deepEqual(planStep(b, resident, new Map([[3, 0.7], [4, 0.8]]), 12), { release: [10], rebuild: [4] });
});

test('kv policy - rollback forgets drafted positions, resident or released', (t) => {
  const ledger = simulate({ budget: 4, sinks: 1, recent: 1, rebuild: 0 }, 10, (p) => p);
  const rows = [8, 9].map((p) => ledger.order.indexOf(p));
  t.deepEqual(ledger.rollback(8), { rows, released: [] }, 'the rows the runner must evict');
  t.true(ledger.order.every((p) => p < 8));
  t.true([...ledger.released.keys()].every((p) => p < 8));
  t.deepEqual(ledger.indicesOf([0]), [0]);
});

test('kv policy - impossible budgets are refused with the reason', (t) => {
  t.throws(() => checkBudget({ budget: 0, sinks: 0, recent: 0, rebuild: 0 }), { message: /positive integer/ });
  t.throws(() => checkBudget({ budget: 8, sinks: 4, recent: 4, rebuild: 0 }), { message: /must leave room/ });
  t.throws(() => checkBudget({ budget: 8, sinks: 0, recent: 0, rebuild: -1 }), { message: />= 0/ });
});

test('kv policy - the one-pass top-n selection equals sorting (score descending, newer first on ties)', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: -3, max: 3 })), { maxLength: 40 }), fc.integer({ min: 1, max: 6 }), (entries, n) => {
      const scores = new Map(entries.map(([p, s]) => [p, s / 2]));
      const sorted = [...scores].sort(([pa, sa], [pb, sb]) => sb - sa || pb - pa).slice(0, n).map(([p]) => p);
      t.deepEqual(topByScore(scores, n), sorted);
    }),
  );
});

test('kv policy - a step plan equals the rule stated by sorting the whole pool', (t) => {
  // The reference: sort every unprotected resident token and rebuild candidate, keep the best that fit.
  const reference = (b: KvBudget, resident: Map<number, number>, released: Map<number, number>, newest: number) => {
    const candidates = b.rebuild > 0 ? [...released].sort(([pa, sa], [pb, sb]) => sb - sa || pb - pa).slice(0, b.rebuild).map(([p]) => p) : [];
    if (resident.size <= b.budget && candidates.length === 0) return { release: [], rebuild: [] };
    const isProtected = (p: number) => p < b.sinks || p > newest - b.recent;
    const pool = [...resident].filter(([p]) => !isProtected(p)).concat(candidates.map((p) => [p, released.get(p)!] as [number, number]));
    pool.sort(([pa, sa], [pb, sb]) => sb - sa || pb - pa);
    const keep = new Set(pool.slice(0, Math.max(0, b.budget - (resident.size - pool.length + candidates.length))).map(([p]) => p));
    return {
      release: pool.filter(([p]) => !keep.has(p) && resident.has(p)).map(([p]) => p).sort((x, y) => x - y),
      rebuild: candidates.filter((p) => keep.has(p)).sort((x, y) => x - y),
    };
  };
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.integer({ min: 0, max: 120 }), { minLength: 1, maxLength: 60 }),
      fc.array(fc.integer({ min: -4, max: 4 }), { minLength: 60, maxLength: 60 }),
      fc.integer({ min: 2, max: 40 }),
      fc.integer({ min: 0, max: 3 }),
      fc.integer({ min: 0, max: 3 }),
      (positions, scores, budget, sinks, rebuild) => {
        const b: KvBudget = { budget: Math.max(budget, sinks + 2), sinks, recent: 1, rebuild };
        const split = Math.ceil(positions.length * 0.7);
        const resident = new Map(positions.slice(0, split).map((p, i) => [p, scores[i]! / 2]));
        const released = new Map(positions.slice(split).map((p, i) => [p, scores[split + i]! / 2]));
        const newest = Math.max(...positions);
        t.deepEqual(planStep(b, resident, released, newest), reference(b, resident, released, newest));
      },
    ),
  );
});
