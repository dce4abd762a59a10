import test from 'ava';
import { LinearCost } from '../src/kernels/cost-model.ts';
import { Rng } from '../src/kernels/rng.ts';
import { AdaptiveSchedule, ScheduleMemory } from '../src/engine/schedule.ts';
import { startingKMatrix } from '../src/engine/presets.ts';
import { MagLevel, magMatchClass, ModelLevel, type CascadeLevel } from '../src/engine/levels.ts';
import { generateCascade, runCascade } from '../src/engine/cascade.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import type { ServiceLoad } from '../src/models/session.ts';

/**
 * A synthetic world for the schedule: each drafter's tokens are accepted by the target with a fixed
 * probability, and calls cost fixed + perToken × tokens. Nothing is timed: costs are reported exactly.
 */
interface World {
  readonly alpha: Record<string, number>;
  readonly review: Record<string, { fixed: number; perToken: number }>;
  readonly propose: Record<string, { fixed: number; perToken: number }>;
}

const cost = (c: { fixed: number; perToken: number }, x: number) => c.fixed + c.perToken * x;

/** Expected tokens per ms of a target row (counts per drafter) in the world, with drafters proposing autoregressively. */
function rate(world: World, drafters: string[], counts: number[]): number {
  let e = 1;
  let s = 1;
  let t = 0;
  counts.forEach((m, i) => {
    for (let j = 0; j < m; j++) e += s *= world.alpha[drafters[i]!]!;
    if (m > 0) t += cost(world.propose[drafters[i]!]!, m);
  });
  return e / (t + cost(world.review.target!, counts.reduce((a, b) => a + b, 0) + 1));
}

function bestRate(world: World, drafters: string[], max: number): number {
  let best = rate(world, drafters, drafters.map(() => 0));
  const visit = (i: number, left: number, counts: number[]) => {
    if (i === drafters.length) {
      best = Math.max(best, rate(world, drafters, counts));
      return;
    }
    for (let m = 0; m <= left; m++) visit(i + 1, left - m, [...counts, m]);
  };
  visit(0, max, []);
  return best;
}

/**
 * Runs `rounds` rounds of a flat cascade (every drafter proposes for the target) under the schedule,
 * in `world`, or in `world(round)` when the world changes from round to round.
 */
function simulate(worldOf: World | ((round: number) => World), drafters: string[], rounds: number, load?: () => ServiceLoad): { schedule: AdaptiveSchedule; rows: number[][] } {
  const schedule = new AdaptiveSchedule({ initial: startingKMatrix, memory: new ScheduleMemory(), load, maxDraft: 8, maxSubDraft: 8 });
  const rng = new Rng(7);
  const rows: number[][] = [];
  for (let r = 0; r < rounds; r++) {
    const world = typeof worldOf === 'function' ? worldOf(r) : worldOf;
    const K = schedule.plan('target', drafters);
    const counts = K[0]!.map((k, i) => k - (i ? K[0]![i - 1]! : 0));
    rows.push(counts);
    const sources: string[] = [];
    counts.forEach((m, i) => {
      if (m === 0) return;
      for (let j = 0; j < m; j++) sources.push(drafters[i]!);
      schedule.proposed(drafters[i]!, m, cost(world.propose[drafters[i]!]!, m), m);
    });
    let accepted = 0;
    while (accepted < sources.length && rng.uniform() < world.alpha[sources[accepted]!]!) accepted++;
    schedule.reviewed('target', sources, accepted, cost(world.review.target!, sources.length + 1), sources.length + 1);
  }
  return { schedule, rows };
}

const world: World = {
  alpha: { big: 0.8, small: 0.5 },
  review: { target: { fixed: 10, perToken: 0.5 } },
  propose: { big: { fixed: 0, perToken: 1.5 }, small: { fixed: 0, perToken: 0.2 } },
};

