import { existsSync } from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { generateCascade } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { MIN_PREFIX } from '../src/models/prefix-cache.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import type { PrefixCacheStats } from '../src/models/prefix-cache.ts';
import type { LogitsRows, ModelSession } from '../src/models/session.ts';
import { dirOf, family, maxAbsDiff } from './helpers/family.ts';

/**
 * Automatic prefix caching (prefix-cache.ts): a fresh sequence starting with tokens a live sequence
 * holds copies those KV rows. `cached` has it on (the default), `fresh` off: every result of
 * `cached` is checked against `fresh` computing everything.
 */
const PROMPT = Array.from({ length: 40 }, (_, i) => (i * 131 + 7) % 8000);
const tail = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 977 + i * 53 + 11) % 8000);

let cached: OrtModelSession;
let fresh: OrtModelSession;
let cachedDraft: OrtModelSession;
test.before(async () => {
  // released sequences are kept as sources by default (prefixCacheTokens); these probes release theirs, so live sources only here
  [cached, fresh, cachedDraft] = await Promise.all([OrtModelSession.open(dirOf(family.target), { prefixCacheTokens: 0 }), OrtModelSession.open(dirOf(family.target), { prefixCache: false }), OrtModelSession.open(dirOf(family.drafters.at(-1)!), { prefixCacheTokens: 0 })]);
});
test.after.always(async () => {
  await Promise.all([cached?.close(), fresh?.close(), cachedDraft?.close()]);
});

/** A session that counts its prefix reuse (OrtModelSession, MemoryModelSession). */
type Counting = ModelSession & { readonly prefixCache: PrefixCacheStats };

let n = 0;
const id = (what: string) => `${what}-${n++}`;

/** A forward of a new sequence, released after (no source for later probes): its logits, hits and reused tokens. */
async function probe(s: Counting, inputIds: number[], rows: LogitsRows) {
  const seqId = id('probe');
  const r = await counted(s, () => s.forward({ seqId, inputIds }, rows));
  await s.release(seqId);
  return r;
}

/** Runs `f` and returns the hits and reused tokens it added to `s`'s counters. */
async function counted<T>(s: Counting, f: () => Promise<T>): Promise<{ value: T; hits: number; reused: number }> {
  const { hits, reusedTokens } = s.prefixCache;
  const value = await f();
  return { value, hits: s.prefixCache.hits - hits, reused: s.prefixCache.reusedTokens - reusedTokens };
}

test.serial('prefix cache - a second sequence with the same 40-token prompt copies its KV and gets a fresh prefill\'s logits', async (t) => {
  const src = id('src');
  await cached.forward({ seqId: src, inputIds: [...PROMPT, ...tail(1, 5)] }, 'last');
  const ids = [...PROMPT, ...tail(2, 6)];
  const copy = id('copy');
  const r = await counted(cached, () => cached.forward({ seqId: copy, inputIds: ids }, 6));
  t.is(r.hits, 1);
  t.is(r.reused, PROMPT.length, 'the whole common prefix, no more');
  t.is(cached.length(copy), ids.length);
  const want = await fresh.forward({ seqId: id('ref'), inputIds: ids }, 6);
  t.true(maxAbsDiff(r.value, want) < 1e-4, `max abs diff ${maxAbsDiff(r.value, want)}`);
  t.is(fresh.prefixCache.hits, 0, 'prefixCache: false never reuses');
  // the copy decodes on as a fresh sequence would
  const next = await cached.forward({ seqId: copy, inputIds: [17] });
  const nextWant = await fresh.forward({ seqId: id('ref'), inputIds: [...ids, 17] }, 'last');
  t.true(maxAbsDiff(next, nextWant) < 1e-4);
  await cached.release(src);
  await cached.release(copy);
});

