import { join } from 'node:path';
import test from 'ava';
import { generateCascade, runCascade, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive, type GenerateRequest } from '../src/engine/generate.ts';
import { planCascade } from '../src/engine/presets.ts';
import { processScheduleMemory } from '../src/engine/schedule.ts';
import { InvalidArgumentError, LevelUnavailableError } from '../src/errors.ts';
import { ModelLevel, newStats, type CascadeLevel } from '../src/engine/levels.ts';
import { PositionNoise } from '../src/kernels/noise.ts';
import { argmax, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { loadMagTables } from '../src/models/family.ts';
import { BatchingSession } from '../src/models/batching-session.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import type { BatchInvariance, DecodePlan } from '../src/models/session.ts';
import { dirOf, family, MODELS_DIR } from './helpers/family.ts';

/**
 * Multi-step decoding (ModelSession.decode, src/models/ort-worker.ts `decode`): the worker chooses
 * and feeds several tokens per call. The oracle is always the same model with SessionOptions
 * multiStep false, where every token is its own forward and its own draw on the main thread.
 */
const FUSED_L2 = { dir: new URL('./fixtures/fused/draft-l2', import.meta.url).pathname, tokenizer: join(MODELS_DIR, 'tokenizer.json') };
const PROMPT = [5, 99, 1000, 42, 7, 300, 12, 8, 640, 77, 1500, 3];
const SAMPLED: SamplingParams = { temperature: 0.9, topK: 0, topP: 0.95, repetitionPenalty: 1.2, presencePenalty: 0.3 };

const sessions: OrtModelSession[] = [];
async function open(source: Parameters<typeof OrtModelSession.open>[0], multiStep: boolean, batchInvariant: BatchInvariance = 'auto'): Promise<OrtModelSession> {
  const s = await OrtModelSession.open(source, { multiStep, batchInvariant, prefixCache: false });
  sessions.push(s);
  return s;
}
test.after.always(async () => {
  await Promise.all(sessions.map((s) => s.close()));
});

const request = (sampling: SamplingParams, seed: number, maxTokens = 40): GenerateRequest => ({ promptIds: PROMPT, maxTokens, sampling, seed, stopAtEos: false, verification: 'invariant' });
const plainCascade = { drafters: [], kMatrix: [], lenience: 1 };

for (const [name, source, batchInvariant] of [
  ['draft-l2 (KV through JavaScript)', dirOf('draft-l2'), 'off'],
  ['fused draft-l2 (KV in a host buffer), batch invariant', FUSED_L2, 'on'],
  ['the target', dirOf(family.target), 'auto'],
] as const) {
  test.serial(`multi-step decoding - ${name}: target-only decoding gives the per-token tokens, greedy and seeded, through generate and the cascade loop`, async (t) => {
    const on = await open(source, true, batchInvariant);
    const off = await open(source, false, batchInvariant);
    t.is(typeof on.decode, 'function');
    t.is(off.decode, undefined);
    for (const [sampling, seed] of [[GREEDY, 0], [SAMPLED, 1], [SAMPLED, 2]] as const) {
      const oracle = await generateAutoregressive(off, request(sampling, seed));
      t.is(oracle.tokenIds.length, 40);
      t.deepEqual((await generateAutoregressive(on, request(sampling, seed))).tokenIds, oracle.tokenIds, `generate, T=${sampling.temperature}, seed ${seed}`);
      const loop = await generateCascade(on, plainCascade, request(sampling, seed));
      t.deepEqual(loop.tokenIds, oracle.tokenIds, `cascade loop, T=${sampling.temperature}, seed ${seed}`);
      // one target pass per token: the rounds count passes, not calls
      t.is(loop.stats.rounds, 40);
      t.is(loop.stats.models[on.spec.name]!.forwardPasses, 40);
    }
    // a request that stops short of a multiple of the steps
    t.deepEqual((await generateAutoregressive(on, request(GREEDY, 0, 13))).tokenIds, (await generateAutoregressive(off, request(GREEDY, 0, 13))).tokenIds);
  });
}

test.serial('multi-step decoding - csd whose drafters propose in one call each gives target-only tokens, greedy and seeded, and the same drafts at a fixed K', async (t) => {
  const targetOff = await open(dirOf(family.target), false);
  const targetOn = await open(dirOf(family.target), true);
  const plan = planCascade({ mode: 'csd' }, family.drafters);
  const drafters = async (multiStep: boolean): Promise<DrafterSpec[]> => {
    const out: DrafterSpec[] = [];
    for (const d of plan.drafters) out.push(d === 'mag' ? { kind: 'mag', tables: loadMagTables(family) } : { kind: 'model', session: await open(dirOf(d), multiStep) });
    return out;
  };
  const on = await drafters(true);
  const off = await drafters(false);
  for (const [sampling, seed] of [[GREEDY, 0], [SAMPLED, 3]] as const) {
    const oracle = await generateAutoregressive(targetOff, request(sampling, seed));
    const csd = await generateCascade(targetOn, { drafters: on, kMatrix: plan.kMatrix, lenience: 1 }, request(sampling, seed));
    t.deepEqual(csd.tokenIds, oracle.tokenIds, `T=${sampling.temperature}`);
    // the output is exact whatever is drafted: the drafts themselves are compared at a fixed K
    const K = [[1, 2, 4], [0, 1, 3], [0, 0, 2]];
    const a = await generateCascade(targetOn, { drafters: on, kMatrix: K, lenience: 1 }, request(sampling, seed));
    const b = await generateCascade(targetOff, { drafters: off, kMatrix: K, lenience: 1 }, request(sampling, seed));
    t.deepEqual(a.tokenIds, oracle.tokenIds);
    t.deepEqual([a.stats.draftedByPosition, a.stats.acceptedByPosition, a.stats.rounds], [b.stats.draftedByPosition, b.stats.acceptedByPosition, b.stats.rounds], `drafts at T=${sampling.temperature}`);
    for (const name of plan.drafters.filter((d) => d !== 'mag')) t.is(a.stats.models[name]!.proposals, b.stats.models[name]!.proposals, name);
  }
});

test.serial('multi-step decoding - the prefix cache, and an end-of-sequence id chosen inside a multi-step call, give the per-token tokens', async (t) => {
  const on = await OrtModelSession.open(dirOf('draft-l2'), { multiStep: true, prefixCache: true });
  const off = await OrtModelSession.open(dirOf('draft-l2'), { multiStep: false, prefixCache: true });
  sessions.push(on, off);
  // the second request's prompt starts with the first's: its KV rows come from the first (released, retained) sequence
  // (at least MIN_PREFIX, 32, tokens are reused)
  const base = [...PROMPT, ...PROMPT, ...PROMPT];
  const longer = [...base, 17, 250, 31, 4000, 9];
  for (const promptIds of [base, longer, longer]) {
    const req = { ...request(GREEDY, 0), promptIds };
    t.deepEqual((await generateAutoregressive(on, req)).tokenIds, (await generateAutoregressive(off, req)).tokenIds);
    t.deepEqual((await generateCascade(on, plainCascade, req)).tokenIds, (await generateAutoregressive(off, req)).tokenIds);
  }
  t.true(on.prefixCache.hits > 0, 'the prefix cache was used');
  // a logit bias on the end-of-sequence id 0 makes the third token chosen EOS: the second of the first multi-step call
  const eos = { ...request({ ...GREEDY, logitBias: { 0: 3 } }, 0), stopAtEos: true };
  const oracle = await generateAutoregressive(off, eos);
  t.is(oracle.finishReason, 'stop');
  t.is(oracle.tokenIds.length, 2);
  for (const r of [await generateAutoregressive(on, eos), await generateCascade(on, plainCascade, eos)]) {
    t.deepEqual(r.tokenIds, oracle.tokenIds);
    t.is(r.finishReason, 'stop');
  }
});

test.serial('multi-step decoding - decode chooses `steps` tokens, stops after a stop id, and a refused call leaves the sequence at keep', async (t) => {
  const s = await open(dirOf('draft-l2'), true);
  const ref = await open(dirOf('draft-l2'), false);
  const first = argmax(await s.forward({ seqId: 'a', inputIds: PROMPT }, 'last'));
  const plan = (extra: Partial<DecodePlan> = {}): DecodePlan => ({ steps: 6, sampling: GREEDY, tokens: [...PROMPT, first], promptLength: PROMPT.length, ...extra });
  const chosen = await s.decode!({ seqId: 'a', inputIds: [first] }, plan());
  t.is(chosen.length, 6);
  t.is(s.length('a'), PROMPT.length + 1 + 5);
  // the same tokens one forward at a time
  let row = await ref.forward({ seqId: 'a', inputIds: PROMPT }, 'last');
  const expected: number[] = [];
  for (let token = argmax(row); expected.length < 7; token = argmax(row)) {
    expected.push(token);
    if (expected.length < 7) row = await ref.forward({ seqId: 'a', inputIds: [token] }, 'last');
  }
  t.deepEqual([first, ...chosen], expected);

  // from the same point again (keep rolls back), stopping after chosen[2] (or an earlier copy of it)
  const stopAt = chosen.indexOf(chosen[2]!);
  t.deepEqual(await s.decode!({ seqId: 'a', inputIds: [first], keep: PROMPT.length }, plan({ stopIds: [chosen[2]!] })), chosen.slice(0, stopAt + 1));
  t.is(s.length('a'), PROMPT.length + 1 + stopAt);

  // refused: the plan's tokens are not the sequence's; sampling without a seed; a token outside the vocabulary
  await t.throwsAsync(s.decode!({ seqId: 'a', inputIds: [first], keep: PROMPT.length }, plan({ tokens: PROMPT })), { instanceOf: InvalidArgumentError, message: /plan's 12 tokens/ });
  t.is(s.length('a'), PROMPT.length);
  await t.throwsAsync(s.decode!({ seqId: 'a', inputIds: [first] }, plan({ sampling: SAMPLED })), { instanceOf: InvalidArgumentError, message: /noiseSeed/ });
  await t.throwsAsync(s.decode!({ seqId: 'a', inputIds: [1e9] }, plan({ tokens: [...PROMPT, 1e9] })), { instanceOf: InvalidArgumentError, message: /outside the vocabulary/ });
  await t.throwsAsync(s.decode!({ seqId: 'a', inputIds: [first], positionIds: [40] }, plan()), { instanceOf: InvalidArgumentError, message: /right after/ });
  t.is(s.length('a'), PROMPT.length);
  // and the sequence still decodes as before
  t.deepEqual(await s.decode!({ seqId: 'a', inputIds: [first] }, plan()), chosen);
});

test.serial('multi-step decoding - through a BatchingSession: a lone request decodes in one call per 8 tokens, concurrent ones one token a call, all with the per-token tokens', async (t) => {
  const off = await open(FUSED_L2, false, 'on');
  const inner = await open(FUSED_L2, true, 'on');
  let calls = 0;
  const decode = inner.decode!;
  (inner as { decode?: typeof decode }).decode = (item, plan) => {
    calls++;
    return decode(item, plan);
  };
  // no time bound on a lone call here, so its steps do not depend on this machine's speed
  const batched = new BatchingSession(inner, { multiStepMs: Infinity });
  t.is(typeof batched.decode, 'function');
  t.is(new BatchingSession(off).decode, undefined);
  const prompts = [PROMPT, [7, 300, 12, 8, 640, 77], [1500, 3, 5, 99, 1000, 42, 7, 300, 12]];
  const req = (promptIds: number[], sampling: SamplingParams, seed: number): GenerateRequest => ({ ...request(sampling, seed), promptIds });
  for (const [sampling, seed] of [[GREEDY, 0], [SAMPLED, 4]] as const) {
    const oracle = await Promise.all(prompts.map((p) => generateAutoregressive(off, req(p, sampling, seed))));
    // alone: the prefill, then one call per 8 tokens (every pass counted)
    const before = { ...batched.counters, calls };
    t.deepEqual((await generateCascade(batched, plainCascade, req(prompts[0]!, sampling, seed))).tokenIds, oracle[0]!.tokenIds);
    t.is(batched.counters.passes - before.passes, 40);
    t.is(calls - before.calls, 1 + Math.ceil(39 / 8), 'the first token alone, then 8 a call');
    t.deepEqual((await generateAutoregressive(batched, req(prompts[0]!, sampling, seed))).tokenIds, oracle[0]!.tokenIds);
    // concurrent: each request's tokens are still its own target-only tokens
    const together = await Promise.all(prompts.map((p) => generateCascade(batched, plainCascade, req(p, sampling, seed))));
    together.forEach((r, i) => t.deepEqual(r.tokenIds, oracle[i]!.tokenIds, `prompt ${i}, T=${sampling.temperature}`));
  }
  t.true(batched.counters.largestBatch > 1, 'concurrent requests shared passes');
  // the default bound: a lone call makes as many steps as fit in 10 ms, the first one step
  const bounded = new BatchingSession(inner);
  const before = calls;
  t.deepEqual((await generateAutoregressive(bounded, req(prompts[0]!, GREEDY, 0))).tokenIds, (await generateAutoregressive(off, req(prompts[0]!, GREEDY, 0))).tokenIds);
  t.true(calls - before >= 1 + Math.ceil(39 / 8) && calls - before <= 40, `${calls - before} calls`);
  // multiStepMs 0: one step a call
  const single = new BatchingSession(inner, { multiStepMs: 0 });
  const before0 = calls;
  await generateAutoregressive(single, req(prompts[0]!, GREEDY, 0));
  t.is(calls - before0, 39);
});

test.serial('multi-step decoding - rounds the target decodes alone after its drafter was dropped take several tokens a call (RunOptions.aloneSteps), with target-only decoding\'s tokens, greedy and seeded', async (t) => {
  const base = await open(dirOf('draft-l2'), true, 'off');
  let decodeCalls = 0;
  // the same session, its decode calls counted
  const counted = new Proxy(base, {
    get(target, prop) {
      if (prop === 'decode') return (...args: Parameters<NonNullable<OrtModelSession['decode']>>) => (decodeCalls++, target.decode!(...args));
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  for (const [sampling, seed] of [[GREEDY, 0], [SAMPLED, 3]] as const) {
    const req = request(sampling, seed);
    const want = (await generateAutoregressive(base, req)).tokenIds;
    for (const aloneSteps of [true, false]) {
      // a drafter that dies at its second call: every round after it is the target's alone
      let calls = 0;
      const dying: CascadeLevel = {
        name: 'dying',
        stats: newStats(),
        async propose() {
          if (++calls === 2) throw new LevelUnavailableError('dying', 'the drafter was killed');
        },
        async review() {
          throw new Error('it only proposes');
        },
        async release() {},
      };
      const noise = new PositionNoise(seed);
      const top = new ModelLevel('draft-l2', counted, `alone-${seed}-${aloneSteps}`, sampling, { promptLength: PROMPT.length, noise });
      decodeCalls = 0;
      const r = await runCascade(top, [dying], { kMatrix: [[2]], lenience: 1 }, req, { eosIds: [], onLevelFailure: (level) => level === dying, aloneSteps });
      t.deepEqual(r.tokenIds, want, `T=${sampling.temperature}, aloneSteps ${aloneSteps}`);
      t.is(r.stats.rounds, 40, 'a target pass per token');
      // the first round's token, a round with the drafter, then the target alone: the rest in calls of up to 8, or one a call
      if (aloneSteps) t.true(decodeCalls <= Math.ceil(39 / 8) + 2, `${decodeCalls} decode calls`);
      else t.true(decodeCalls >= 38, `${decodeCalls} decode calls`);
    }
  }
});

test.serial('multi-step decoding - a multi-step round is no sample of the target review cost the adaptive schedule fits', async (t) => {
  const on = await open(dirOf('draft-l2'), true);
  const key = `review:${on.spec.name}`;
  const cost = processScheduleMemory.cost(key);
  const samples: number[] = [];
  const add = cost.add.bind(cost);
  cost.add = (tokens: number, ms: number) => {
    samples.push(tokens);
    add(tokens, ms);
  };
  try {
    for (let i = 0; i < 2; i++) await generateCascade(on, { drafters: [], kMatrix: 'auto', lenience: 1 }, request(GREEDY, 0));
  } finally {
    cost.add = add;
  }
  // the first round of each request (one token, after the prompt) is the only single-pass call
  t.true(samples.length <= 2, `samples ${JSON.stringify(samples)}`);
  t.false(samples.some((n) => n > 1 && n <= 8), `a multi-step call of several passes was recorded as one review: ${JSON.stringify(samples)}`);
});

test.serial('multi-step decoding - a BatchingSession sizes a lone call by the steps measured for that sequence: another sequence starts again from one step', async (t) => {
  const asked: [string, number][] = [];
  const stepMs: Record<string, number> = { short: 1, long: 80 }; // far apart: a loaded CI machine's late timers still leave several short steps in 50 ms
  const inner = {
    async decode(item: { seqId: string }, plan: DecodePlan): Promise<number[]> {
      asked.push([item.seqId, plan.steps]);
      await new Promise((resolve) => setTimeout(resolve, stepMs[item.seqId]! * plan.steps));
      return new Array<number>(plan.steps).fill(1);
    },
  } as unknown as ConstructorParameters<typeof BatchingSession>[0];
  const batched = new BatchingSession(inner, { multiStepMs: 50, activeMs: 0 });
  const plan: DecodePlan = { steps: 8, sampling: GREEDY, tokens: [1], promptLength: 1 };
  for (let i = 0; i < 4; i++) await batched.decode!({ seqId: 'short', inputIds: [1] }, plan);
  for (let i = 0; i < 2; i++) await batched.decode!({ seqId: 'long', inputIds: [1] }, plan);
  t.is(asked[0]![1], 1, 'a first call makes one step');
  t.true(asked[3]![1] > 1, `a short step lets a call make several: ${JSON.stringify(asked)}`);
  t.deepEqual(asked.slice(4), [['long', 1], ['long', 1]], 'the long sequence is sized by its own steps');
});
