import test from 'ava';
import { ModelActor } from '../src/actors/model-actor.ts';
import { Coordinator } from '../src/cluster/coordinator.ts';
import { MemoryRequestLog } from '../src/cluster/redis-store.ts';
import { InProcessTransport } from '../src/cluster/transport.ts';
import { draftRoom, generateCascade, type CascadeConfig, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive, type GenerateRequest } from '../src/engine/generate.ts';
import { GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { MemoryModelSession, type MemoryModelOptions } from '../src/models/memory-session.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family as bundled } from './helpers/family.ts';

const TARGET: MemoryModelOptions = { name: 'target', vocabSize: 24, order: 2, seed: 11, sharpness: 4 };

/** A target, a drafter identical to it (every draft accepted: blocks as long as K allows) and two weaker ones. */
function family(extra: Partial<MemoryModelOptions> = {}) {
  const target = new MemoryModelSession({ ...TARGET, ...extra });
  const twin = new MemoryModelSession({ ...TARGET, ...extra, name: 'twin' });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize: 24, order: 2, seed: 12, resemble: { model: target, weight: 0.8 }, ...extra });
  const d2 = new MemoryModelSession({ name: 'd2', vocabSize: 24, order: 1, seed: 13, resemble: { model: target, weight: 0.5 }, ...extra });
  return { target, twin, d1, d2 };
}

const model = (session: MemoryModelSession): DrafterSpec => ({ kind: 'model', session });
const mag: DrafterSpec = { kind: 'mag' };

test('cascade limits - the draft room is min(remaining - 1, positions - committed - 1), never negative', (t) => {
  t.is(draftRoom(10, 8, undefined), 7);
  t.is(draftRoom(10, 1, undefined), 0);
  t.is(draftRoom(2040, 8, 2048), 7);
  t.is(draftRoom(2047, 1, 2048), 0);
  t.is(draftRoom(2047, 5, 2048), 0);
});

// Fault: a round looked for EOS before cutting at the budget, so an EOS drafted and accepted just past
// max tokens ended the request with `stop` where target-only decoding reports `length`.
test('cascade limits - an EOS the target would produce just past max tokens gives finish reason length, as target-only decoding', async (t) => {
  const free = family();
  let cases = 0;
  for (let p = 0; p < 24 && cases < 6; p++) {
    const prompt = [p, (p * 7) % 24];
    const ahead = await generateAutoregressive(free.target, { promptIds: prompt, maxTokens: 12, sampling: GREEDY, seed: 0, stopAtEos: false });
    for (const budget of [3, 5, 8]) {
      const eos = ahead.tokenIds[budget]!;
      if (ahead.tokenIds.slice(0, budget).includes(eos)) continue; // the EOS must first appear just past the budget
      cases++;
      const f = family({ eosIds: [eos] });
      const req: GenerateRequest = { promptIds: prompt, maxTokens: budget, sampling: GREEDY, seed: 0 };
      const want = await generateAutoregressive(f.target, req);
      t.is(want.finishReason, 'length');
      const configs: [string, CascadeConfig][] = [
        ['sd with a perfect drafter, K 8', { drafters: [model(f.twin)], kMatrix: [[8]], lenience: 1 }],
        ['csd', { drafters: [model(f.twin), model(f.d2), mag], kMatrix: [[4, 8, 10], [0, 2, 6], [0, 0, 4]], lenience: 1 }],
      ];
      for (const [name, config] of configs) {
        const got = await generateCascade(f.target, config, req);
        t.deepEqual(got.tokenIds, want.tokenIds, `${name}, prompt ${prompt}, budget ${budget}`);
        t.is(got.finishReason, 'length', `${name}, prompt ${prompt}, budget ${budget}`);
      }
      // and an EOS inside the budget still stops, as target-only decoding does
      const within = await generateCascade(f.target, configs[0]![1], { ...req, maxTokens: budget + 2 });
      t.is(within.finishReason, 'stop');
      t.deepEqual(within.tokenIds, (await generateAutoregressive(f.target, { ...req, maxTokens: budget + 2 })).tokenIds);
    }
  }
  t.true(cases >= 3, `${cases} cases`);
});

const shapes: [string, (f: ReturnType<typeof family>) => CascadeConfig][] = [
  ['sd, K 8', (f) => ({ drafters: [model(f.twin)], kMatrix: [[8]], lenience: 1 })],
  ['mag, K 8', () => ({ drafters: [mag], kMatrix: [[8]], lenience: 1 })],
  ['csd, 3 levels', (f) => ({ drafters: [model(f.d1), model(f.d2), mag], kMatrix: [[2, 4, 8], [0, 2, 6], [0, 0, 4]], lenience: 1 })],
  ['csd, horizontal only', (f) => ({ drafters: [model(f.twin), model(f.d2), mag], kMatrix: [[3, 6, 9], [0, 0, 0], [0, 0, 0]], lenience: 1 })],
  ['csd, auto K', (f) => ({ drafters: [model(f.d1), model(f.d2), mag], kMatrix: 'auto', lenience: 1 })],
];

