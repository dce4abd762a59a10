import test from 'ava';
import { generateCascade, type CascadeConfig, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive, type GenerateRequest } from '../src/engine/generate.ts';
import { distribution, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import type { ModelSession } from '../src/models/session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family as modelFamily } from './helpers/family.ts';
import { describeFits, misfits, positionalChiSquare } from './helpers/stats.ts';

function memoryFamily(vocabSize: number, sharpness = 3) {
  const target = new MemoryModelSession({ name: 'target', vocabSize, order: 2, seed: 11, sharpness });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  return { target, d1 };
}

/** `session` whose forwards take `ms` longer (a drafter on a slow or loaded node: its drafts come late). */
function slowed(session: ModelSession, ms: () => number): ModelSession {
  const delay = () => new Promise((r) => setTimeout(r, ms()));
  return new Proxy(session, {
    get: (inner, key) => {
      if (key === 'forward' || key === 'step' || key === 'forwardBatch') {
        const f = Reflect.get(inner, key) as (...a: unknown[]) => Promise<unknown>;
        return async (...args: unknown[]) => {
          await delay();
          return f.apply(inner, args);
        };
      }
      const value: unknown = Reflect.get(inner, key);
      return typeof value === 'function' ? value.bind(inner) : value;
    },
  });
}

const model = (session: ModelSession): DrafterSpec => ({ kind: 'model', session });
const mag: DrafterSpec = { kind: 'mag' };
const asyncOf = (drafters: DrafterSpec[]): CascadeConfig => ({ drafters, kMatrix: 'auto', lenience: 1, drafting: 'async' });

test('async drafting - greedy output equals target-only decoding: sd, sd + MaG, MaG alone, a late drafter', async (t) => {
  const f = memoryFamily(16);
  const late = slowed(f.d1, () => (Math.random() < 0.5 ? 0 : 3));
  let accepted = 0;
  for (const prompt of [[1], [3, 5, 7], [2, 2, 2, 2, 9], [1, 2, 3, 1, 2, 3, 1, 2]]) {
    const req: GenerateRequest = { promptIds: prompt, maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false };
    const want = (await generateAutoregressive(f.target, req)).tokenIds;
    for (const [name, drafters] of [['sd', [model(f.d1)]], ['sd + mag', [model(f.d1), mag]], ['mag', [mag]], ['late sd + mag', [model(late), mag]]] as const) {
      const r = await generateCascade(f.target, asyncOf([...drafters]), req);
      t.deepEqual(r.tokenIds, want, `${name} on ${prompt}`);
      t.is(r.stats.drafting?.mode, 'async');
      accepted += r.stats.acceptedTokens;
    }
  }
  t.true(accepted > 0);
  t.is(f.target.liveSequences(), 0);
  t.is(f.d1.liveSequences(), 0);
});

test('async drafting - drafter-invariant: a seeded sampled request gives target-only decoding\'s tokens whatever arrives in time', async (t) => {
  const f = memoryFamily(12);
  const late = slowed(f.d1, () => (Math.random() < 0.3 ? 2 : 0));
  const samplings: SamplingParams[] = [{ temperature: 1, topK: 0, topP: 1 }, { temperature: 0.7, topK: 4, topP: 0.9, presencePenalty: 0.3 }];
  for (const sampling of samplings) {
    for (let seed = 0; seed < 20; seed++) {
      const req: GenerateRequest = { promptIds: [1, 3, 2, 1, 3], maxTokens: 24, sampling, seed, stopAtEos: false, verification: 'invariant' };
      const want = (await generateAutoregressive(f.target, req)).tokenIds;
      for (const drafters of [[model(f.d1), mag], [model(late)]]) t.deepEqual((await generateCascade(f.target, asyncOf(drafters), req)).tokenIds, want, `T ${sampling.temperature}, seed ${seed}`);
    }
  }
});

test('async drafting - rejection sampling draws every position from the target given the tokens before it (chi-square)', async (t) => {
  const { target, d1 } = memoryFamily(4, 8);
  const sampling: SamplingParams = { temperature: 1, topK: 0, topP: 1 };
  const prompt = [1, 3, 2, ...(await generateAutoregressive(target, { promptIds: [1, 3, 2], maxTokens: 9, sampling: GREEDY, seed: 0 })).tokenIds];
  const samples: number[][] = [];
  let accepted = 0;
  for (let seed = 0; seed < 10_000; seed++) {
    const r = await generateCascade(target, asyncOf([model(d1), mag]), { promptIds: prompt, maxTokens: 6, sampling, seed, stopAtEos: false, verification: 'rejection' });
    samples.push(r.tokenIds);
    accepted += r.stats.acceptedTokens;
  }
  t.log(`${accepted} drafted tokens accepted`);
  t.true(accepted > 10_000);
  const fits = positionalChiSquare(samples, prompt, (context) => distribution(target.nextLogits(context), sampling));
  t.log(describeFits(fits));
  t.deepEqual(misfits(fits), [], describeFits(fits));
});

test('async drafting - real ONNX models: greedy and seeded sampled output equal target-only decoding with draft-l2 running ahead on its own worker', async (t) => {
  const open = (name: string) => OrtModelSession.open(dirOf(name), { intraOpThreads: 1 });
  const [target, l2] = await Promise.all([open(modelFamily.target), open('draft-l2')]);
  try {
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    let accepted = 0;
    for (const text of ['def read_config(path):\n    with open(path) as f:\n', 'The river runs through the valley and']) {
      for (const sampling of [GREEDY, { temperature: 0.8, topK: 0, topP: 1 }]) {
        const req: GenerateRequest = { promptIds: tok.encode(text), maxTokens: 48, sampling, seed: 3, stopAtEos: false, verification: 'invariant' };
        const want = (await generateAutoregressive(target, req)).tokenIds;
        const r = await generateCascade(target, asyncOf([model(l2), mag]), req);
        t.deepEqual(r.tokenIds, want, `${JSON.stringify(text.slice(0, 12))}, T ${sampling.temperature}`);
        accepted += r.stats.acceptedTokens;
      }
    }
    t.true(accepted > 0);
  } finally {
    await Promise.all([target.close(), l2.close()]);
  }
});