test('schedule - converges within a few dozen rounds to a K within 5% of the best for the measured acceptance and costs', (t) => {
  const drafters = ['big', 'small'];
  const { rows } = simulate(world, drafters, 200);
  const best = bestRate(world, drafters, 8);
  const late = rows.slice(50);
  const mean = late.reduce((a, c) => a + rate(world, drafters, c), 0) / late.length;
  t.true(mean >= 0.95 * best, `mean expected rate ${mean.toFixed(4)} vs best ${best.toFixed(4)} tokens/ms`);
  t.true(late.every((c) => c[0]! > 0), 'the accurate drafter drafts first');
});

test('schedule - a drafter whose tokens are never accepted is switched off, and speculation too when nothing pays', (t) => {
  const useless: World = { ...world, alpha: { big: 0.02, small: 0.02 } };
  const { rows } = simulate(useless, ['big', 'small'], 200);
  const late = rows.slice(100);
  const off = late.filter((c) => c.every((m) => m === 0)).length;
  t.true(off / late.length >= 0.85, `speculation off (exploration aside) in ${off} of ${late.length} late rounds`);
});

test('schedule - speculation switched off by a bad start (nothing accepted, reviews timed slow as in a cold process) comes back once drafts are accepted and reviews are fast again: the cost line\'s prior follows the recent one-token calls', (t) => {
  // in the first 60 rounds nothing is accepted and every reviewed token costs 20 times more; then the world holds
  const cold: World = { ...world, alpha: { big: 0, small: 0 }, review: { target: { fixed: world.review.target!.fixed, perToken: 20 * world.review.target!.perToken } } };
  const late = simulate((r) => (r < 60 ? cold : world), ['big', 'small'], 300).rows.slice(200);
  const drafting = late.filter((c) => c.some((m) => m > 0)).length;
  t.true(drafting / late.length >= 0.9, `drafting in ${drafting} of the last ${late.length} rounds`);
});

test('schedule - a saturated verifier shrinks K and switches speculation off', (t) => {
  const drafters = ['big', 'small'];
  const drafted = (load?: () => ServiceLoad) => {
    const late = simulate(world, drafters, 200, load).rows.slice(100);
    return late.reduce((a, c) => a + c.reduce((x, y) => x + y, 0), 0) / late.length;
  };
  const idle = drafted(() => ({ occupancy: 1, fixedMs: 10, tokenMs: 0.5 }));
  const busy = drafted(() => ({ occupancy: 8, fixedMs: 10, tokenMs: 0.5 }));
  const saturated = drafted(() => ({ occupancy: 64, fixedMs: 10, tokenMs: 0.5 }));
  t.true(idle > busy, `tokens drafted per round: idle ${idle.toFixed(2)}, 8 per batch ${busy.toFixed(2)}`);
  t.true(saturated < 0.5, `with 64 sessions per verifier pass speculation is off but for exploration: ${saturated.toFixed(2)} tokens drafted per round`);
});

test('schedule - uses the starting K until every level has been timed, and keeps the K shape when a level is lost', (t) => {
  const schedule = new AdaptiveSchedule({ initial: startingKMatrix, memory: new ScheduleMemory() });
  t.deepEqual(schedule.plan('target', ['d1', 'd2', 'mag']), startingKMatrix(['d1', 'd2', 'mag']));
  t.deepEqual(schedule.plan('target', ['d1', 'mag']), startingKMatrix(['d1', 'mag']));
  t.deepEqual(schedule.plan('target', []), []);
});

test('cost model - fits fixed and per-token cost from calls of several sizes, ignoring the first (warm-up) call', (t) => {
  const c = new LinearCost(1);
  c.add(4, 500); // warm-up outlier
  for (let i = 0; i < 40; i++) for (const x of [1, 2, 4, 8]) c.add(x, 6 + 0.4 * x);
  const { fixed, perToken } = c.coefficients();
  t.true(Math.abs(fixed - 6) < 0.5, `fixed ${fixed}`);
  t.true(Math.abs(perToken - 0.4) < 0.1, `per token ${perToken}`);
});