// Fault: drafts were never clamped to the tokens or positions left, so a request whose prompt plus
// max tokens fills the context exactly fed a model more tokens than it has positions.
test('cascade limits - a request that fills the context exactly completes under every cascade (embedded), as target-only decoding', async (t) => {
  const positions = 40;
  const f = family({ maxPositions: positions });
  for (const promptLength of [1, 20, 31, 38, 39]) {
    const prompt = Array.from({ length: promptLength }, (_, i) => (i * 5 + 1) % 24);
    for (const sampling of [GREEDY, { temperature: 0.8, topK: 0, topP: 1 }] as SamplingParams[]) {
      const req: GenerateRequest = { promptIds: prompt, maxTokens: positions - promptLength, sampling, seed: 7, stopAtEos: false };
      const want = await generateAutoregressive(f.target, req);
      for (const [name, build] of shapes) {
        const got = await generateCascade(f.target, build(f), req);
        t.is(got.tokenIds.length, req.maxTokens, `${name}, prompt ${promptLength}`);
        if (sampling.temperature === 0) t.deepEqual(got.tokenIds, want.tokenIds, `${name}, prompt ${promptLength}`);
      }
    }
  }
  for (const m of Object.values(f)) t.is(m.liveSequences(), 0);
});

test('cascade limits - a drafter with a shorter context than the target is clamped to it, and the request still completes', async (t) => {
  const target = new MemoryModelSession({ ...TARGET, maxPositions: 40 });
  const short = new MemoryModelSession({ ...TARGET, name: 'short', maxPositions: 24 });
  const req: GenerateRequest = { promptIds: [1, 2, 3], maxTokens: 37, sampling: GREEDY, seed: 0, stopAtEos: false };
  const want = await generateAutoregressive(target, req);
  const got = await generateCascade(target, { drafters: [model(short), mag], kMatrix: [[4, 8], [0, 3]], lenience: 1 }, req);
  t.deepEqual(got.tokenIds, want.tokenIds);
});

test('cascade limits - in the cluster, a request that fills the context exactly completes under every cascade, as target-only decoding', async (t) => {
  const positions = 40;
  const f = family({ maxPositions: positions });
  const transport = new InProcessTransport();
  const actors = [f.target, f.twin, f.d1, f.d2].map((m) => new ModelActor(transport, m).start());
  const log = new MemoryRequestLog();
  const coordinator = new Coordinator({ transport, log, family: { target: 'target', eosIds: [], maxPositions: positions } });
  const plans: [string, string[], number[][] | 'auto'][] = [
    ['sd', ['twin'], [[8]]],
    ['csd', ['d1', 'd2', 'mag'], [[2, 4, 8], [0, 2, 6], [0, 0, 4]]],
    ['csd auto', ['d1', 'd2', 'mag'], 'auto'],
  ];
  let n = 0;
  for (const promptLength of [1, 31, 39]) {
    const promptIds = Array.from({ length: promptLength }, (_, i) => (i * 5 + 1) % 24);
    const maxTokens = positions - promptLength;
    const want = await generateAutoregressive(f.target, { promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });
    for (const [name, drafters, kMatrix] of plans) {
      const requestId = `fill-${n++}`;
      const outcome = await coordinator.run({ requestId, promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false, drafters, kMatrix, lenience: 1, enqueuedAt: Date.now() });
      t.is(outcome.finishReason, 'length', `${name}, prompt ${promptLength}`);
      t.deepEqual(await log.read(requestId), want.tokenIds, `${name}, prompt ${promptLength}`);
    }
  }
  await Promise.all(actors.map((a) => a.stop()));
});

// The issue's own example, on the bundled models: sd with K 8 and 12 tokens, where the target's EOS
// follows the twelfth token.
test('cascade limits - the bundled models: sd with K 8 reports length where target-only decoding does', async (t) => {
  const target = await OrtModelSession.open(dirOf(bundled.target));
  const drafter = await OrtModelSession.open(dirOf(bundled.drafters[0]!));
  try {
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    const req: GenerateRequest = { promptIds: tok.encode('    return result\n\n\nif'), maxTokens: 12, sampling: GREEDY, seed: 0 };
    const want = await generateAutoregressive(target, req);
    const got = await generateCascade(target, { drafters: [{ kind: 'model', session: drafter }], kMatrix: [[8]], lenience: 1 }, req);
    t.deepEqual(got.tokenIds, want.tokenIds);
    t.is(got.finishReason, want.finishReason);
  } finally {
    await Promise.all([target.close(), drafter.close()]);
  }
});
