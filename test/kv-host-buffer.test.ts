import { join } from 'node:path';
import test from 'ava';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { dirOf, maxAbsDiff, MODELS_DIR } from './helpers/family.ts';

/**
 * `--kv-location host-buffer` (kv-placement.ts, HostBufferKv): a GroupQueryAttention graph reads the
 * cache in place from one growing host buffer per past tensor and returns only each pass's new rows.
 * Every cache operation must leave the model computing exactly what the Optimum contract's
 * presents-in, presents-out path (`host`) computes: the same floats, not merely close ones.
 */
const FUSED = { dir: new URL('./fixtures/fused/draft-l2', import.meta.url).pathname, tokenizer: join(MODELS_DIR, 'tokenizer.json') };
const PROMPT = [5, 99, 1000, 42, 7, 300, 12, 8, 640, 77, 1500, 3];
const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => ((i * 131 + seed * 17) % 4000) + 4);

let buffer: OrtModelSession;
let host: OrtModelSession;
test.before(async () => {
  [buffer, host] = await Promise.all([OrtModelSession.open(FUSED), OrtModelSession.open(FUSED, { kvLocation: 'host' })]);
});
test.after.always(async () => {
  await Promise.all([buffer?.close(), host?.close()]);
});

test('host buffer - auto picks it for a GroupQueryAttention graph on the CPU, and the unfused graph refuses it, naming why', async (t) => {
  t.is(buffer.kvLocation, 'host-buffer');
  t.is(host.kvLocation, 'host');
  await t.throwsAsync(OrtModelSession.open(dirOf('draft-l1'), { kvLocation: 'host-buffer' }), { name: 'ModelLoadError', message: /host-buffer needs a graph whose attention reads each sequence's length from the attention mask \(GroupQueryAttention/ });
});

test('host buffer - logits equal the host path exactly through prefill, decode past the first buffer, verify, rollback, evict and insert, prefix reuse and a batch', async (t) => {
  const both = async (fn: (s: OrtModelSession) => Promise<Float32Array | Float32Array[] | undefined>, what: string) => {
    const [a, b] = await Promise.all([fn(buffer), fn(host)]);
    const rows = (x: Float32Array | Float32Array[] | undefined) => (x === undefined ? [] : Array.isArray(x) ? x : [x]);
    rows(a).forEach((r, i) => t.is(maxAbsDiff(r, rows(b)[i]!), 0, what));
  };
  await both((s) => s.forward({ seqId: 'a', inputIds: PROMPT }), 'prefill');
  // 70 decode steps: past the first buffer (76 rows: the 12 in use and 64 spare), so it grows (a copy) while rows are in use
  for (const [i, id] of ids(70, 1).entries()) await both((s) => s.forward({ seqId: 'a', inputIds: [id] }, 'last'), `decode ${i}`);
  await both((s) => s.forward({ seqId: 'a', inputIds: ids(6, 2) }), 'verify(6)');
  await both((s) => s.forward({ seqId: 'a', keep: 80, inputIds: ids(3, 3) }), 'verify after a rollback to 80');
  await both(async (s) => {
    await s.truncate('a', 50);
    return s.forward({ seqId: 'a', inputIds: [17] }, 'last');
  }, 'decode after truncate');
  let taken: Awaited<ReturnType<OrtModelSession['evict']>>[] = [];
  await both(async (s) => {
    taken.push(await s.evict('a', [3, 4, 10, 40], true));
    return s.forward({ seqId: 'a', inputIds: [23] }, 'last');
  }, 'decode after evicting rows 3, 4, 10 and 40');
  t.deepEqual(taken[0]!.tensors.map((x) => Array.from(x)), taken[1]!.tensors.map((x) => Array.from(x)), 'the evicted rows');
  await both(async (s) => {
    await s.insert('a', taken[s === buffer ? 0 : 1]!);
    return s.forward({ seqId: 'a', inputIds: [29] }, 'last');
  }, 'decode after inserting them back');
  taken = [];
  t.is(buffer.length('a'), host.length('a'));
  // a fresh sequence with the same first tokens copies p's rows (automatic prefix caching)
  const long = [...PROMPT, ...ids(30, 4)]; // at least MIN_PREFIX tokens are reused
  await both((s) => s.forward({ seqId: 'p', inputIds: long }, 'last'), 'p');
  const before = buffer.prefixCache.hits;
  await both((s) => s.forward({ seqId: 'b', inputIds: [...long, ...ids(4, 5)] }, 'last'), 'prefill over a copied prefix');
  t.is(buffer.prefixCache.hits, before + 1, 'the prefix was reused');
  for (const id of ids(3, 6)) await both((s) => s.forward({ seqId: 'b', inputIds: [id] }, 'last'), 'decode over a copied prefix');
  // a batch of equal pasts, one token each: the fused graph's only batch
  await both((s) => s.forward({ seqId: 'c1', inputIds: ids(9, 7) }, 'last'), 'c1');
  await both((s) => s.forward({ seqId: 'c2', inputIds: ids(9, 8) }, 'last'), 'c2');
  await both((s) => s.forwardBatch([{ seqId: 'c1', inputIds: [31] }, { seqId: 'c2', inputIds: [37] }], 'last'), 'batch');
  await both((s) => s.forward({ seqId: 'c1', inputIds: [41] }, 'last'), 'decode after the batch');
  await Promise.all(['a', 'b', 'p', 'c1', 'c2'].map((id) => Promise.all([buffer.release(id), host.release(id)])));
});

test('host buffer - greedy decoding gives the host path\'s tokens', async (t) => {
  const req = { promptIds: PROMPT, maxTokens: 100, sampling: GREEDY, seed: 0, stopAtEos: false };
  t.deepEqual((await generateAutoregressive(buffer, req)).tokenIds, (await generateAutoregressive(host, req)).tokenIds);
});

test('host buffer - a long cache cut back to a few rows (its buffer shrinks) and grown again gives the host path\'s logits', async (t) => {
  const both = async (fn: (s: OrtModelSession) => Promise<Float32Array>, what: string) => {
    const [a, b] = await Promise.all([fn(buffer), fn(host)]);
    t.is(maxAbsDiff(a, b), 0, what);
  };
  await both((s) => s.forward({ seqId: 'long', inputIds: ids(300, 9) }, 'last'), 'prefill 300');
  await both((s) => s.forward({ seqId: 'long', keep: 10, inputIds: [7] }, 'last'), 'decode after keeping 10 of 300');
  for (const [i, id] of ids(80, 10).entries()) await both((s) => s.forward({ seqId: 'long', inputIds: [id] }, 'last'), `decode ${i} after the cut`);
  await Promise.all([buffer.release('long'), host.release('long')]);
});
