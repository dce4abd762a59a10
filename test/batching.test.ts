import test from 'ava';
import { loadWorkload } from '../src/bench/workloads.ts';
import { generateCascade, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { BatchingSession } from '../src/models/batching-session.ts';
import { loadMagTables } from '../src/models/family.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family, maxAbsDiff, reference } from './helpers/family.ts';

test('batching - concurrent forwards of many sequences run in fewer passes and each gets the logits it gets alone', async (t) => {
  const ids = reference(family.target).inputIds;
  const inner = await OrtModelSession.open(dirOf(family.drafters[0]!));
  const s = new BatchingSession(inner, { windowMs: 5 });
  try {
    const vocab = s.spec.vocabSize;
    const alone = await inner.forward({ seqId: 'alone', inputIds: ids });
    // 8 sequences, each fed its own prefix then one token at a time, all at once
    const cuts = [3, 4, 5, 6, 7, 8, 9, 10];
    await Promise.all(cuts.map((c, i) => s.forward({ seqId: `s${i}`, inputIds: ids.slice(0, c) })));
    const before = s.counters.passes;
    const rows = await Promise.all(cuts.map((c, i) => s.forward({ seqId: `s${i}`, inputIds: [ids[c]!] })));
    rows.forEach((r, i) => t.true(maxAbsDiff(r, alone.subarray(cuts[i]! * vocab, (cuts[i]! + 1) * vocab)) < 1e-4, `sequence ${i}`));
    t.true(s.counters.passes - before < cuts.length, `${s.counters.passes - before} passes for ${cuts.length} forwards`);
    t.true(s.counters.largestBatch > 1);
    t.true(s.load().occupancy > 1);
  } finally {
    await s.close();
  }
});

test('batching - a bad forward batched with good ones fails alone and harms no sequence', async (t) => {
  const inner = await OrtModelSession.open(dirOf(family.drafters[1]!));
  const s = new BatchingSession(inner, { windowMs: 20 });
  try {
    await Promise.all([s.forward({ seqId: 'a', inputIds: [1, 2, 3] }), s.forward({ seqId: 'b', inputIds: [4, 5] })]);
    const [good, bad] = await Promise.allSettled([s.forward({ seqId: 'a', inputIds: [7] }), s.forward({ seqId: 'b', inputIds: [s.spec.vocabSize + 5] })]);
    t.is(good.status, 'fulfilled');
    t.is(bad.status, 'rejected');
    t.regex(String((bad as PromiseRejectedResult).reason), /outside the vocabulary/);
    t.is(s.length('a'), 4);
    t.is(s.length('b'), 2);
  } finally {
    await s.close();
  }
});

test('batching - greedy csd with the adaptive schedule over 8 concurrent batched requests equals target-only decoding of each alone', async (t) => {
  const target = await OrtModelSession.open(dirOf(family.target));
  const drafters = await Promise.all(family.drafters.map((d) => OrtModelSession.open(dirOf(d))));
  const batched = [target, ...drafters].map((m) => new BatchingSession(m, { windowMs: 2 }));
  try {
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    const prompts = [...loadWorkload('code').slice(0, 4), ...loadWorkload('english').slice(0, 4)].map((p) => tok.encode(p.prompt));
    const req = (promptIds: number[]) => ({ promptIds, maxTokens: 32, sampling: GREEDY, seed: 0, stopAtEos: false });
    const want: number[][] = [];
    for (const p of prompts) want.push((await generateAutoregressive(target, req(p))).tokenIds);
    const specs: DrafterSpec[] = [...batched.slice(1).map((session) => ({ kind: 'model' as const, session })), { kind: 'mag', tables: loadMagTables(family) }];
    const got = await Promise.all(prompts.map((p) => generateCascade(batched[0]!, { drafters: specs, kMatrix: 'auto', lenience: 1 }, req(p))));
    got.forEach((g, i) => t.deepEqual(g.tokenIds, want[i], `prompt ${i}`));
    t.true(batched[0]!.counters.largestBatch > 1, 'the target batched reviews of different requests');
  } finally {
    await Promise.all(batched.map((b) => b.close()));
  }
});
