import test from 'ava';
import { loadWorkload } from '../src/bench/workloads.ts';
import { generateCascade, type CascadeConfig } from '../src/engine/cascade.ts';
import { generateAutoregressive, type GenerateRequest } from '../src/engine/generate.ts';
import { planCascade } from '../src/engine/presets.ts';
import { GREEDY, LOGPROB_FLOOR, logprobDistribution, logitsRow, tokenLogprob, type SamplingParams, type TokenLogprob } from '../src/kernels/sampling.ts';
import { loadMagTables } from '../src/models/family.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family } from './helpers/family.ts';

// Log probabilities (issue 23): each emitted token's log probability comes from the target's
// processed distribution at its position, whichever level drafted it. The oracle is target-only
// decoding (greedy), and for sampled output the target's own distribution at every position of
// the output, computed here in one pass.

const target = await OrtModelSession.open(dirOf(family.target));
const drafters = new Map(await Promise.all(family.drafters.map(async (d) => [d, await OrtModelSession.open(dirOf(d))] as const)));
const tok = TextTokenizer.load(target.spec.tokenizerPath);
const magTables = loadMagTables(family);
test.after.always(() => Promise.all([target, ...drafters.values()].map((s) => s.close())));

const prompts = loadWorkload('code').slice(0, 2).map((p) => tok.encode(p.prompt));
const csd = (): CascadeConfig => {
  // a fixed K: under K auto the schedule's timing decides whether anything is drafted on a loaded machine
  const plan = planCascade({ mode: 'csd', kMatrix: [[2, 4, 8], [0, 2, 6], [0, 0, 4]] }, family.drafters);
  return { drafters: plan.drafters.map((d) => (d === 'mag' ? { kind: 'mag', tables: magTables } : { kind: 'model', session: drafters.get(d)! })), kMatrix: plan.kMatrix, lenience: plan.lenience };
};
const TOLERANCE = 1e-4;

/** Same token, log probability within TOLERANCE, same alternatives (ids may swap only where their values are within TOLERANCE). */
function assertClose(t: import('ava').ExecutionContext, got: readonly TokenLogprob[], want: readonly TokenLogprob[], what: string): void {
  t.is(got.length, want.length, `${what}: one entry per token`);
  got.forEach((g, i) => {
    const w = want[i]!;
    t.is(g.token, w.token, `${what}: token ${i}`);
    t.true(Math.abs(g.logprob - w.logprob) <= TOLERANCE, `${what}: token ${i} logprob ${g.logprob} vs ${w.logprob}`);
    t.is(g.top.length, w.top.length, `${what}: token ${i} alternatives`);
    g.top.forEach((a, j) => {
      const b = w.top[j]!;
      t.true(Math.abs(a.logprob - b.logprob) <= TOLERANCE, `${what}: token ${i} alternative ${j}: ${a.logprob} vs ${b.logprob}`);
      if (a.token !== b.token) t.true(Math.abs(a.logprob - (w.top.find((x) => x.token === a.token)?.logprob ?? -Infinity)) <= TOLERANCE, `${what}: token ${i} alternative ${j} is ${a.token}, want ${b.token}`);
    });
  });
}

/** The target's log probabilities of `output` after `prompt`, from one pass over all of it (the oracle for sampled output). */
async function oracle(prompt: readonly number[], output: readonly number[], sampling: SamplingParams, top: number): Promise<TokenLogprob[]> {
  const tokens = [...prompt, ...output];
  const seqId = `oracle-${Math.random()}`;
  const logits = await target.forward({ seqId, inputIds: tokens }, 'all');
  await target.release(seqId);
  const vocab = target.spec.vocabSize;
  return output.map((token, i) => {
    const length = prompt.length + i;
    const row = logitsRow(logits, length - 1, vocab);
    return tokenLogprob(logprobDistribution(row, sampling, { tokens, length, promptLength: prompt.length }), token, top);
  });
}

test('logprobs: tokenLogprob lists the most likely tokens first, lower id first among equals, and floors probability 0', (t) => {
  const p = new Float32Array([0.25, 0.5, 0, 0.25]);
  const e = tokenLogprob(p, 2, 3);
  t.is(e.logprob, LOGPROB_FLOOR);
  t.deepEqual(e.top.map((a) => a.token), [1, 0, 3]);
  t.is(e.top[0]!.logprob, Math.log(0.5));
  t.deepEqual(tokenLogprob(p, 1, 0).top, []);
  t.throws(() => tokenLogprob(p, 1, 21), { instanceOf: RangeError });
});

for (const [name, sampling] of [
  ['greedy', GREEDY],
  ['greedy with penalties and logit_bias', { ...GREEDY, repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.3, logitBias: { 13: 4, 200: -100 } }],
] as [string, SamplingParams][]) {
  test.serial(`logprobs: ${name} under csd equal target-only decoding's, token for token, within ${TOLERANCE}`, async (t) => {
    for (const promptIds of prompts) {
      const req: GenerateRequest = { promptIds, maxTokens: 24, sampling, seed: 1, stopAtEos: false, logprobs: 5 };
      const want = await generateAutoregressive(target, req);
      const streamed: TokenLogprob[] = [];
      const got = await generateCascade(target, csd(), req, (_ids, logprobs) => streamed.push(...(logprobs ?? [])));
      t.deepEqual(got.tokenIds, want.tokenIds);
      t.true(got.stats.acceptedTokens > 0, 'drafts were accepted (the logprobs of drafted tokens are tested)');
      assertClose(t, got.logprobs!, want.logprobs!, name);
      t.deepEqual(streamed, got.logprobs, 'the stream carries the same log probabilities');
      t.deepEqual(got.logprobs!.map((e) => e.token), got.tokenIds);
      t.true(got.logprobs!.every((e) => e.top.length === 5 && e.top[0]!.token === e.token), 'greedy: the emitted token is the most likely one');
    }
  });
}

test.serial(`logprobs: sampled output under csd carries the target's distribution at each position, within ${TOLERANCE}`, async (t) => {
  const sampling: SamplingParams = { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.02, presencePenalty: 0.4 };
  for (const [i, promptIds] of prompts.entries()) {
    const got = await generateCascade(target, csd(), { promptIds, maxTokens: 24, sampling, seed: 7 + i, stopAtEos: false, logprobs: 3 });
    assertClose(t, got.logprobs!, await oracle(promptIds, got.tokenIds, sampling, 3), 'sampled');
    t.true(got.logprobs!.every((e) => e.logprob > LOGPROB_FLOOR), 'a sampled token lies inside the filters');
  }
});

test.serial('logprobs: without the option no log probabilities are computed or returned', async (t) => {
  const got = await generateCascade(target, csd(), { promptIds: prompts[0]!, maxTokens: 8, sampling: GREEDY, seed: 1, stopAtEos: false });
  t.is(got.logprobs, undefined);
  await t.throwsAsync(generateCascade(target, csd(), { promptIds: prompts[0]!, maxTokens: 8, sampling: GREEDY, seed: 1, logprobs: 21 }), { message: /logprobs .* 0\.\.20/ });
});
