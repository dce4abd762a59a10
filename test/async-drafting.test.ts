import test from 'ava';
import { Probation } from '../src/engine/probation.ts';
import { generateCascade, type CascadeConfig, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive, type GenerateRequest } from '../src/engine/generate.ts';
import { distribution, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import type { ModelSession } from '../src/models/session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family as modelFamily } from './helpers/family.ts';
import { jitter, paced } from './helpers/pacing.ts';
import { describeFits, misfits, positionalChiSquare } from './helpers/stats.ts';

function memoryFamily(vocabSize: number, sharpness = 3) {
  const target = new MemoryModelSession({ name: 'target', vocabSize, order: 2, seed: 11, sharpness });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  // a cheaper, weaker drafter: the level below d1
  const d0 = new MemoryModelSession({ name: 'd0', vocabSize, order: 2, seed: 13, resemble: { model: d1, weight: 0.75 } });
  return { target, d1, d0 };
}

const model = (session: ModelSession): DrafterSpec => ({ kind: 'model', session });
const mag: DrafterSpec = { kind: 'mag' };
const asyncOf = (drafters: DrafterSpec[]): CascadeConfig => ({ drafters, kMatrix: 'auto', lenience: 1, drafting: 'async' });

test('async drafting - greedy output equals target-only decoding: sd, sd + MaG, MaG alone, a late drafter', async (t) => {
  const plain = memoryFamily(16);
  const f = { target: paced(plain.target, () => 8), d1: paced(plain.d1, () => 1), d0: paced(plain.d0, () => 0.3) };
  const coin = jitter(1);
  const late = paced(plain.d1, () => (coin() < 0.5 ? 1 : 12));
  let accepted = 0;
  let outcomeHits = 0;
  let pipelined = 0;
  let below = 0;
  for (const prompt of [[1], [3, 5, 7], [2, 2, 2, 2, 9], [1, 2, 3, 1, 2, 3, 1, 2]]) {
    const req: GenerateRequest = { promptIds: prompt, maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false };
    const want = (await generateAutoregressive(f.target, req)).tokenIds;
    for (const [name, drafters] of [['sd', [model(f.d1)]], ['sd + mag', [model(f.d1), mag]], ['mag', [mag]], ['late sd + mag', [model(late), mag]], ['sd over sd + mag', [model(f.d1), model(f.d0), mag]], ['sd over sd', [model(f.d1), model(f.d0)]]] as const) {
      const r = await generateCascade(f.target, asyncOf([...drafters]), req, undefined, { outcomeBranches: true, levelBelow: true });
      t.deepEqual(r.tokenIds, want, `${name} on ${prompt}`);
      t.is(r.stats.drafting?.mode, 'async');
      if (name === 'sd') accepted += r.stats.acceptedTokens;
      outcomeHits += r.stats.drafting!.outcomeHits;
      pipelined += r.stats.drafting!.pipelinedAccepted;
      below += r.stats.drafting!.belowAccepted;
    }
  }
  t.log(`outcome branches adopted at ${outcomeHits} passes; the drafter accepted ${pipelined} of the drafts below it, ${below} of them the neural level's`);
  t.true(pipelined > 0, 'MaG pipelined below the drafter');
  t.true(below > 0, 'a neural level below the drafter');
  t.true(outcomeHits > 0, 'the drafter pre-drafted a rejection\'s outcome that came true');
  // without outcome branches (the default): the speculation alone
  const req: GenerateRequest = { promptIds: [3, 5, 7], maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false };
  const alone = await generateCascade(f.target, asyncOf([model(f.d1)]), req);
  t.deepEqual(alone.tokenIds, (await generateAutoregressive(f.target, req)).tokenIds);
  t.is(alone.stats.drafting!.outcomeDrafts, 0);
  // how many depends on the pacing under load and on the review cut (worthReviewing); that it drafts at all is the point
  t.true(accepted >= 8, `the neural drafter alone had ${accepted} drafts accepted`);
  t.is(plain.target.liveSequences(), 0);
  t.is(plain.d1.liveSequences(), 0);
});

test('async drafting - drafter-invariant: a seeded sampled request gives target-only decoding\'s tokens whatever arrives in time', async (t) => {
  const plain = memoryFamily(12);
  const f = { target: paced(plain.target, () => 8), d1: paced(plain.d1, () => 1), d0: paced(plain.d0, () => 0.3) };
  const coin = jitter(2);
  const late = paced(plain.d1, () => (coin() < 0.3 ? 12 : 1));
  const samplings: SamplingParams[] = [{ temperature: 1, topK: 0, topP: 1 }, { temperature: 0.7, topK: 4, topP: 0.9, presencePenalty: 0.3 }];
  let neural = 0;
  let outcomeHits = 0;
  let pipelined = 0;
  let below = 0;
  for (const sampling of samplings) {
    for (let seed = 0; seed < 20; seed++) {
      const req: GenerateRequest = { promptIds: [1, 3, 2, 1, 3], maxTokens: 24, sampling, seed, stopAtEos: false, verification: 'invariant' };
      const want = (await generateAutoregressive(f.target, req)).tokenIds;
      for (const drafters of [[model(f.d1), mag], [model(late)], [model(f.d1), model(f.d0), mag]]) {
        const r = await generateCascade(f.target, asyncOf(drafters), req, undefined, { outcomeBranches: true, levelBelow: true });
        t.deepEqual(r.tokenIds, want, `T ${sampling.temperature}, seed ${seed}`);
        if (drafters.length === 1) neural += r.stats.acceptedTokens;
        outcomeHits += r.stats.drafting!.outcomeHits;
        pipelined += r.stats.drafting!.pipelinedAccepted;
        below += r.stats.drafting!.belowAccepted;
      }
    }
  }
  t.true(below > 0, `the drafter accepted ${below} of the neural level below's drafts`);
  t.log(`outcome branches adopted at ${outcomeHits} passes; the drafter accepted ${pipelined} of MaG's drafts`);
  t.true(outcomeHits > 0);
  t.true(pipelined > 0);
  t.true(neural > 40, `drafts of the (sometimes late) neural drafter alone were accepted: ${neural}`);
});

for (const [withMag, branches, pipeline, levelBelow] of [[false, false, false, false], [false, true, false, false], [true, true, false, false], [true, false, true, false], [false, false, true, true]]) {
  test(`async drafting - rejection sampling with a neural drafter running ahead${withMag ? ' and MaG, whose proposal may replace its block' : ''}${pipeline ? ` and which reviews ${levelBelow ? 'the drafts of a neural level below it' : "MaG's drafts"} (the pipeline)` : ''}${branches ? ', with outcome branches,' : ''} draws every position from the target given the tokens before it (chi-square)`, async (t) => {
    const plain = memoryFamily(4, 8);
    const target = paced(plain.target, () => 6);
    const coin = jitter(3);
    const d1 = paced(plain.d1, () => (coin() < 0.2 ? 9 : 1));
    const d0 = paced(plain.d0, () => (coin() < 0.2 ? 3 : 0.3));
    const sampling: SamplingParams = { temperature: 1, topK: 0, topP: 1 };
    const prompt = [1, 3, 2, ...(await generateAutoregressive(target, { promptIds: [1, 3, 2], maxTokens: 9, sampling: GREEDY, seed: 0 })).tokenIds];
    const samples: number[][] = [];
    let accepted = 0;
    let outcomeHits = 0;
    let pipelined = 0;
    let below = 0;
    for (let seed = 0; seed < 10_000; seed++) {
      const r = await generateCascade(target, asyncOf([model(d1), ...(levelBelow ? [model(d0)] : []), ...(withMag ? [mag] : [])]), { promptIds: prompt, maxTokens: 6, sampling, seed, stopAtEos: false, verification: 'rejection' }, undefined, { outcomeBranches: branches, pipeline, levelBelow });
      samples.push(r.tokenIds);
      accepted += r.stats.acceptedTokens;
      outcomeHits += r.stats.drafting!.outcomeHits;
      pipelined += r.stats.drafting!.pipelinedAccepted;
      below += r.stats.drafting!.belowAccepted;
    }
    t.log(`${accepted} drafted tokens accepted, outcome branches adopted at ${outcomeHits} passes, ${pipelined} drafts from below accepted by the drafter (${below} of the neural level's)`);
    t.true(levelBelow ? below > 1_000 : below === 0);
    t.true(accepted > 5_000);
    // the drafter's reviews of MaG's drafts pass its p up as q: those positions are in the test too
    t.true(pipeline ? pipelined > 1_000 : pipelined === 0);
    // the positions after an adopted outcome branch are in the test too
    t.true(branches ? outcomeHits > 500 : outcomeHits === 0);
    const fits = positionalChiSquare(samples, prompt, (context) => distribution(plain.target.nextLogits(context), sampling));
    t.log(describeFits(fits));
    t.deepEqual(misfits(fits), [], describeFits(fits));
  });
}

test('async drafting - real ONNX models: greedy and seeded sampled output equal target-only decoding with draft-l2 running ahead on its own worker', async (t) => {
  const open = (name: string) => OrtModelSession.open(dirOf(name), { intraOpThreads: 1 });
  const [target, l2] = await Promise.all([open(modelFamily.target), open('draft-l2')]);
  try {
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    let accepted = 0;
    let branched = 0;
    let outcomeHits = 0;
    for (const text of ['def read_config(path):\n    with open(path) as f:\n', 'The river runs through the valley and']) {
      for (const sampling of [GREEDY, { temperature: 0.8, topK: 0, topP: 1 }]) {
        const req: GenerateRequest = { promptIds: tok.encode(text), maxTokens: 48, sampling, seed: 3, stopAtEos: false, verification: 'invariant' };
        const want = (await generateAutoregressive(target, req)).tokenIds;
        for (const drafters of [[model(l2), mag], [model(l2)]]) {
          // drafting throughout (no rest), so that its drafts keep arriving while the target verifies
          const r = await generateCascade(target, asyncOf(drafters), req, undefined, { drafterRest: false, outcomeBranches: true });
          t.deepEqual(r.tokenIds, want, `${JSON.stringify(text.slice(0, 12))}, T ${sampling.temperature}, ${drafters.length} drafters`);
          if (drafters.length === 1) accepted += r.stats.acceptedTokens;
          branched += r.stats.drafting!.outcomeDrafts;
          outcomeHits += r.stats.drafting!.outcomeHits;
        }
      }
    }
    t.true(accepted > 10, `draft-l2 alone had ${accepted} drafts accepted`);
    // how many depends on the two threads' timing
    t.log(`${branched} tokens drafted on outcome branches, adopted at ${outcomeHits} passes`);
  } finally {
    await Promise.all([target.close(), l2.close()]);
  }
});

test('async drafting - a drafter whose drafts are rarely accepted is paused, with target-only decoding\'s output, and one that agrees is not', async (t) => {
  const vocabSize = 16;
  const target = new MemoryModelSession({ name: 'target', vocabSize, order: 2, seed: 11, sharpness: 3 });
  // a drafter of its own, unlike the target; and one that is the target itself
  const stranger = new MemoryModelSession({ name: 'stranger', vocabSize, order: 2, seed: 99, sharpness: 3 });
  const twin = new MemoryModelSession({ name: 'twin', vocabSize, order: 2, seed: 11, sharpness: 3 });
  const req: GenerateRequest = { promptIds: [1, 2, 3], maxTokens: 160, sampling: GREEDY, seed: 0, stopAtEos: false };
  const f = { target: paced(target, () => 8), stranger: paced(stranger, () => 1), twin: paced(twin, () => 1) };
  const want = (await generateAutoregressive(f.target, req)).tokenIds;
  const weak = await generateCascade(f.target, asyncOf([model(f.stranger)]), req);
  t.deepEqual(weak.tokenIds, want);
  const paused = weak.stats.drafting!.drafterPausedPasses;
  t.true(paused > weak.stats.rounds / 2, `the stranger was paused for ${paused} of ${weak.stats.rounds} target passes`);
  const strong = await generateCascade(f.target, asyncOf([model(f.twin)]), req);
  t.deepEqual(strong.tokenIds, want);
  t.is(strong.stats.drafting!.drafterPausedPasses, 0, 'a drafter that always agrees runs throughout');
  t.true(strong.stats.rounds < weak.stats.rounds);
  t.is(target.liveSequences(), 0);
  t.is(stranger.liveSequences(), 0);
});

test('async drafting - with its only drafter resting, the real target decodes several tokens per call: greedy and seeded sampled (invariant) output equal target-only decoding', async (t) => {
  const target = await OrtModelSession.open(dirOf(modelFamily.target), { intraOpThreads: 1 });
  // a drafter unlike the target over its vocabulary: its drafts are rarely accepted, so it rests
  const stranger = new MemoryModelSession({ name: 'stranger', vocabSize: target.spec.vocabSize, order: 2, seed: 99, sharpness: 3 });
  let decodeCalls = 0;
  const counted = new Proxy(target, {
    get: (inner, key) => {
      const value: unknown = Reflect.get(inner, key);
      if (key === 'decode' && typeof value === 'function') {
        return (...args: unknown[]) => {
          decodeCalls++;
          return (value as (...a: unknown[]) => unknown).apply(inner, args);
        };
      }
      return typeof value === 'function' ? value.bind(inner) : value;
    },
  });
  try {
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    for (const sampling of [GREEDY, { temperature: 0.8, topK: 0, topP: 1 }]) {
      const req: GenerateRequest = { promptIds: tok.encode('def read_config(path):\n'), maxTokens: 96, sampling, seed: 5, stopAtEos: false, verification: 'invariant' };
      const want = (await generateAutoregressive(target, req)).tokenIds;
      decodeCalls = 0;
      const r = await generateCascade(counted, asyncOf([model(stranger)]), req);
      t.deepEqual(r.tokenIds, want, `T ${sampling.temperature}`);
      const rested = r.stats.drafting!.drafterPausedPasses;
      t.true(rested > r.stats.rounds / 2, `rested ${rested} of ${r.stats.rounds} passes`);
      t.true(decodeCalls > 0 && decodeCalls < rested, `${decodeCalls} multi-step calls for the ${rested} passes of its rests`);
    }
    t.is(stranger.liveSequences(), 0);
  } finally {
    await target.close();
  }
});

test('async drafting - probation (the drafter\'s rest, its outcome branches\'): a part that falls short of its gain over a probe rests, for a pause that doubles while it still falls short and resets once it pays', (t) => {
  const p = new Probation(4, 0.5);
  t.false(p.record(3, 0, 10), 'the probe is not over');
  t.true(p.record(1, 0, 10), '0 of 4 falls short');
  t.true(p.resting(25));
  t.false(p.resting(26), 'a first rest of 16 passes');
  t.true(p.record(4, 1, 30));
  t.is(p.until, 62, 'the second, 32');
  t.false(p.record(4, 2, 70), '2 of 4 pays');
  t.true(p.record(4, 0, 80));
  t.is(p.until, 96, 'back to 16');
  const never = new Probation(Infinity, 0.5);
  t.false(never.record(1000, 0, 5), 'a part that never rests');
});
