import test from 'ava';
import fc from 'fast-check';
import { generateCascade, type CascadeConfig, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { distribution, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { BatchingSession } from '../src/models/batching-session.ts';
import type { KvPolicyName } from '../src/kernels/kv-policy.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';

function family(vocabSize: number) {
  const target = new MemoryModelSession({ name: 'target', vocabSize, order: 2, seed: 11, sharpness: 4 });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  const d2 = new MemoryModelSession({ name: 'd2', vocabSize, order: 1, seed: 13, resemble: { model: target, weight: 0.5 } });
  return { target, d1, d2 };
}

const mag: DrafterSpec = { kind: 'mag' };
/** A neural drafter over a bounded KV cache (ADORE placements b and c). */
const bounded = (session: MemoryModelSession, policy: KvPolicyName, budget: number): DrafterSpec => ({ kind: 'model', session, kv: { policy, budget: { budget, sinks: 0, recent: 0, rebuild: 0 } } });
const model = (session: MemoryModelSession): DrafterSpec => ({ kind: 'model', session });

/** Random cumulative upper-triangular K for n drafters. */
const kMatrix = (n: number) =>
  fc.array(fc.array(fc.integer({ min: 0, max: 3 }), { minLength: n, maxLength: n }), { minLength: n, maxLength: n }).map((rows) =>
    rows.map((row, r) => {
      let acc = 0;
      return row.map((x, c) => (c < r ? 0 : (acc += x + (c === n - 1 && acc + x === 0 ? 1 : 0))));
    }),
  );

test('cascade - greedy output equals target-only greedy for every cascade shape, K and lenience', async (t) => {
  const { target, d1, d2 } = family(24);
  const shapes: DrafterSpec[][] = [[], [model(d1)], [mag], [model(d1), mag], [model(d2), mag], [model(d1), model(d2), mag], [model(d1), model(d2)]];
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: shapes.length - 1 }).chain((s) => fc.tuple(fc.constant(s), kMatrix(shapes[s]!.length))),
      fc.array(fc.integer({ min: 0, max: 23 }), { minLength: 1, maxLength: 12 }),
      fc.constantFrom(1, 1, 2, 4),
      async ([s, K], prompt, lenience) => {
        const zeroInner = K.length > 1 && prompt.length % 2 === 0; // horizontal only: drafters below the target draft token by token
        const config: CascadeConfig = { drafters: shapes[s]!, kMatrix: zeroInner ? K.map((row, r) => (r === 0 ? row : row.map(() => 0))) : K, lenience };
        const req = { promptIds: prompt, maxTokens: 30, sampling: GREEDY, seed: 0, stopAtEos: false };
        const want = await generateAutoregressive(target, req);
        const got = await generateCascade(target, config, req);
        return JSON.stringify(got.tokenIds) === JSON.stringify(want.tokenIds);
      },
    ),
    { numRuns: 150, seed: 3 },
  );
  for (const m of [target, d1, d2]) t.is(m.liveSequences(), 0, `${m.spec.name} released every sequence`);
});

/** The target's joint distribution of the first two tokens after `prompt`. */
function targetJoint(target: MemoryModelSession, prompt: number[], sampling: SamplingParams): number[] {
  const V = target.spec.vocabSize;
  const p0 = distribution(target.nextLogits(prompt), sampling);
  const joint: number[] = [];
  for (let a = 0; a < V; a++) {
    const p1 = distribution(target.nextLogits([...prompt, a]), sampling);
    for (let b = 0; b < V; b++) joint.push(p0[a]! * p1[b]!);
  }
  return joint;
}

