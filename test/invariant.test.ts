import test from 'ava';
import { generateCascade, runCascade, type CascadeConfig, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive, type GenerateRequest } from '../src/engine/generate.ts';
import { Block, MagLevel, ModelLevel, newStats, type CascadeLevel } from '../src/engine/levels.ts';
import { LevelUnavailableError } from '../src/errors.ts';
import { reviewInvariant } from '../src/kernels/acceptance.ts';
import { PositionNoise } from '../src/kernels/noise.ts';
import { distribution, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { BatchingSession } from '../src/models/batching-session.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import type { ModelSession } from '../src/models/session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family as modelFamily } from './helpers/family.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';

const P = new Float32Array([0.5, 0.2, 0, 0.15, 0.1, 0.05]);

test('invariant - noise draws are distributed as p over seeds and over positions (chi-square), never outside its support', (t) => {
  const N = 20_000;
  const overSeeds = new Array<number>(P.length).fill(0);
  const overPositions = new Array<number>(P.length).fill(0);
  const fixed = new PositionNoise(7);
  for (let i = 0; i < N; i++) {
    overSeeds[new PositionNoise(i).draw(P, 12)]!++;
    overPositions[fixed.draw(P, i)]!++;
  }
  for (const [name, counts] of [['seeds', overSeeds], ['positions', overPositions]] as const) {
    const { chi2, df, pValue, impossible } = chiSquare(counts, P);
    t.is(impossible, 0, `over ${name}: no draw outside the support`);
    t.true(pValue > FALSE_FAILURE, `over ${name}: chi2 ${chi2.toFixed(1)} on ${df} df, p = ${pValue.toExponential(2)}`);
  }
});

test('invariant - draws at neighbouring positions are independent (joint chi-square over seeds)', (t) => {
  const q = new Float32Array([0.6, 0.3, 0.1]);
  const counts = new Array<number>(9).fill(0);
  for (let seed = 0; seed < 18_000; seed++) {
    const noise = new PositionNoise(seed);
    counts[noise.draw(q, 40) * 3 + noise.draw(q, 41)]!++;
  }
  const joint = Array.from({ length: 9 }, (_, i) => q[Math.floor(i / 3)]! * q[i % 3]!);
  const { chi2, df, pValue } = chiSquare(counts, joint);
  t.true(pValue > FALSE_FAILURE, `chi2 ${chi2.toFixed(1)} on ${df} df, p = ${pValue.toExponential(2)}`);
});

test('invariant - noise is stateless: a draw depends on (seed, position, p) only; one-hot p returns its token; an empty p is refused', (t) => {
  const a = new PositionNoise(99);
  const forward = [0, 1, 2, 3, 4].map((pos) => a.draw(P, pos));
  const backward = [4, 3, 2, 1, 0].map((pos) => new PositionNoise(99).draw(P, pos)).reverse();
  t.deepEqual(forward, backward);
  t.is(a.uniform(5, 3), new PositionNoise(99).uniform(5, 3));
  t.true(a.uniform(5, 3) > 0 && a.uniform(5, 3) < 1);
  t.not(new PositionNoise(1).uniform(0, 0), new PositionNoise(2 ** 32 + 1).uniform(0, 0), 'every bit of the seed counts');
  t.is(a.draw(new Float32Array([0, 0, 1, 0]), 3), 2);
  t.throws(() => a.draw(new Float32Array(4), 0), { instanceOf: RangeError, message: /no positive probability/ });
  t.throws(() => a.draw(P, -1), { instanceOf: RangeError, message: /position/ });
});

