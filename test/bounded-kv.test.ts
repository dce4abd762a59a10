import test from 'ava';
import fc from 'fast-check';
import { BoundedSequence } from '../src/engine/bounded-kv.ts';
import { ControllerTrack } from '../src/kernels/adore-controller.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { loadController } from '../src/models/family.ts';
import { gatherRows, MemoryKvStore } from '../src/models/kv-store.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import type { KvRows, ModelSession } from '../src/models/session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family } from './helpers/family.ts';

const model = await OrtModelSession.open(dirOf(family.drafters.at(-1)!));
test.after.always(() => model.close());
const tok = TextTokenizer.load(model.spec.tokenizerPath);
const prompt = tok.encode('import os\nimport sys\n\n\ndef main(argv):\n    """Parse the arguments and run."""\n'.repeat(4));
const request = (kv?: Parameters<typeof generateAutoregressive>[1]['kv']) => ({ promptIds: prompt, maxTokens: 24, sampling: GREEDY, seed: 0, stopAtEos: false, kv });

test('bounded KV - a budget the sequence never reaches changes nothing', async (t) => {
  const full = await generateAutoregressive(model, request());
  const roomy = await generateAutoregressive(model, request({ policy: 'window', budget: { budget: prompt.length + 64, sinks: 0, recent: 0, rebuild: 0 } }));
  t.deepEqual(roomy.tokenIds, full.tokenIds);
  t.is(roomy.stats.kv?.releases, 0);
});

for (const policy of ['window', 'streaming'] as const) {
  test(`bounded KV - ${policy}: the cache never holds more than its budget, prompt and decode alike`, async (t) => {
    const budget = { budget: 24, sinks: policy === 'streaming' ? 4 : 0, recent: 2, rebuild: 0 };
    const r = await generateAutoregressive(model, request({ policy, budget }));
    t.is(r.tokenIds.length, 24);
    t.true(r.stats.kv!.peakResident <= 24, `peak ${r.stats.kv!.peakResident}`);
    t.is(r.stats.kv!.releases, prompt.length + 23 - 24, 'everything but the budget was released');
  });
}

test('bounded KV - streaming keeps its sink tokens and spills released KV to the store', async (t) => {
  const store = new MemoryKvStore();
  const seq = new BoundedSequence(model, 'spill', { policy: 'streaming', budget: { budget: 16, sinks: 4, recent: 0, rebuild: 0 } }, store);
  try {
    await seq.feed(prompt.slice(0, 40));
    t.true(seq.resident <= 16);
    t.is(model.length('spill'), seq.resident, 'the runner holds exactly the resident rows');
    const held = await store.get('spill', model.spec.name, Array.from({ length: 40 }, (_, i) => i));
    t.is(held.positions.length, 40 - seq.resident);
    t.true(held.positions.every((p) => p >= 4), 'sinks are never released');
    t.is(held.rows?.count, held.positions.length);
  } finally {
    await seq.close();
  }
  t.is(store.size(), 0, 'closing the sequence drops its spilled KV');
});

test('bounded KV - bad settings are refused with the reason', async (t) => {
  await t.throwsAsync(generateAutoregressive(model, request({ policy: 'window', budget: { budget: 4, sinks: 2, recent: 2, rebuild: 0 } })), { message: /must leave room/ });
  await t.throwsAsync(generateAutoregressive(model, request({ policy: 'adore', budget: { budget: 16, sinks: 0, recent: 0, rebuild: 1 } })), { message: /needs the ADORE controller/ });
});