const sampledConfigs: [string, (f: ReturnType<typeof family>) => CascadeConfig, SamplingParams][] = [
  ['sd', (f) => ({ drafters: [model(f.d1)], kMatrix: [[3]], lenience: 1 }), { temperature: 1, topK: 0, topP: 1 }],
  ['mag', () => ({ drafters: [mag], kMatrix: [[3]], lenience: 1 }), { temperature: 1, topK: 0, topP: 1 }],
  ['csd', (f) => ({ drafters: [model(f.d1), model(f.d2), mag], kMatrix: [[1, 2, 3], [0, 1, 2], [0, 0, 2]], lenience: 1 }), { temperature: 0.7, topK: 0, topP: 1 }],
  ['csd lenient drafters, top-k/top-p', (f) => ({ drafters: [model(f.d1), model(f.d2), mag], kMatrix: [[2, 3, 4], [0, 1, 3], [0, 0, 2]], lenience: 3 }), { temperature: 1, topK: 4, topP: 0.9 }],
  ['drafters over bounded caches (placement b)', (f) => ({ drafters: [bounded(f.d1, 'h2o', 3), bounded(f.d2, 'window', 3), mag], kMatrix: [[1, 2, 3], [0, 1, 2], [0, 0, 2]], lenience: 1 }), { temperature: 1, topK: 0, topP: 1 }],
  ['csd with the adaptive schedule (K auto)', (f) => ({ drafters: [model(f.d1), model(f.d2), mag], kMatrix: 'auto', lenience: 1 }), { temperature: 0.8, topK: 0, topP: 1 }],
  ['self-draft: the target over a bounded cache (placement c)', (f) => ({ drafters: [bounded(f.target, 'h2o', 3), mag], kMatrix: [[2, 4], [0, 2]], lenience: 1 }), { temperature: 0.8, topK: 0, topP: 1 }],
];

for (const [name, build, sampling] of sampledConfigs) {
  test(`cascade - sampling: ${name} reproduces the target's distribution of the first two tokens (chi-square)`, async (t) => {
    const f = family(5);
    const prompt = [1, 3, 2];
    const config = build(f);
    const counts = new Array(25).fill(0);
    const N = 12_000;
    for (let seed = 0; seed < N; seed++) {
      const r = await generateCascade(f.target, config, { promptIds: prompt, maxTokens: 2, sampling, seed, stopAtEos: false });
      counts[r.tokenIds[0]! * 5 + r.tokenIds[1]!]++;
    }
    const { chi2, df, pValue, impossible } = chiSquare(counts, targetJoint(f.target, prompt, sampling));
    t.is(impossible, 0, 'no token the target could not produce');
    t.true(pValue > FALSE_FAILURE, `chi2 ${chi2.toFixed(1)} on ${df} df, p = ${pValue.toExponential(2)}`);
  });
}

test('cascade - bounded drafter caches (placement b) and self-draft (placement c) keep greedy output identical', async (t) => {
  const { target, d1, d2 } = family(24);
  const policies: KvPolicyName[] = ['window', 'streaming', 'h2o'];
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...policies),
      fc.integer({ min: 2, max: 10 }),
      fc.boolean(),
      fc.array(fc.integer({ min: 0, max: 23 }), { minLength: 1, maxLength: 16 }),
      async (policy, budget, self, prompt) => {
        const sinks = policy === 'streaming' ? 1 : 0;
        const kv = { policy, budget: { budget, sinks, recent: 0, rebuild: 0 } };
        const drafters: DrafterSpec[] = self
          ? [{ kind: 'model', session: target, kv }, { kind: 'model', session: d2, kv }, mag]
          : [{ kind: 'model', session: d1, kv }, { kind: 'model', session: d2, kv }, mag];
        const req = { promptIds: prompt, maxTokens: 30, sampling: GREEDY, seed: 0, stopAtEos: false };
        const want = await generateAutoregressive(target, req);
        const got = await generateCascade(target, { drafters, kMatrix: [[2, 3, 5], [0, 1, 3], [0, 0, 2]], lenience: 1 }, req);
        return JSON.stringify(got.tokenIds) === JSON.stringify(want.tokenIds);
      },
    ),
    { numRuns: 80, seed: 7 },
  );
  for (const m of [target, d1, d2]) t.is(m.liveSequences(), 0, `${m.spec.name} released every sequence`);
});

