import { join } from 'node:path';
import test from 'ava';
import { generateCascade } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { BatchingSession } from '../src/models/batching-session.ts';
import { graphOpTypes } from '../src/models/graph-ops.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { dirOf, maxAbsDiff, MODELS_DIR } from './helpers/family.ts';

/**
 * The fused form (tools/train/fuse.py: GroupQueryAttention, RotaryEmbedding, SkipSimplifiedLayerNormalization)
 * of draft-l2, committed under test/fixtures/fused/, against the unfused export it was made from, on
 * the CPU EP through the unchanged runner.
 */
const FUSED = { dir: new URL('./fixtures/fused/draft-l2', import.meta.url).pathname, tokenizer: join(MODELS_DIR, 'tokenizer.json') };
/** Largest logit difference allowed between the forms (measured: about 1e-5; logits span about ±20). */
const TOLERANCE = 1e-4;
const PROMPT = [5, 99, 1000, 42, 7, 300, 12, 8, 640, 77, 1500, 3];

let fused: OrtModelSession;
let unfused: OrtModelSession;
let drafter: OrtModelSession;
test.before(async () => {
  [fused, unfused, drafter] = await Promise.all([OrtModelSession.open(FUSED), OrtModelSession.open(dirOf('draft-l2')), OrtModelSession.open(dirOf('draft-l1'))]);
});
test.after.always(async () => {
  await Promise.all([fused?.close(), unfused?.close(), drafter?.close()]);
});

test('fused export - the graph holds the fused ops and none of the unfused attention', (t) => {
  const ops = graphOpTypes(FUSED.dir + '/model.onnx');
  for (const op of ['GroupQueryAttention', 'RotaryEmbedding', 'SimplifiedLayerNormalization', 'SkipSimplifiedLayerNormalization']) t.true(ops.has(op), op);
  for (const op of ['Softmax', 'Pow', 'ReduceMean', 'Neg']) t.false(ops.has(op), op);
  t.true(graphOpTypes(join(dirOf('draft-l2'), 'model.onnx')).has('Softmax'));
});

test('fused export - logits equal the unfused graph\'s within 1e-4: prompt, decode steps, verify passes with past, rollback and explicit positions', async (t) => {
  let worst = 0;
  const both = async (seqId: string, inputIds: number[], extra: { keep?: number; positionIds?: number[] } = {}) => {
    const [a, b] = await Promise.all([fused.forward({ seqId, inputIds, ...extra }), unfused.forward({ seqId, inputIds, ...extra })]);
    worst = Math.max(worst, maxAbsDiff(a, b));
  };
  await both('s', PROMPT);
  for (const id of [40, 41, 42]) await both('s', [id]);
  await both('s', [43, 44, 45, 46, 47]); // verify(5) over a past
  await both('s', [48, 49, 50], { keep: PROMPT.length + 4 }); // a rejection rolls back, then verify(3)
  await both('s', [51]);
  // a bounded cache's positions run ahead of its length (released tokens keep their places)
  await both('p', PROMPT.slice(0, 6), { positionIds: [0, 1, 2, 3, 4, 5] });
  await both('p', [60, 61], { positionIds: [20, 21] });
  t.is(fused.length('s'), unfused.length('s'));
  t.true(worst < TOLERANCE, `max abs diff ${worst}`);
  t.log(`max abs logit difference, fused vs unfused: ${worst.toExponential(2)}`);
});

test('fused export - greedy ar, sd and csd give the unfused model\'s tokens, and a bounded cache (streaming) too', async (t) => {
  const req = { promptIds: PROMPT, maxTokens: 24, sampling: GREEDY, seed: 0, stopAtEos: false };
  const want = (await generateAutoregressive(unfused, req)).tokenIds;
  t.deepEqual((await generateAutoregressive(fused, req)).tokenIds, want, 'ar');
  const sd = await generateCascade(fused, { drafters: [{ kind: 'model', session: drafter }], kMatrix: [[4]], lenience: 1 }, req);
  t.deepEqual(sd.tokenIds, want, 'sd');
  t.true(sd.stats.draftedTokens > sd.stats.acceptedTokens, 'some drafts were rejected and rolled back');
  const csd = await generateCascade(fused, { drafters: [{ kind: 'model', session: drafter }, { kind: 'mag' }], kMatrix: [[2, 5], [0, 2]], lenience: 1 }, req);
  t.deepEqual(csd.tokenIds, want, 'csd');
  // releases compact the cache (no holes) and later tokens keep their explicit positions
  const kv = { policy: 'streaming' as const, budget: { budget: 16, sinks: 4, recent: 2, rebuild: 0 } };
  const bounded = await generateAutoregressive(fused, { ...req, kv });
  t.deepEqual(bounded.tokenIds, (await generateAutoregressive(unfused, { ...req, kv })).tokenIds, 'streaming');
  t.true(bounded.stats.kv!.releases > 0);
});