test.serial('prefix cache - greedy autoregressive and cascade decoding of a prompt shared with a live sequence give the tokens of prefix caching off', async (t) => {
  const src = id('src');
  const srcDraft = id('src');
  await cached.forward({ seqId: src, inputIds: [...PROMPT, ...tail(3, 4)] }, 'last');
  await cachedDraft.forward({ seqId: srcDraft, inputIds: [...PROMPT, ...tail(3, 4)] }, 'last');
  const req = { promptIds: [...PROMPT, ...tail(4, 3)], maxTokens: 12, sampling: GREEDY, seed: 0, stopAtEos: false };
  const want = (await generateAutoregressive(fresh, req)).tokenIds;
  const ar = await counted(cached, () => generateAutoregressive(cached, req));
  t.deepEqual(ar.value.tokenIds, want, 'ar');
  t.is(ar.hits, 1);
  t.is(ar.reused, PROMPT.length);
  const draftHits = cachedDraft.prefixCache.hits;
  const config = { drafters: [{ kind: 'model' as const, session: cachedDraft }, { kind: 'mag' as const }], kMatrix: [[3, 4], [0, 2]], lenience: 1 };
  const csd = await counted(cached, () => generateCascade(cached, config, req));
  t.deepEqual(csd.value.tokenIds, want, 'csd');
  t.is(csd.hits, 1, 'the target reused the prompt');
  t.is(cachedDraft.prefixCache.hits, draftHits + 1, 'and so did the drafter');
  await cached.release(src);
  await cachedDraft.release(srcDraft);
});

/** When a fresh sequence reuses a prefix, on `s` (prefix caching on), checked against `off`. */
async function reuseRules(t: ExecutionContext, s: Counting, off: ModelSession): Promise<void> {
  const short = id('short');
  await s.forward({ seqId: short, inputIds: PROMPT.slice(0, MIN_PREFIX) }, 'last');
  const r1 = await probe(s, [...PROMPT.slice(0, MIN_PREFIX - 1), ...tail(5, 4)], 'last');
  t.is(r1.hits, 0, `${MIN_PREFIX - 1} common tokens`);
  const r0 = await probe(s, [...PROMPT.slice(0, MIN_PREFIX), ...tail(5, 4)], 'last');
  t.is(r0.reused, MIN_PREFIX, `${MIN_PREFIX} common tokens`);
  await s.release(short);

  const evicted = id('evicted');
  await s.forward({ seqId: evicted, inputIds: [...PROMPT, ...tail(6, 2)] }, 'last');
  await s.evict(evicted, [PROMPT.length + 1]);
  const r2 = await probe(s, [...PROMPT, ...tail(7, 2)], 'last');
  t.is(r2.hits, 0, 'a sequence that evicted rows is no source');
  await s.release(evicted);

  const moved = id('moved');
  await s.forward({ seqId: moved, inputIds: PROMPT, positionIds: PROMPT.map((_, j) => j + 100) }, 'last');
  const r3 = await probe(s, [...PROMPT, ...tail(8, 2)], 'last');
  t.is(r3.hits, 0, 'nor one whose tokens sit at other positions');
  await s.release(moved);

  const src = id('src');
  await s.forward({ seqId: src, inputIds: [...PROMPT, ...tail(9, 8)] }, 'last');
  const r4 = await probe(s, [...PROMPT, ...tail(10, 2)], 'all');
  t.is(r4.hits, 0, "'all' rows leave nothing to copy");
  // the last n rows are computed: a prompt that is all prefix copies all but n of it
  const r5 = await probe(s, [...PROMPT, ...tail(9, 8)], 10);
  t.is(r5.reused, PROMPT.length + 8 - 10);
  const r6 = await probe(s, [...PROMPT, ...tail(9, 8)], 'last');
  t.is(r6.reused, PROMPT.length + 8 - 1, "'last' feeds one token");
  const want = await off.forward({ seqId: id('ref'), inputIds: [...PROMPT, ...tail(9, 8)] }, 10);
  t.true(maxAbsDiff(r5.value, want) < 1e-4);
  // a sequence that already holds tokens is no fresh sequence
  const held = id('held');
  await s.forward({ seqId: held, inputIds: [1, 2] }, 'last');
  const r7 = await counted(s, () => s.forward({ seqId: held, inputIds: [...PROMPT, ...tail(10, 2)] }, 'last'));
  t.is(r7.hits, 0);
  await s.release(held);
  await s.release(src);
}

