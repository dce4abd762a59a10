import { cpSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { ModelLoadError } from '../src/errors.ts';
import { loadModelSpec } from '../src/models/config.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { dirOf, family, maxAbsDiff, members, reference } from './helpers/family.ts';

for (const name of members) {
  test(`runner - ${name}: ONNX logits match the training framework's reference (max abs diff < 1e-3)`, async (t) => {
    const ref = reference(name);
    const s = await OrtModelSession.open(dirOf(name));
    try {
      const logits = await s.forward({ seqId: 'r', inputIds: ref.inputIds });
      const diff = maxAbsDiff(logits, ref.logits);
      t.true(diff < 1e-3, `max abs diff ${diff}`);
      const a = await s.forward({ seqId: 'p', inputIds: ref.inputIds.slice(0, ref.prefix) });
      const b = await s.forward({ seqId: 'p', inputIds: ref.inputIds.slice(ref.prefix) });
      const both = new Float32Array(a.length + b.length);
      both.set(a);
      both.set(b, a.length);
      t.true(maxAbsDiff(both, ref.logits) < 1e-3);
    } finally {
      await s.close();
    }
  });
}

test('runner - incremental decoding equals one full forward', async (t) => {
  const ids = reference(family.target).inputIds;
  const s = await OrtModelSession.open(dirOf(family.target));
  try {
    const full = await s.forward({ seqId: 'full', inputIds: ids });
    const vocab = s.spec.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      const row = await s.forward({ seqId: 'inc', inputIds: [ids[i]!] });
      t.true(maxAbsDiff(row, full.subarray(i * vocab, (i + 1) * vocab)) < 1e-4, `position ${i}`);
    }
    t.is(s.length('inc'), ids.length);
  } finally {
    await s.close();
  }
});

test('runner - truncation then re-decoding equals never having decoded the dropped tokens', async (t) => {
  const ids = reference(family.target).inputIds;
  const s = await OrtModelSession.open(dirOf(family.target));
  try {
    const clean = await s.forward({ seqId: 'clean', inputIds: ids });
    const vocab = s.spec.vocabSize;
    await s.forward({ seqId: 'rb', inputIds: ids.slice(0, 6) });
    await s.forward({ seqId: 'rb', inputIds: [17, 99, 4000, 5] });
    await s.truncate('rb', 6);
    t.is(s.length('rb'), 6);
    const again = await s.forward({ seqId: 'rb', inputIds: ids.slice(6) });
    t.true(maxAbsDiff(again, clean.subarray(6 * vocab)) < 1e-5);
    await t.throwsAsync(s.truncate('rb', 999), { name: 'SequenceError' });
  } finally {
    await s.close();
  }
});

/** The first drafter's session, the reference input and its logits scored alone in one pass (sequence `alone`). */
async function withBatchReference(fn: (s: OrtModelSession, ids: readonly number[], alone: Float32Array, vocab: number) => Promise<void>): Promise<void> {
  const ids = reference(family.target).inputIds;
  const s = await OrtModelSession.open(dirOf(family.drafters[0]!));
  try {
    await fn(s, ids, await s.forward({ seqId: 'alone', inputIds: ids }), s.spec.vocabSize);
  } finally {
    await s.close();
  }
}

test('runner - a rollback in place (host KV) leaves the sequence that shared its batched pass as it was', (t) =>
  withBatchReference(async (s, ids, alone, vocab) => {
    // a batch of equal lengths leaves each sequence a view of one presents buffer (HostKv.split); a
    // truncate compacts a past in place (HostKv.truncate), which must stay within its own rows
    await s.forwardBatch([
      { seqId: 'x', inputIds: ids.slice(0, 8) },
      { seqId: 'y', inputIds: ids.slice(0, 8) },
    ]);
    // y is batch row 1: a view at a nonzero offset of the shared buffer
    await s.truncate('y', 6);
    await s.truncate('x', 5);
    const x = await s.forward({ seqId: 'x', inputIds: ids.slice(5) });
    const y = await s.forward({ seqId: 'y', inputIds: ids.slice(6) });
    t.true(maxAbsDiff(x, alone.subarray(5 * vocab)) < 1e-4);
    t.true(maxAbsDiff(y, alone.subarray(6 * vocab)) < 1e-4);
    // rollbacks one after another, each over the last one's view (to 2 of 11 rows: a copy, not a view)
    await s.truncate('x', 9);
    await s.truncate('x', 2);
    t.true(maxAbsDiff(await s.forward({ seqId: 'x', inputIds: ids.slice(2) }), alone.subarray(2 * vocab)) < 1e-4);
  }));