test('invariant - a draft and a review drawn with the same noise agree at least (1 - TV)/(1 + TV) of the time (the coupling bound)', (t) => {
  const p = new Float32Array([0.4, 0.3, 0.2, 0.1]);
  const q = new Float32Array([0.1, 0.2, 0.3, 0.4]);
  const tv = p.reduce((a, x, i) => a + Math.abs(x - q[i]!), 0) / 2;
  let agree = 0;
  const N = 20_000;
  for (let seed = 0; seed < N; seed++) {
    const noise = new PositionNoise(seed);
    if (noise.draw(p, 3) === noise.draw(q, 3)) agree++;
  }
  const bound = (1 - tv) / (1 + tv);
  t.log(`agreement ${(agree / N).toFixed(3)}, bound ${bound.toFixed(3)}, rejection sampling's 1 - TV ${(1 - tv).toFixed(3)}`);
  t.true(agree / N >= bound - 4 * Math.sqrt((bound * (1 - bound)) / N));
});

test('invariant - review accepts while the draft equals the reviewer\'s own draw, then emits that draw', (t) => {
  const noise = new PositionNoise(5);
  const own = [0, 1, 2, 3].map((i) => noise.draw(P, 10 + i));
  t.deepEqual(reviewInvariant(own.slice(0, 3), () => P, noise, 10), { accepted: 3, token: own[3]! });
  const wrong = own[1] === 0 ? 1 : 0;
  t.deepEqual(reviewInvariant([own[0]!, wrong, own[2]!], () => P, noise, 10), { accepted: 1, token: own[1]! });
});

/** A target and two drafters resembling it (in-memory: logits are a function of the context). */
function memoryFamily(vocabSize: number) {
  const target = new MemoryModelSession({ name: 'target', vocabSize, order: 2, seed: 11, sharpness: 3 });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  const d2 = new MemoryModelSession({ name: 'd2', vocabSize, order: 1, seed: 13, resemble: { model: target, weight: 0.5 } });
  return { target, d1, d2 };
}

const model = (session: ModelSession): DrafterSpec => ({ kind: 'model', session });
const mag: DrafterSpec = { kind: 'mag' };

const samplings: [string, SamplingParams][] = [
  ['T = 1', { temperature: 1, topK: 0, topP: 1 }],
  ['T = 0.7 with top-k 5, top-p 0.9', { temperature: 0.7, topK: 5, topP: 0.9 }],
  ['T = 0.9 with min-p and penalties', { temperature: 0.9, topK: 0, topP: 1, minP: 0.02, repetitionPenalty: 1.2, presencePenalty: 0.3, logitBias: { 3: 1 } }],
];

test('invariant - a seeded sampled request gives target-only decoding\'s tokens under sd, csd, MaG, fixed K and auto, batched or not', async (t) => {
  const f = memoryFamily(12);
  const batched = [f.target, f.d1, f.d2].map((m) => new BatchingSession(m, { windowMs: 1 }));
  const shapes: [string, (m: { target: ModelSession; d1: ModelSession; d2: ModelSession }) => CascadeConfig][] = [
    ['sd', (m) => ({ drafters: [model(m.d1)], kMatrix: [[4]], lenience: 1 })],
    ['mag', () => ({ drafters: [mag], kMatrix: [[4]], lenience: 1 })],
    ['csd 3 levels', (m) => ({ drafters: [model(m.d1), model(m.d2), mag], kMatrix: [[1, 3, 5], [0, 1, 3], [0, 0, 2]], lenience: 1 })],
    ['csd lenient drafters (lenience 3: only the target must be exact)', (m) => ({ drafters: [model(m.d1), model(m.d2)], kMatrix: [[2, 4], [0, 2]], lenience: 3 })],
    ['csd K auto', (m) => ({ drafters: [model(m.d1), model(m.d2), mag], kMatrix: 'auto', lenience: 1 })],
    ['csd K auto, MaG first from 2 tokens', (m) => ({ drafters: [model(m.d1), model(m.d2), mag], kMatrix: 'auto', lenience: 1, magFirst: 2 })],
    ['self-draft over a bounded cache', (m) => ({ drafters: [{ kind: 'model', session: m.target, kv: { policy: 'window', budget: { budget: 4, sinks: 1, recent: 0, rebuild: 0 } } }], kMatrix: [[3]], lenience: 1 })],
  ];
  let accepted = 0;
  let drafted = 0;
  for (const [sName, sampling] of samplings) {
    for (let seed = 0; seed < 24; seed++) {
      const req: GenerateRequest = { promptIds: [1, 3, 2, 1, 3], maxTokens: 24, sampling, seed, stopAtEos: false, verification: 'invariant' };
      const want = (await generateAutoregressive(f.target, req)).tokenIds;
      for (const [name, shape] of shapes) {
        const plain = await generateCascade(f.target, shape(f), req);
        t.deepEqual(plain.tokenIds, want, `${name}, ${sName}, seed ${seed}`);
        accepted += plain.stats.acceptedTokens;
        drafted += plain.stats.draftedTokens;
      }
      const m = { target: batched[0]!, d1: batched[1]!, d2: batched[2]! };
      const together = await Promise.all([0, 1, 2].map(() => generateCascade(m.target, shapes[2]![1](m), req)));
      for (const r of together) t.deepEqual(r.tokenIds, want, `batched csd, ${sName}, seed ${seed}`);
    }
  }
  t.log(`${accepted} of ${drafted} drafted tokens accepted`);
  t.true(accepted > drafted / 4, 'drafts were accepted: the identity is not the target alone');
  t.true(batched[0]!.counters.largestBatch > 1, 'requests were batched');
  await Promise.all(batched.map((b) => b.close()));
  t.is(f.target.liveSequences(), 0);
});