test('cost model - a line measured cold (slow calls of several sizes) does not outlive it once every call has one size: the slope falls back to the prior\'s share of the current one-token cost', (t) => {
  const c = new LinearCost(0.95);
  for (let i = 0; i < 10; i++) for (const x of [1, 3, 6]) c.add(x, 10 + 10 * x); // cold: 10 ms more per token
  for (let i = 0; i < 200; i++) c.add(1, 10.5); // warm, one-token calls only
  const { fixed, perToken } = c.coefficients();
  t.true(Math.abs(fixed + perToken - 10.5) < 0.2, `one token ${fixed + perToken}`);
  t.true(perToken < 1, `per token ${perToken} (the cold line had 10)`);
});

/**
 * MaG's acceptance depends on its state (a long match or a short one) and the state changes from
 * round to round, as the text repeats or not: the drafter reports it as its draft context. Returns
 * the mean expected tokens per ms of the rows chosen after warm-up, and the mean K in each state.
 */
function withContexts(draftContexts: boolean): { rate: number; kLong: number; kShort: number } {
  const alpha: Record<string, number> = { long: 0.97, short: 0.2 };
  const review = { fixed: 10, perToken: 3 };
  const schedule = new AdaptiveSchedule({ initial: startingKMatrix, memory: new ScheduleMemory(), maxDraft: 12, draftContexts });
  const rng = new Rng(11);
  let expected = 0;
  const ks: Record<string, number[]> = { long: [], short: [] };
  for (let r = 0; r < 600; r++) {
    const state = rng.uniform() < 0.5 ? 'long' : 'short';
    const K = schedule.plan('target', ['mag'], [], [state]);
    const k = K[0]![0]!;
    const [label] = schedule.labels(['mag'], [state]);
    schedule.proposed('mag', Math.max(1, k), 0.01, 0);
    let accepted = 0;
    while (accepted < k && rng.uniform() < alpha[state]!) accepted++;
    schedule.reviewed('target', new Array<string>(k).fill(label!), accepted, review.fixed + review.perToken * (k + 1), k + 1);
    if (r >= 200) {
      ks[state]!.push(k);
      const a = alpha[state]!;
      expected += (1 - a ** (k + 1)) / (1 - a) / (review.fixed + review.perToken * (k + 1));
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return { rate: expected / 400, kLong: mean(ks.long!), kShort: mean(ks.short!) };
}

test('schedule - counts acceptance per draft context: a long MaG match drafts more tokens than a short one, and the rounds pay more than with one table', (t) => {
  const by = withContexts(true);
  const one = withContexts(false);
  t.true(by.kLong >= 8 && by.kShort <= 2, `K by context: long match ${by.kLong.toFixed(1)}, short ${by.kShort.toFixed(1)}`);
  t.true(Math.abs(one.kLong - one.kShort) < 1, `one table drafts alike in both states: ${one.kLong.toFixed(1)}, ${one.kShort.toFixed(1)}`);
  t.true(by.rate > 1.1 * one.rate, `expected tokens per ms: by context ${by.rate.toFixed(4)}, one table ${one.rate.toFixed(4)}`);
  t.deepEqual(new AdaptiveSchedule({ initial: startingKMatrix, draftContexts: false }).labels(['d1', 'mag'], [undefined, '9']), ['d1', 'mag']);
  t.deepEqual(new AdaptiveSchedule({ initial: startingKMatrix }).labels(['d1', 'mag'], [undefined, '9']), ['d1', 'mag#9']);
});

test('MaG draft context - the class of its longest repeated suffix: under 2 tokens, 2, 3-8, 9-32, 33 and more', (t) => {
  t.deepEqual([0, 1, 2, 3, 8, 9, 32, 33, 500].map(magMatchClass), ['0', '0', '2', '3', '3', '9', '9', '33', '33']);
  const mag = new MagLevel();
  const loop = [5, 6, 7, 8, 9];
  t.is(mag.draftContext([1, 2, 3]), '0');
  t.is(mag.draftContext([...loop, ...loop]), '3');
  t.is(mag.draftContext([...loop, ...loop, ...loop, ...loop]), '9');
});

test('cascade - the schedule counts MaG\'s acceptance under its draft context and its costs under its name; with contexts off, under its name alone; output is target-only decoding\'s either way', async (t) => {
  const target = new MemoryModelSession({ name: 'target', vocabSize: 12, order: 2, seed: 11, sharpness: 6 });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize: 12, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  const req = { promptIds: [1, 2, 3, 1, 2, 3, 1, 2], maxTokens: 60, sampling: GREEDY, seed: 0, stopAtEos: false };
  const ar = await generateCascade(target, { drafters: [], kMatrix: [], lenience: 1 }, req);
  for (const draftContexts of [true, false]) {
    const memory = new ScheduleMemory();
    const cascade = { drafters: [{ kind: 'model' as const, session: d1 }, { kind: 'mag' as const }], kMatrix: 'auto' as const, lenience: 1 };
    for (let i = 0; i < 3; i++) {
      const r = await generateCascade(target, cascade, req, undefined, { scheduleMemory: memory, draftContexts });
      t.deepEqual(r.tokenIds, ar.tokenIds);
    }
    const pairs = [...memory.pairs.keys()];
    const mag = pairs.filter((k) => k.includes('>mag'));
    t.true(mag.length > 0, pairs.join(' '));
    t.true(mag.every((k) => (draftContexts ? /^(target|d1)>mag#(0|2|3|9|33)$/.test(k) : /^(target|d1)>mag$/.test(k))), mag.join(' '));
    t.true(pairs.includes('target>d1'), 'a neural drafter has no context');
    t.true([...memory.costs.keys()].every((k) => !k.includes('#')), [...memory.costs.keys()].join(' '));
  }
});

test('schedule - a call during which the level\'s session was placed again (a failover) is no sample of its cost: a seconds-long wait would price every draft out for the rest of the process', async (t) => {
  const target = new MemoryModelSession({ name: 'target', vocabSize: 12, order: 2, seed: 11, sharpness: 6 });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize: 12, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  const req = { promptIds: [1, 2, 3, 1, 2], maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false };
  const samples: number[] = [];
  const memory = new (class extends ScheduleMemory {
    override cost(key: string): LinearCost {
      const c = super.cost(key);
      if (key !== 'review:target') return c;
      const spy = Object.create(c) as LinearCost;
      spy.add = (tokens: number, ms: number) => (samples.push(ms), c.add(tokens, ms));
      return spy;
    }
  })();
  // the target's second review waits 300 ms and comes back placed again, as a RemoteLevel's call after a lost actor
  // (the first rounds review with the starting K until every level is timed past its warm-up, so there is a second)
  const inner = new ModelLevel('target', target, 'failover', GREEDY);
  let reviews = 0;
  const top: CascadeLevel = Object.assign(Object.create(inner) as CascadeLevel, {
    placements: 1,
    async review(this: { placements: number }, ...args: Parameters<CascadeLevel['review']>) {
      if (++reviews === 2) {
        await new Promise((r) => setTimeout(r, 300));
        this.placements++;
      }
      return inner.review(...args);
    },
  });
  const r = await runCascade(top, [new ModelLevel('d1', d1, 'failover-d1', GREEDY)], { kMatrix: 'auto', lenience: 1 }, req, { eosIds: [], scheduleMemory: memory });
  t.true(reviews >= 2, `the target reviewed ${reviews} times`);
  t.true(samples.length >= 2, `${samples.length} samples of the target's review cost`);
  t.true(samples.every((ms) => ms < 250), `no sample timed the failover: ${samples.map((ms) => ms.toFixed(1)).join(', ')}`);
  t.is(r.tokenIds.length, 40);
});