test('runner - a batch of unequal sequences gives each the logits it gets alone', (t) =>
  withBatchReference(async (s, ids, alone, vocab) => {
    await s.forwardBatch([
      { seqId: 'x', inputIds: ids.slice(0, 3) },
      { seqId: 'y', inputIds: ids.slice(0, 9) },
    ]);
    const [x, y, z] = await s.forwardBatch([
      { seqId: 'x', inputIds: ids.slice(3, 5) },
      { seqId: 'y', inputIds: ids.slice(9) },
      { seqId: 'z', inputIds: ids.slice(0, 1) },
    ]);
    t.true(maxAbsDiff(x!, alone.subarray(3 * vocab, 5 * vocab)) < 1e-4);
    t.true(maxAbsDiff(y!, alone.subarray(9 * vocab)) < 1e-4);
    t.true(maxAbsDiff(z!, alone.subarray(0, vocab)) < 1e-4);
    const [last] = await s.forwardBatch([{ seqId: 'x', inputIds: ids.slice(5, 7) }], 'last');
    t.true(maxAbsDiff(last!, alone.subarray(6 * vocab, 7 * vocab)) < 1e-4);
  }));

test('runner - bad token ids and empty input are refused without harming the sequence', async (t) => {
  const s = await OrtModelSession.open(dirOf(family.drafters[0]!));
  try {
    await s.forward({ seqId: 'a', inputIds: [1, 2, 3] });
    await t.throwsAsync(s.forward({ seqId: 'a', inputIds: [s.spec.vocabSize] }), { name: 'InvalidArgumentError', message: /outside the vocabulary/ });
    await t.throwsAsync(s.forward({ seqId: 'a', inputIds: [] }), { name: 'InvalidArgumentError' });
    t.is(s.length('a'), 3);
    await t.notThrowsAsync(s.forward({ seqId: 'a', inputIds: [4] }));
  } finally {
    await s.close();
  }
});

function scratchCopy(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-model-'));
  cpSync(dirOf(name), dir, { recursive: true });
  return dir;
}