test('invariant - a seed fixes the output whatever a drafter proposes: a scripted drafter right, wrong, empty and killed mid-stream', async (t) => {
  const { target } = memoryFamily(12);
  const sampling: SamplingParams = { temperature: 1, topK: 0, topP: 1 };
  for (let seed = 0; seed < 30; seed++) {
    const req: GenerateRequest = { promptIds: [2, 5, 1], maxTokens: 30, sampling, seed, stopAtEos: false, verification: 'invariant' };
    const want = (await generateAutoregressive(target, req)).tokenIds;
    const truth = [...req.promptIds, ...want];
    const noise = new PositionNoise(seed);
    const top = new ModelLevel('target', target, `t-${seed}`, sampling, { promptLength: req.promptIds.length, noise });
    // proposes the true continuation at some positions, a wrong token at others, nothing at some
    // calls, and dies on its 6th call: its proposals never change the output, only how fast it comes
    let calls = 0;
    const scripted: CascadeLevel = {
      name: 'scripted',
      stats: newStats(),
      async propose(block: Block, want: number) {
        if (++calls === 6 && seed % 2 === 0) throw new LevelUnavailableError('scripted', 'the drafter was killed');
        if (calls % 4 === 0) return;
        for (let i = 0; i < want; i++) {
          const at = block.length;
          const right = truth[at];
          block.push(right !== undefined && (at + seed) % 3 !== 0 ? right : ((right ?? 0) + 1) % 12, undefined);
        }
      },
      async review() {
        throw new Error('the scripted drafter only proposes');
      },
      async release() {},
    };
    let dropped = 0;
    const r = await runCascade(top, [scripted, new MagLevel()], { kMatrix: [[3, 5], [0, 0]], lenience: 1 }, req, {
      eosIds: [],
      onLevelFailure: (level) => level === scripted && ++dropped === 1,
    });
    t.deepEqual(r.tokenIds, want, `seed ${seed}`);
    t.is(dropped, seed % 2 === 0 && calls >= 6 ? 1 : 0);
  }
});