test('cascade - statistics count rounds, drafts, acceptances by position and model calls', async (t) => {
  const { target, d1 } = family(24);
  const r = await generateCascade(target, { drafters: [model(d1), mag], kMatrix: [[2, 4], [0, 3]], lenience: 1 }, { promptIds: [1, 2, 3], maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false });
  const s = r.stats;
  t.is(s.generatedTokens, 40);
  t.true(s.rounds >= 1 && s.rounds <= 40);
  t.is(s.models.target!.reviews, s.rounds);
  t.is(s.draftedTokens, s.draftedByPosition.reduce((a, b) => a + b, 0));
  t.true(s.acceptedByPosition.every((a, i) => a <= s.draftedByPosition[i]!));
  t.true(s.draftedByPosition.every((d, i) => i === 0 || d <= s.draftedByPosition[i - 1]!));
  t.true(s.meanAcceptanceLength >= 1);
  t.true(s.models.d1!.reviews > 0 && s.models.mag!.proposals > 0);
  t.is(s.models.d1!.proposals, 0, 'd1 only reviews: the vertical cascade never lets it draft token by token');
  t.is(s.costCoefficients.target, 1);
  t.is(s.costCoefficients.mag, 0);
  const weighted = s.models.target!.forwardPasses + s.models.d1!.forwardPasses * s.costCoefficients.d1!;
  t.true(Math.abs(s.swi - s.generatedTokens / weighted) < 1e-9);
});

test('cascade - impossible configurations are refused with the reason', async (t) => {
  const { target, d1 } = family(24);
  const req = { promptIds: [1], maxTokens: 3, sampling: GREEDY, seed: 0 };
  await t.throwsAsync(generateCascade(target, { drafters: [mag, model(d1)], kMatrix: [[1, 2], [0, 1]], lenience: 1 }, req), { message: /mag can only be the last/ });
  await t.throwsAsync(generateCascade(target, { drafters: [model(d1)], kMatrix: [[1], [1]], lenience: 1 }, req), { message: /needs 1 rows/ });
  await t.throwsAsync(generateCascade(target, { drafters: [model(d1), mag], kMatrix: [[3, 2], [0, 1]], lenience: 1 }, req), { message: /cumulative/ });
  await t.throwsAsync(generateCascade(target, { drafters: [mag], kMatrix: [[0]], lenience: 1 }, req), { message: /drafts nothing/ });
  await t.notThrowsAsync(generateCascade(target, { drafters: [model(d1), mag], kMatrix: [[2, 4], [0, 0]], lenience: 1 }, req), 'a zero row below the target drafts autoregressively');
  await t.throwsAsync(generateCascade(target, { drafters: [mag], kMatrix: [[2]], lenience: 0.5 }, req), { message: /lenience/ });
  const other = new MemoryModelSession({ name: 'other', vocabSize: 30, order: 1, seed: 1 });
  await t.throwsAsync(generateCascade(target, { drafters: [model(other)], kMatrix: [[2]], lenience: 1 }, req), { message: /share one tokenizer/ });
});

test('cascade - sampling: adaptive K with every model batched across 8 concurrent requests reproduces the target\'s distribution (chi-square)', async (t) => {
  const f = family(5);
  const [target, d1, d2] = [f.target, f.d1, f.d2].map((m) => new BatchingSession(m, { windowMs: 1 }));
  const config: CascadeConfig = { drafters: [{ kind: 'model', session: d1! }, { kind: 'model', session: d2! }, mag], kMatrix: 'auto', lenience: 1 };
  const sampling = { temperature: 1, topK: 0, topP: 1 };
  const prompt = [1, 3, 2];
  const counts = new Array(25).fill(0);
  const N = 12_000;
  for (let seed = 0; seed < N; seed += 8) {
    const runs = await Promise.all(Array.from({ length: 8 }, (_, i) => generateCascade(target!, config, { promptIds: prompt, maxTokens: 2, sampling, seed: seed + i, stopAtEos: false })));
    for (const r of runs) counts[r.tokenIds[0]! * 5 + r.tokenIds[1]!]++;
  }
  t.true(target!.counters.largestBatch > 1, 'requests were batched');
  const { chi2, df, pValue, impossible } = chiSquare(counts, targetJoint(f.target, prompt, sampling));
  t.is(impossible, 0, 'no token the target could not produce');
  t.true(pValue > FALSE_FAILURE, `chi2 ${chi2.toFixed(1)} on ${df} df, p = ${pValue.toExponential(2)}`);
});