test.serial('prefix cache - nothing is reused below MIN_PREFIX tokens, from a sequence that evicted rows or sits at other positions, or when every row is asked for', (t) => reuseRules(t, cached, fresh));

test.serial('prefix cache - the in-memory model counts the reuse the runner makes', async (t) => {
  const memory = (prefixCache: boolean) => new MemoryModelSession({ name: 'm', vocabSize: 8192, order: 3, seed: 5, prefixCache, prefixCacheTokens: 0 });
  const off = memory(false);
  await reuseRules(t, memory(true), off);
  t.is(off.prefixCache.hits, 0);
});

test.serial('prefix cache - the source decodes, rolls back and is released unaffected by its copies, and a copy outlives it', async (t) => {
  const src = id('src');
  const ids = [...PROMPT, ...tail(11, 6)];
  await cached.forward({ seqId: src, inputIds: ids }, 'last');
  const copy = id('copy');
  const r = await counted(cached, () => cached.forward({ seqId: copy, inputIds: [...PROMPT, ...tail(12, 3)] }, 'last'));
  t.is(r.reused, PROMPT.length);
  // the source goes on: a token, a rollback into the shared prefix, other tokens
  const ref = id('ref');
  await fresh.forward({ seqId: ref, inputIds: ids }, 'last');
  t.true(maxAbsDiff(await cached.forward({ seqId: src, inputIds: [5] }), await fresh.forward({ seqId: ref, inputIds: [5] })) < 1e-4);
  await cached.truncate(src, 30);
  await fresh.truncate(ref, 30);
  t.true(maxAbsDiff(await cached.forward({ seqId: src, inputIds: [9, 8, 7] }), await fresh.forward({ seqId: ref, inputIds: [9, 8, 7] })) < 1e-4);
  // a source rolled back to 30 tokens offers 30, fewer than MIN_PREFIX
  const r2 = await probe(cached, [...PROMPT, 1], 'last');
  t.is(r2.reused, PROMPT.length, 'the copy is a source too, with its whole prefix');
  await cached.release(src);
  // the copy goes on after its source is gone
  const copyRef = id('ref');
  await fresh.forward({ seqId: copyRef, inputIds: [...PROMPT, ...tail(12, 3)] }, 'last');
  t.true(maxAbsDiff(await cached.forward({ seqId: copy, inputIds: [4, 4] }), await fresh.forward({ seqId: copyRef, inputIds: [4, 4] })) < 1e-4);
  await cached.release(copy);
});

test.serial('prefix cache - fresh sequences of a batched pass copy a live prefix and get the logits they get alone', async (t) => {
  const s = cachedDraft;
  const src = id('src');
  await s.forward({ seqId: src, inputIds: [...PROMPT, ...tail(13, 2)] }, 'last');
  const a = [...PROMPT, ...tail(14, 3)];
  const b = [...PROMPT.slice(0, 36), ...tail(15, 5)];
  const r = await counted(s, () =>
    s.forwardBatch(
      [
        { seqId: id('a'), inputIds: a },
        { seqId: id('b'), inputIds: b },
      ],
      2,
    ),
  );
  t.is(r.hits, 2);
  t.is(r.reused, 40 + 36);
  const off = await OrtModelSession.open(dirOf(family.drafters.at(-1)!), { prefixCache: false });
  try {
    t.true(maxAbsDiff(r.value[0]!, await off.forward({ seqId: 'a', inputIds: a }, 2)) < 1e-4);
    t.true(maxAbsDiff(r.value[1]!, await off.forward({ seqId: 'b', inputIds: b }, 2)) < 1e-4);
  } finally {
    await off.close();
  }
  await s.release(src);
});

/**
 * On the device (DeviceKv: the copy is a Gather run on the EP, nothing crosses to the host), over
 * lavapipe as in webgpu.test.ts: the smallest drafter, a short prompt, checked against the CPU EP.
 */
