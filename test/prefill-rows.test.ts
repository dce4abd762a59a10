import { join } from 'node:path';
import test from 'ava';
import { OrtModelSession } from '../src/models/ort-session.ts';

/**
 * A prefill keeps only the logits rows asked for: at a 152k vocabulary every prompt token's row would
 * be 608 KB (2.4 GB for 4k tokens). The runner runs a long prefill in chunks (LOGITS_BUDGET / vocab
 * tokens: 220 here), each over the KV of the ones before, and returns the last n rows.
 */
const TARGET = join(new URL('./fixtures/hf/qwen-152k', import.meta.url).pathname, 'target');

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test('prefill rows - a 500-token prefill at a 152k vocabulary returns only its last rows, equal within 1e-5 to feeding it piece by piece', async (t) => {
  const session = await OrtModelSession.open({ dir: TARGET });
  try {
    const V = session.spec.vocabSize;
    t.is(V, 152_064);
    const tokens = Array.from({ length: 500 }, (_, i) => (i * 7919 + 13) % 151_936);
    const chunked = await session.forward({ seqId: 'whole', inputIds: tokens }, 3);
    t.is(chunked.length, 3 * V, 'three rows, not 500');
    t.is(session.length('whole'), 500);
    // the oracle: the same tokens fed in passes of 100, the last one returning all its rows
    for (let i = 0; i < 400; i += 100) await session.forward({ seqId: 'pieces', inputIds: tokens.slice(i, i + 100) }, 'last');
    const last = await session.forward({ seqId: 'pieces', inputIds: tokens.slice(400) }, 'all');
    const diff = maxDiff(chunked, last.subarray(97 * V));
    t.log(`the last 3 rows differ from piece-by-piece feeding by ${diff}`);
    t.true(diff < 1e-5);
    t.deepEqual(await session.forward({ seqId: 'one', inputIds: tokens }, 'last'), chunked.subarray(2 * V), "'last' is the last of those rows");
    // both caches hold the same 500 tokens: the next step agrees
    const [a, b] = await Promise.all([session.forward({ seqId: 'whole', inputIds: [42] }), session.forward({ seqId: 'pieces', inputIds: [42] })]);
    t.true(maxDiff(a, b) < 1e-5);
    await t.throwsAsync(session.forward({ seqId: 'bad', inputIds: [1, 2] }, 3), { message: /cannot return the last 3 logits rows of 2 new tokens/ });
  } finally {
    await session.close();
  }
});