test('runner - missing or malformed model directories get a clear ModelLoadError', async (t) => {
  t.throws(() => loadModelSpec('/nonexistent/model'), { instanceOf: ModelLoadError, message: /does not exist/ });
  const dir = scratchCopy(family.drafters[0]!);
  try {
    const config = readFileSync(join(dir, 'config.json'), 'utf8');
    writeFileSync(join(dir, 'config.json'), '{ not json');
    t.throws(() => loadModelSpec(dir), { instanceOf: ModelLoadError, message: /config.json is not valid JSON/ });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...JSON.parse(config), vocab_size: undefined }));
    t.throws(() => loadModelSpec(dir), { instanceOf: ModelLoadError, message: /vocab_size/ });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...JSON.parse(config), num_hidden_layers: 7 }));
    await t.throwsAsync(OrtModelSession.open(dir), { instanceOf: ModelLoadError, message: /decoder-with-past contract for 7 layers/ });
    writeFileSync(join(dir, 'config.json'), config);
    writeFileSync(join(dir, 'model.onnx'), 'garbage');
    await t.throwsAsync(OrtModelSession.open(dir), { instanceOf: ModelLoadError });
    rmSync(join(dir, 'model.onnx'));
    t.throws(() => loadModelSpec(dir), { instanceOf: ModelLoadError, message: /has no decoder graph: expected model.onnx/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('runner - an unavailable execution provider falls back to cpu only when asked', async (t) => {
  const dir = dirOf(family.drafters[0]!);
  await t.throwsAsync(OrtModelSession.open(dir, { executionProviders: ['cuda'] }), { instanceOf: ModelLoadError });
  const warnings: string[] = [];
  const s = await OrtModelSession.open(dir, { executionProviders: ['cuda'], cpuFallback: true }, (w) => warnings.push(w));
  t.is(s.provider, 'cpu');
  t.regex(warnings[0] ?? '', /falling back to cpu/);
  await s.close();
});

test('runner - evicted KV rows put back at the end of the cache give the same logits as never evicting', async (t) => {
  const ids = reference(family.target).inputIds;
  const s = await OrtModelSession.open(dirOf(family.drafters[0]!));
  try {
    const n = ids.length - 1;
    const clean = await s.forward({ seqId: 'clean', inputIds: ids }, 'last');
    await s.forward({ seqId: 'ev', inputIds: ids.slice(0, n) });
    const rows = await s.evict('ev', [1, 4, 9], true);
    t.is(rows?.count, 3);
    t.is(s.length('ev'), n - 3);
    // Without the rows the next token sees a different context …
    const without = await s.forward({ seqId: 'ev', inputIds: [ids[n]!], positionIds: [n] }, 'last');
    t.true(maxAbsDiff(without, clean) > 1e-3);
    await s.truncate('ev', n - 3);
    // … with them back (in another cache order) it sees exactly the original one.
    await s.insert('ev', rows!);
    t.is(s.length('ev'), n);
    const back = await s.forward({ seqId: 'ev', inputIds: [ids[n]!], positionIds: [n] }, 'last');
    t.true(maxAbsDiff(back, clean) < 1e-4, `max abs diff ${maxAbsDiff(back, clean)}`);
    await t.throwsAsync(s.evict('ev', [0, 0]), { name: 'SequenceError' });
    await t.throwsAsync(s.evict('ev', [n + 5]), { name: 'SequenceError' });
    await t.throwsAsync(s.insert('ev', { dtype: 'float32', count: 1, kvHeads: 1, tensors: [new Float32Array(3)] }), { name: 'InvalidArgumentError' });
    await t.throwsAsync(s.insert('ev', { ...rows!, dtype: 'float16', tensors: rows!.tensors.map((a) => new Uint16Array(a.length)) }), { name: 'InvalidArgumentError', message: /float16 KV rows.*keeps its KV as float32/ });
  } finally {
    await s.close();
  }
});

test('runner - a forward that keeps a prefix rolls back and decodes in one call, like truncate then forward', async (t) => {
  const ids = reference(family.target).inputIds;
  const s = await OrtModelSession.open(dirOf(family.drafters[0]!));
  try {
    const clean = await s.forward({ seqId: 'clean', inputIds: ids });
    const vocab = s.spec.vocabSize;
    await s.forward({ seqId: 'k', inputIds: [...ids.slice(0, 6), 17, 99, 4000] });
    const again = await s.forward({ seqId: 'k', inputIds: ids.slice(6), keep: 6 });
    t.is(s.length('k'), ids.length);
    t.true(maxAbsDiff(again, clean.subarray(6 * vocab)) < 1e-5);
    await t.throwsAsync(s.forward({ seqId: 'k', inputIds: [1], keep: 999 }), { name: 'SequenceError' });
    t.is(s.length('k'), ids.length, 'a refused call changes nothing');
  } finally {
    await s.close();
  }
});

for (const name of members) {
  test(`runner - ${name}: attention_sum gives each new token's attention over its cache, summed over heads and layers`, async (t) => {
    const ids = reference(name).inputIds;
    const s = await OrtModelSession.open(dirOf(name));
    try {
      await s.forward({ seqId: 'a', inputIds: ids.slice(0, 5) });
      const { logits, attention } = await s.forwardAttention({ seqId: 'a', inputIds: ids.slice(5, 8) });
      const total = 8;
      t.is(attention.length, 3 * total);
      const heads = s.spec.layers * (JSON.parse(readFileSync(join(dirOf(name), 'config.json'), 'utf8')).num_attention_heads as number);
      for (let q = 0; q < 3; q++) {
        const row = attention.subarray(q * total, (q + 1) * total);
        const sum = row.reduce((a, b) => a + b, 0);
        t.true(Math.abs(sum - heads) < 1e-3, `query ${q}: attention sums to ${sum}, want ${heads} (layers x heads)`);
        t.true(row.subarray(5 + q + 1).every((v) => v === 0), 'no attention to later tokens');
      }
      const plain = await s.forward({ seqId: 'b', inputIds: ids.slice(0, 8) });
      t.true(maxAbsDiff(logits, plain.subarray(5 * s.spec.vocabSize)) < 1e-4, 'the same logits as a plain forward');
    } finally {
      await s.close();
    }
  });
}

test('runner - closing a session while its pass runs waits for the pass: a worker stopped inside session.run aborts the whole process', async (t) => {
  const s = await OrtModelSession.open(dirOf(family.target));
  const ids = Array.from({ length: 1500 }, (_, i) => ((i * 7) % 8000) + 5);
  const pass = s.forward({ seqId: 'long', inputIds: ids }, 'last');
  await new Promise((r) => setTimeout(r, 50));
  await s.close();
  // before the fix the test process died here with "terminate called after throwing an instance of 'Napi::Error'"
  t.is((await pass).length, s.spec.vocabSize);
  await t.throwsAsync(s.forward({ seqId: 'after', inputIds: [5] }, 'last'), { message: /closed|stopped/ });
});