const LAVAPIPE = '/usr/share/vulkan/icd.d/lvp_icd.json';
if (!process.env.VK_DRIVER_FILES && existsSync(LAVAPIPE)) process.env.VK_DRIVER_FILES = LAVAPIPE;
const vulkan = Boolean(process.env.VK_DRIVER_FILES && existsSync(process.env.VK_DRIVER_FILES.split(':')[0]!));
(vulkan ? test.serial : test.serial.skip)('prefix cache - on the WebGPU EP the copy stays on the device and gives the CPU EP\'s logits; the source and the copy go on after each other', async (t) => {
  const dir = dirOf(family.drafters.at(-1)!);
  const [gpu, cpu] = await Promise.all([OrtModelSession.open(dir, { executionProviders: ['webgpu'] }), OrtModelSession.open(dir, { prefixCache: false })]);
  try {
    t.is(gpu.kvLocation, 'device');
    const ids = [...PROMPT, ...tail(16, 3)];
    await gpu.forward({ seqId: 'src', inputIds: [...PROMPT, ...tail(17, 2)] }, 'last');
    const r = await counted(gpu, () => gpu.forward({ seqId: 'copy', inputIds: ids }, 3));
    t.is(r.reused, PROMPT.length);
    t.true(maxAbsDiff(r.value, await cpu.forward({ seqId: 'copy', inputIds: ids }, 3)) < 1e-4);
    await cpu.forward({ seqId: 'src', inputIds: [...PROMPT, ...tail(17, 2)] }, 'last');
    t.true(maxAbsDiff(await gpu.forward({ seqId: 'src', inputIds: [3] }), await cpu.forward({ seqId: 'src', inputIds: [3] })) < 1e-4, 'the source after the copy');
    await gpu.release('src');
    t.true(maxAbsDiff(await gpu.forward({ seqId: 'copy', inputIds: [4] }), await cpu.forward({ seqId: 'copy', inputIds: [4] })) < 1e-4, 'the copy after its source is released');
  } finally {
    await Promise.all([gpu.close(), cpu.close()]);
  }
});

test.serial('prefix cache - a released sequence stays a source within the retained budget (n choices after choice 0 ended, a chat\'s next turn); the oldest goes first', async (t) => {
  const keeping = await OrtModelSession.open(dirOf(family.target), { prefixCacheTokens: 100 });
  try {
    const other = Array.from({ length: 40 }, (_, i) => (i * 71 + 3) % 8000);
    await keeping.forward({ seqId: 'a', inputIds: [...PROMPT, ...tail(1, 5)] }, 'last');
    await keeping.release('a');
    const ids = [...PROMPT, ...tail(2, 6)];
    const r = await counted(keeping, () => keeping.forward({ seqId: 'b', inputIds: ids }, 6));
    t.is(r.reused, PROMPT.length, 'copied from the released sequence');
    const want = await fresh.forward({ seqId: id('want'), inputIds: ids }, 6);
    t.true(maxAbsDiff(r.value, want) <= 1e-4);
    await keeping.release('b');
    // 45 + 46 tokens are kept; a third released sequence of 41 goes over 100: the oldest ('a') is freed
    await keeping.forward({ seqId: 'c', inputIds: [...other, 1] }, 'last');
    await keeping.release('c');
    const again = await counted(keeping, () => keeping.forward({ seqId: 'd', inputIds: [...PROMPT, ...tail(1, 5)] }, 'last'));
    t.is(again.reused, PROMPT.length, "'b' (used more recently than 'a') still holds the prompt");
    const memory = new MemoryModelSession({ name: 'm', vocabSize: 8192, order: 3, seed: 5 });
    await memory.forward({ seqId: 'a', inputIds: [...PROMPT, 1] }, 'last');
    await memory.release('a');
    const m = await counted(memory, () => memory.forward({ seqId: 'b', inputIds: [...PROMPT, 2] }, 'last'));
    t.is(m.reused, PROMPT.length, 'the in-memory model counts the same reuse');
    const none = new MemoryModelSession({ name: 'm', vocabSize: 8192, order: 3, seed: 5, prefixCacheTokens: 0 });
    await none.forward({ seqId: 'a', inputIds: [...PROMPT, 1] }, 'last');
    await none.release('a');
    t.is((await counted(none, () => none.forward({ seqId: 'b', inputIds: [...PROMPT, 2] }, 'last'))).reused, 0, 'prefixCacheTokens 0 keeps none');
  } finally {
    await keeping.close();
  }
});