test('invariant - rejection sampling\'s tokens for a seed depend on the drafts; invariant ones do not', async (t) => {
  const f = memoryFamily(12);
  const sampling: SamplingParams = { temperature: 1, topK: 0, topP: 1 };
  let differ = 0;
  for (let seed = 0; seed < 20; seed++) {
    const req: GenerateRequest = { promptIds: [1, 2, 3], maxTokens: 20, sampling, seed, stopAtEos: false, verification: 'rejection' };
    const ar = (await generateAutoregressive(f.target, req)).tokenIds;
    const sd = (await generateCascade(f.target, { drafters: [model(f.d1)], kMatrix: [[3]], lenience: 1 }, req)).tokenIds;
    if (ar.join() !== sd.join()) differ++;
  }
  t.log(`under rejection, ${differ} of 20 seeds gave sd other tokens than ar`);
  t.true(differ > 10);
});

test('invariant - greedy decoding is the same under both verifications', async (t) => {
  const f = memoryFamily(12);
  for (const verification of ['invariant', 'rejection'] as const) {
    const req: GenerateRequest = { promptIds: [4, 4, 1], maxTokens: 20, sampling: GREEDY, seed: 3, stopAtEos: false, verification };
    const want = (await generateAutoregressive(f.target, req)).tokenIds;
    t.deepEqual((await generateCascade(f.target, { drafters: [model(f.d1), mag], kMatrix: [[2, 4], [0, 2]], lenience: 1 }, req)).tokenIds, want);
  }
});

test('invariant - real ONNX models: csd (draft-l1, draft-l2, MaG) and sd give target-only decoding\'s tokens for a seed, T = 1 and T = 0.7 with top-k/top-p', async (t) => {
  const open = (name: string) => OrtModelSession.open(dirOf(name), { intraOpThreads: 1 });
  const [target, l1, l2] = await Promise.all([open(modelFamily.target), open('draft-l1'), open('draft-l2')]);
  try {
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    const prompts = ['def read_config(path):\n    with open(path) as f:\n', 'The river runs through the valley and'].map((text) => tok.encode(text));
    const samplingsOnnx: SamplingParams[] = [{ temperature: 1, topK: 0, topP: 1 }, { temperature: 0.7, topK: 40, topP: 0.95 }];
    let accepted = 0;
    for (const sampling of samplingsOnnx) {
      for (const promptIds of prompts) {
        for (const seed of [1, 2]) {
          const req: GenerateRequest = { promptIds, maxTokens: 40, sampling, seed, stopAtEos: false, verification: 'invariant' };
          const want = (await generateAutoregressive(target, req)).tokenIds;
          const csd = await generateCascade(target, { drafters: [model(l1), model(l2), mag], kMatrix: 'auto', lenience: 1 }, req);
          const sd = await generateCascade(target, { drafters: [model(l2)], kMatrix: [[3]], lenience: 1 }, req);
          t.deepEqual(csd.tokenIds, want, `csd, T ${sampling.temperature}, seed ${seed}`);
          t.deepEqual(sd.tokenIds, want, `sd, T ${sampling.temperature}, seed ${seed}`);
          accepted += csd.stats.acceptedTokens + sd.stats.acceptedTokens;
        }
      }
    }
    t.log(`${accepted} drafted tokens accepted over the runs`);
    t.true(accepted > 0);
  } finally {
    await Promise.all([target, l1, l2].map((s) => s.close()));
  }
});

test('invariant - target-only decoding draws with the noise: its tokens are each position\'s draw from the target\'s distribution', async (t) => {
  const { target } = memoryFamily(12);
  const sampling: SamplingParams = { temperature: 0.8, topK: 0, topP: 1 };
  const req: GenerateRequest = { promptIds: [3, 1], maxTokens: 12, sampling, seed: 77, stopAtEos: false, verification: 'invariant' };
  const out = (await generateAutoregressive(target, req)).tokenIds;
  const noise = new PositionNoise(77);
  const tokens = [...req.promptIds];
  for (const token of out) {
    t.is(token, noise.draw(distribution(target.nextLogits(tokens), sampling, { tokens, length: tokens.length, promptLength: 2 }), tokens.length));
    tokens.push(token);
  }
});