test('fused export - a batched pass that needs padding is refused, naming why; one without padding runs exactly', async (t) => {
  await fused.forward({ seqId: 'b1', inputIds: PROMPT.slice(0, 5) });
  await fused.forward({ seqId: 'b2', inputIds: PROMPT.slice(0, 3) });
  const padded = [
    { seqId: 'b1', inputIds: [9] },
    { seqId: 'b2', inputIds: [9] },
  ];
  await t.throwsAsync(fused.forwardBatch(padded), { name: 'InvalidArgumentError', message: /fused graph \(GroupQueryAttention\).*cannot skip padding.*pasts \[5, 3\]/ });
  t.is(fused.length('b1'), 5, 'a refused pass leaves the caches alone');
  await fused.forward({ seqId: 'b2', inputIds: PROMPT.slice(3, 5) });
  await t.throwsAsync(fused.forwardBatch([{ seqId: 'b1', inputIds: [9, 10] }, { seqId: 'b2', inputIds: [9, 10] }]), { name: 'InvalidArgumentError', message: /one new token each/ });
  // equal pasts, one token each: no padding, exact
  const rows = await fused.forwardBatch([{ seqId: 'b1', inputIds: [9] }, { seqId: 'b2', inputIds: [11] }]);
  for (const [i, id] of [9, 11].entries()) {
    const alone = await unfused.forward({ seqId: `u${i}`, inputIds: [...PROMPT.slice(0, 5), id] }, 'last');
    t.true(maxAbsDiff(rows[i]!, alone) < TOLERANCE, `row ${i}`);
  }
});

test('fused export - a batched prompt pass of equal prompts scores only the rows asked (num_logits_to_keep), each sequence\'s own, within 1e-4 of the unfused graph', async (t) => {
  const prompts = [PROMPT.slice(0, 6), PROMPT.slice(6, 12)];
  const last = await fused.forwardBatch(prompts.map((inputIds, i) => ({ seqId: `p${i}`, inputIds })), 'last');
  const lastTwo = await fused.forwardBatch(prompts.map((inputIds, i) => ({ seqId: `q${i}`, inputIds })), 2);
  for (const [i, ids] of prompts.entries()) {
    const all = await unfused.forward({ seqId: `r${i}`, inputIds: ids }, 'all');
    const vocab = all.length / ids.length;
    t.is(last[i]!.length, vocab);
    t.true(maxAbsDiff(last[i]!, all.subarray(-vocab)) < TOLERANCE, `last row of ${i}`);
    t.is(lastTwo[i]!.length, 2 * vocab);
    t.true(maxAbsDiff(lastTwo[i]!, all.subarray(-2 * vocab)) < TOLERANCE, `last two rows of ${i}`);
    t.is(fused.length(`p${i}`), ids.length);
  }
});

test('fused export - a BatchingSession over a fused graph serves sequences of different lengths exactly, one pass each', async (t) => {
  const batching = new BatchingSession(fused, { windowMs: 50 }); // not closed: it would close the shared session
  await fused.forward({ seqId: 'c1', inputIds: PROMPT.slice(0, 5) });
  await fused.forward({ seqId: 'c2', inputIds: PROMPT.slice(0, 3) });
  const [a, b] = await Promise.all([batching.forward({ seqId: 'c1', inputIds: [9] }, 'last'), batching.forward({ seqId: 'c2', inputIds: [9] }, 'last')]);
  t.true(maxAbsDiff(a, await unfused.forward({ seqId: 'd1', inputIds: [...PROMPT.slice(0, 5), 9] }, 'last')) < TOLERANCE);
  t.true(maxAbsDiff(b, await unfused.forward({ seqId: 'd2', inputIds: [...PROMPT.slice(0, 3), 9] }, 'last')) < TOLERANCE);
  t.is(batching.counters.largestBatch, 1, 'the padded batch was refused and its forwards ran alone');
});

test('fused export - H2O\'s attention sums are refused: the fused graph returns no attention probabilities', async (t) => {
  await t.throwsAsync(fused.forwardAttention({ seqId: 'h', inputIds: PROMPT }), { name: 'ModelRuntimeError', message: /no attention_sum output: it is a fused graph/ });
});