test('bounded KV - a prompt is fed in passes of the prefill chunk, never over budget; a chunk too large is refused', async (t) => {
  const toy = new MemoryModelSession({ name: 'toy', vocabSize: 16, order: 2, seed: 5 });
  const sizes: number[] = [];
  const step = toy.step.bind(toy);
  toy.step = async (item, rows, attention) => {
    sizes.push(item.inputIds.length);
    const r = await step(item, rows, attention);
    t.true(toy.length('chunked') <= 12, `resident ${toy.length('chunked')}`);
    return r;
  };
  const seq = new BoundedSequence(toy, 'chunked', { policy: 'streaming', budget: { budget: 12, sinks: 2, recent: 0, rebuild: 0 }, prefillChunk: 3 });
  const logits = await seq.feed(Array.from({ length: 20 }, (_, i) => i % 16), 'all');
  t.is(logits.length, 20 * 16, 'every prompt token gets its logits row');
  t.deepEqual(sizes, [3, 3, 3, 3, 3, 3, 2]);
  t.is(seq.resident, 12);
  await seq.close();
  t.throws(() => new BoundedSequence(toy, 'x', { policy: 'window', budget: { budget: 8, sinks: 0, recent: 2, rebuild: 0 }, prefillChunk: 7 }), { message: /prefill chunk must be an integer from 1 to the free budget \(6/ });
  const scorer = { score: async (positions: readonly number[]) => positions };
  t.throws(() => new BoundedSequence(toy, 'y', { policy: 'adore', budget: { budget: 8, sinks: 0, recent: 0, rebuild: 1 }, prefillChunk: 9 }, undefined, scorer), { message: /prefill chunk/ });
});

test('bounded KV - a batched release frees s slots at once when full, never exceeding the budget', async (t) => {
  const toy = new MemoryModelSession({ name: 'toy', vocabSize: 16, order: 2, seed: 5 });
  const evictions: number[] = [];
  const step = toy.step.bind(toy);
  toy.step = async (item, rows, attention) => {
    if (item.evict?.length) evictions.push(item.evict.length);
    return step(item, rows, attention);
  };
  const seq = new BoundedSequence(toy, 'batched', { policy: 'streaming', budget: { budget: 12, sinks: 2, recent: 0, rebuild: 0 }, releaseBatch: 4 });
  const resident: number[] = [];
  for (let i = 0; i < 40; i++) {
    await seq.feed([i % 16]);
    resident.push(seq.resident);
  }
  t.true(resident.every((n) => n <= 12), `resident ${resident}`);
  t.true(resident.slice(12).every((n) => n >= 9), 'a full cache drops to budget - s + 1 at the least (with the new token)');
  t.true(evictions.length > 0 && evictions.every((n) => n === 4), `evictions ${evictions}`);
  t.is(seq.releases, 40 - seq.resident);
  t.true(seq.residentPositions.slice(0, 2).join() === '0,1', 'sinks stay');
  await seq.close();
  t.throws(() => new BoundedSequence(toy, 'x', { policy: 'window', budget: { budget: 8, sinks: 0, recent: 0, rebuild: 0 }, releaseBatch: 9 }), { message: /release batch must be an integer from 1 to the free budget \(8/ });
});

test('bounded KV - h2o keeps the tokens that received the most attention, within the budget', async (t) => {
  const toy = new MemoryModelSession({ name: 'toy', vocabSize: 16, order: 2, seed: 5 });
  const seq = new BoundedSequence(toy, 'h2o', { policy: 'h2o', budget: { budget: 8, sinks: 0, recent: 2, rebuild: 0 } });
  // The toy model attends uniformly, so older tokens (seen while the cache was smaller) have received
  // more attention per query: H2O keeps them (and the protected recent window), unlike a sliding window.
  for (let i = 0; i < 20; i++) {
    await seq.feed([i % 16]);
    t.true(seq.resident <= 8);
  }
  t.is(toy.length('h2o'), 8);
  await seq.close();
  t.is(toy.liveSequences(), 0);
});

test('bounded KV - h2o scores the attention a token received per query, not its age: with local attention it keeps the recent tokens', async (t) => {
  // Each query pays 0.8 of its attention to the 4 newest tokens (itself included) and 0.2 to the rest.
  // Summed over steps, an old token collects 0.2 / (cache - 4) from every later query and ends up
  // outscoring the tokens the model actually attends to; per query, it does not.
  const toy = new MemoryModelSession({ name: 'toy', vocabSize: 16, order: 2, seed: 5 });
  const step = toy.step.bind(toy);
  toy.step = async (item, rows, attention) => {
    const r = await step(item, rows, attention);
    if (!attention) return r;
    const s = item.inputIds.length;
    const total = toy.length(item.seqId);
    const local = new Float32Array(s * total);
    for (let q = 0; q < s; q++) {
      const seen = total - s + q + 1;
      const near = Math.min(4, seen);
      for (let k = 0; k < seen; k++) local[q * total + k] = k >= seen - near ? 0.8 / near + (near === seen ? 0.2 / near : 0) : 0.2 / (seen - near);
    }
    return { ...r, attention: local };
  };
  const seq = new BoundedSequence(toy, 'local', { policy: 'h2o', budget: { budget: 8, sinks: 0, recent: 2, rebuild: 0 } });
  for (let i = 0; i < 40; i++) await seq.feed([i % 16]);
  t.deepEqual([...seq.residentPositions].sort((a, b) => a - b), [32, 33, 34, 35, 36, 37, 38, 39]);
  await seq.close();
});

test('bounded KV - a scorer (ADORE) releases and rebuilds; a rebuilt token has exactly its original KV', async (t) => {
  const store = new MemoryKvStore();
  // Scripted controller: first newer is better; from step 30 on, positions 0 and 1 matter most.
  let favourEarly = false;
  const scorer = { score: async (positions: readonly number[]) => positions.map((p) => (favourEarly && p < 2 ? 1000 : p)) };
  const seq = new BoundedSequence(model, 'adore', { policy: 'adore', budget: { budget: 12, sinks: 0, recent: 1, rebuild: 2 } }, store, scorer);
  try {
    for (const id of prompt.slice(0, 30)) await seq.feed([id]);
    t.false(seq.residentPositions.includes(0), 'position 0 was released');
    const spilled = await store.get('adore', model.spec.name, [0]);
    t.is(spilled.positions.length, 1);
    favourEarly = true;
    await seq.feed([prompt[30]!]); // scored now: 0 and 1 win back their place at the next step
    await seq.feed([prompt[31]!]);
    t.true(seq.residentPositions.includes(0) && seq.residentPositions.includes(1), `resident ${seq.residentPositions}`);
    t.is(seq.rebuilds, 2);
    t.true(seq.resident <= 12);
    t.is(model.length('adore'), seq.resident, 'the runner holds exactly the resident rows');
    // Take position 0's row out of the runner again: it is the row computed at its original position.
    const row = seq.residentPositions.indexOf(0);
    const now = await model.evict('adore', [row], true);
    t.deepEqual(now!.tensors, spilled.rows!.tensors);
  } finally {
    await seq.close();
  }
  t.is(store.size(), 0);
});

test('bounded KV - adore without a controller is refused', (t) => {
  t.throws(() => new BoundedSequence(model, 'x', { policy: 'adore', budget: { budget: 8, sinks: 0, recent: 0, rebuild: 0 } }), { message: /needs the ADORE controller/ });
});

test('bounded KV - gathering rows in runs equals gathering them one by one', (t) => {
  const heads = 3, n = 40, width = 5;
  const src = Float32Array.from({ length: heads * n * width }, (_, i) => i);
  const one = (rows: number[]) => {
    const dst = new Float32Array(heads * rows.length * width);
    for (let h = 0; h < heads; h++) rows.forEach((r, j) => dst.set(src.subarray((h * n + r) * width, (h * n + r + 1) * width), (h * rows.length + j) * width));
    return dst;
  };
  let seed = 7;
  const rand = (k: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % k);
  const cases: number[][] = [[], [0], [n - 1], Array.from({ length: n }, (_, i) => i), [5, 6, 7, 3, 4, 9, 10, 0]];
  for (let c = 0; c < 50; c++) {
    const gone = new Set(Array.from({ length: rand(6) }, () => rand(n)));
    cases.push(Array.from({ length: n }, (_, i) => i).filter((i) => !gone.has(i)), [...gone]);
  }
  for (const rows of cases) t.deepEqual(gatherRows(src, n, rows, heads), one(rows), `rows ${rows.join(',')}`);
});

/** Every KV row the runner holds for a sequence, in cache order, read without changing them (taken out and put back). */
async function runnerRows(session: ModelSession, seqId: string): Promise<KvRows> {
  const rows = (await session.evict(seqId, Array.from({ length: session.length(seqId) }, (_, i) => i), true))!;
  await session.insert(seqId, rows);
  return rows;
}

/** Row r of tensor k (key0, value0, key1, …) of a block, over all heads. */
const rowOf = (rows: KvRows, k: number, r: number) => gatherRows(rows.tensors[k]!, rows.count, [r], rows.kvHeads);

test('bounded KV - rolled back after rebuilds, every resident and every spilled row is the KV of the token now at its position', async (t) => {
  // The toy model's KV row of a token is the token id itself, so a row under the wrong label shows as the wrong id.
  const budgets = fc
    .record({ budget: fc.integer({ min: 4, max: 14 }), sinks: fc.integer({ min: 0, max: 2 }), recent: fc.integer({ min: 0, max: 3 }), rebuild: fc.integer({ min: 1, max: 3 }), releaseBatch: fc.integer({ min: 1, max: 3 }) })
    .filter((b) => b.budget - b.sinks - b.recent >= Math.max(2, b.releaseBatch));
  // Each round: roll back `back` tokens (a rejected proposal), then feed a few (the correction, or a new proposal).
  const rounds = fc.array(fc.record({ back: fc.nat(4), tokens: fc.array(fc.integer({ min: 0, max: 15 }), { minLength: 1, maxLength: 4 }) }), { minLength: 4, maxLength: 40 });
  await fc.assert(
    fc.asyncProperty(budgets, fc.integer(), rounds, async ({ releaseBatch, ...budget }, seed, plan) => {
      const toy = new MemoryModelSession({ name: 'toy', vocabSize: 16, order: 2, seed: 5 });
      const store = new MemoryKvStore();
      // Scores that change every step, so released tokens keep winning their place back (rebuilds).
      const scorer = { score: async (positions: readonly number[], _: readonly number[], newest: number) => positions.map((p) => Math.abs(Math.sin(seed + p * 12.9898 + newest * 78.233))) };
      const seq = new BoundedSequence(toy, 'drafter', { policy: 'adore', budget, releaseBatch }, store, scorer);
      const fed: number[] = [];
      let longest = 0;
      for (const { back, tokens } of plan) {
        const at = Math.max(0, fed.length - back);
        fed.length = at;
        fed.push(...tokens);
        longest = Math.max(longest, fed.length);
        await seq.feed(tokens, 'last', at);
        const resident = seq.residentPositions;
        const rows = Array.from((await runnerRows(toy, 'drafter')).tensors[0]!).join();
        if (rows !== resident.map((p) => fed[p]!).join()) throw new Error(`the runner holds tokens ${rows} at positions ${resident.join()} of ${fed.join()}`);
        const spilled = await store.get('drafter', 'toy', Array.from({ length: longest }, (_, p) => p));
        const held = Array.from(spilled.rows?.tensors[0] ?? []).join();
        if (held !== spilled.positions.map((p) => fed[p]!).join()) throw new Error(`the store holds tokens ${held} at positions ${spilled.positions.join()} of ${fed.join()}`);
      }
      await seq.close();
    }),
    { numRuns: 150, includeErrorInReport: true },
  );
  t.pass();
});

test('bounded KV - on the real model, a rejected proposal after a rebuild leaves no rejected KV resident or spilled', async (t) => {
  const store = new MemoryKvStore();
  // Scripted controller: newer is better, except that positions 0 and 1 matter most while favourEarly is set.
  let favourEarly = false;
  const scorer = { score: async (positions: readonly number[]) => positions.map((p) => (favourEarly && p < 2 ? 1000 : p)) };
  const seq = new BoundedSequence(model, 'proposal', { policy: 'adore', budget: { budget: 12, sinks: 0, recent: 1, rebuild: 2 } }, store, scorer);
  const accepted = prompt.slice(0, 33);
  try {
    for (const id of accepted) await seq.feed([id]);
    // The drafter proposes three tokens one by one; 0 and 1 are rebuilt while it does (after 32 and 33 in cache order).
    favourEarly = true;
    for (const id of [7, 8, 9]) await seq.feed([id]);
    t.true(seq.rebuilds >= 2, `rebuilds ${seq.rebuilds}`);
    // The target rejects all three: the drafter rolls back to position 33 and takes the target's token there.
    const correction = prompt[33]!;
    await seq.feed([correction], 'last', 33);
    const tokens = [...accepted, correction];
    // The reference: the same tokens under a full cache. Layer 0's K and V depend only on the token and
    // its position, so each row of a bounded cache must equal the full cache's there.
    await model.forward({ seqId: 'proposal-full', inputIds: tokens });
    const full = await runnerRows(model, 'proposal-full');
    await model.release('proposal-full');
    const near = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).every((v, i) => Math.abs(v - b[i]!) < 1e-3);
    const rows = await runnerRows(model, 'proposal');
    const resident = seq.residentPositions;
    t.true(resident.includes(0) && resident.includes(1), `resident ${resident}`);
    for (const [r, p] of resident.entries()) for (const k of [0, 1]) t.true(near(rowOf(rows, k, r), rowOf(full, k, p)), `row ${r} (position ${p}), tensor ${k}`);
    // Everything goes back to newer-is-better: the next steps release 0 and 1 again, spilling their KV.
    favourEarly = false;
    for (const id of prompt.slice(34, 48)) await seq.feed([id]);
    const spilled = await store.get('proposal', model.spec.name, [0, 1]);
    t.deepEqual(spilled.positions, [0, 1]);
    for (const [j, p] of spilled.positions.entries()) for (const k of [0, 1]) t.true(near(rowOf(spilled.rows!, k, j), rowOf(full, k, p)), `spilled position ${p}, tensor ${k}`);
  } finally {
    await seq.close();
  }
});

test('bounded KV - the ADORE controller forgets rolled-back tokens: after a rollback it scores as a fresh track does', async (t) => {
  const controller = loadController(family);
  const drafted = prompt.slice(0, 12);
  const corrected = [...prompt.slice(0, 8), 5, 6, 7, 8];
  const all = corrected.map((_, i) => i);
  const track = new ControllerTrack(controller);
  await track.score(all, drafted, 11);
  // Rolled back to 8 and fed four other tokens at once: the same positions, other tokens.
  t.deepEqual(Array.from(await track.score(all, corrected, 11)), Array.from(await new ControllerTrack(controller).score(all, corrected, 11)));
});
