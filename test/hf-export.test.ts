import { copyFileSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { BoundedSequence } from '../src/engine/bounded-kv.ts';
import { generateCascade } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { halvesToFloats } from '../src/kernels/half.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { gatherRows, MemoryKvStore } from '../src/models/kv-store.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import type { KvArray } from '../src/models/session.ts';
import { maxAbsDiff, MODELS_DIR } from './helpers/family.ts';

/**
 * Tiny random Llamas (GQA: 4 heads over 2 KV heads) as transformers builds them and torch exports
 * them in the Optimum decoder-with-past layout, in float32 and in float16 (test/fixtures/hf/README.md).
 * They carry no tokenizer; they share this project's 8192-token one, so a model directory here is the
 * fixture's files beside models/tokenizer.json.
 */
const FIXTURES = new URL('./fixtures/hf', import.meta.url).pathname;

interface HfReference {
  prompt_ids: number[];
  greedy_ids: number[];
  last_logits_head: number[];
  last_logits_argmax: number;
}

const dirs: string[] = [];
function modelDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `cascade-hf-${name}-`));
  dirs.push(dir);
  for (const f of ['model.onnx', 'config.json', 'generation_config.json']) symlinkSync(join(FIXTURES, name, f), join(dir, f));
  copyFileSync(join(MODELS_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  return dir;
}
const referenceOf = (name: string): HfReference => JSON.parse(readFileSync(join(FIXTURES, name, 'reference.json'), 'utf8'));

const fp32 = await OrtModelSession.open(modelDir('llama-gqa'));
const fp16 = await OrtModelSession.open(modelDir('llama-gqa-fp16'));
test.after.always(async () => {
  await Promise.all([fp32.close(), fp16.close()]);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const greedy = (ref: HfReference) => ({ promptIds: ref.prompt_ids, maxTokens: ref.greedy_ids.length, sampling: GREEDY, seed: 0, stopAtEos: false });

test('hf export - the KV dtype is read from the graph: float32 and float16', (t) => {
  t.is(fp32.kvDtype, 'float32');
  t.is(fp16.kvDtype, 'float16');
});

for (const [name, session] of [['llama-gqa-fp16', () => fp16], ['llama-gqa', () => fp32]] as const) {
  test(`hf export - ${name}: greedy decoding reproduces transformers' generate token for token`, async (t) => {
    const ref = referenceOf(name);
    const s = session();
    const last = await s.forward({ seqId: 'prompt', inputIds: ref.prompt_ids }, 'last');
    await s.release('prompt');
    t.is(last.indexOf(Math.max(...last)), ref.last_logits_argmax);
    const head = maxAbsDiff(last.subarray(0, ref.last_logits_head.length), Float32Array.from(ref.last_logits_head));
    t.log(`${name}: the first ${ref.last_logits_head.length} last-position logits differ from transformers' by ${head}`);
    t.true(head < 2e-3, `last-position logits differ from transformers' by ${head}`);
    const out = await generateAutoregressive(s, greedy(ref));
    t.deepEqual(out.tokenIds, ref.greedy_ids);
  });
}

test('hf export - speculative decoding of the float16 target with the float32 export as drafter gives the same greedy tokens', async (t) => {
  const ref = referenceOf('llama-gqa-fp16');
  const out = await generateCascade(fp16, { drafters: [{ kind: 'model', session: fp32 }], kMatrix: [[4]], lenience: 1 }, greedy(ref));
  t.deepEqual(out.tokenIds, ref.greedy_ids);
});

test('hf export - float16 KV rows are evicted as Uint16Array and put back give the logits of never evicting (< 1e-3)', async (t) => {
  const ids = referenceOf('llama-gqa-fp16').prompt_ids;
  const n = ids.length - 1;
  const clean = await fp16.forward({ seqId: 'clean', inputIds: ids }, 'last');
  await fp16.forward({ seqId: 'ev', inputIds: ids.slice(0, n) });
  const rows = (await fp16.evict('ev', [1, 4, 9, 10], true))!;
  t.is(rows.dtype, 'float16');
  t.is(rows.count, 4);
  t.is(rows.tensors.length, 2 * fp16.spec.layers);
  t.true(rows.tensors.every((a) => a instanceof Uint16Array && a.length === fp16.spec.kvHeads * 4 * fp16.spec.headDim));
  t.true(halvesToFloats(rows.tensors[0] as Uint16Array).some((v) => v !== 0 && Number.isFinite(v)), 'real keys, not zeros');
  const without = await fp16.forward({ seqId: 'ev', inputIds: [ids[n]!], positionIds: [n] }, 'last');
  t.true(maxAbsDiff(without, clean) > 1e-3, 'without the rows the context differs');
  await fp16.truncate('ev', n - 4);
  await fp16.insert('ev', rows);
  const back = await fp16.forward({ seqId: 'ev', inputIds: [ids[n]!], positionIds: [n] }, 'last');
  const diff = maxAbsDiff(back, clean);
  t.log(`float16: logits after evict + insert differ from never evicting by ${diff}`);
  t.true(diff < 1e-3, `max abs diff ${diff}`);
  await t.throwsAsync(fp16.insert('ev', { ...rows, dtype: 'float32', tensors: rows.tensors.map((a) => new Float32Array(a.length)) }), {
    name: 'InvalidArgumentError',
    message: /float32 KV rows.*keeps its KV as float16/,
  });
  await t.throwsAsync(fp16.insert('ev', { ...rows, tensors: rows.tensors.map((a) => new Float32Array(a.length)) }), { name: 'InvalidArgumentError', message: /Float32Array/ });
  await Promise.all([fp16.release('clean'), fp16.release('ev')]);
});

test('hf export - a bounded float16 cache spills its released rows as float16 and rebuilds them bit for bit', async (t) => {
  const ids = referenceOf('llama-gqa-fp16').prompt_ids;
  const store = new MemoryKvStore();
  // Scripted controller: newer is better, except that positions 0 and 1 matter most once favourEarly is set.
  let favourEarly = false;
  const scorer = { score: async (positions: readonly number[]) => positions.map((p) => (favourEarly && p < 2 ? 1000 : p)) };
  const seq = new BoundedSequence(fp16, 'bounded', { policy: 'adore', budget: { budget: 12, sinks: 0, recent: 1, rebuild: 2 } }, store, scorer);
  try {
    for (const id of ids.slice(0, 16)) await seq.feed([id]);
    const spilled = await store.get('bounded', fp16.spec.name, [0, 1]);
    t.deepEqual(spilled.positions, [0, 1]);
    t.is(spilled.rows?.dtype, 'float16');
    t.true(spilled.rows!.tensors.every((a) => a instanceof Uint16Array));
    // The controller's new scores count from the step after they are asked for: 0 and 1 come back on the second.
    favourEarly = true;
    await seq.feed([ids[16]!]);
    await seq.feed([ids[17]!]);
    t.true(seq.rebuilds >= 2, `rebuilds ${seq.rebuilds}`);
    const order = seq.residentPositions;
    // Every row the runner holds, read without changing them (taken out and put back in the same order).
    const held = (await fp16.evict('bounded', order.map((_, r) => r), true))!;
    await fp16.insert('bounded', held);
    t.is(held.dtype, 'float16');
    const row = (a: KvArray, count: number, r: number) => gatherRows(a, count, [r], fp16.spec.kvHeads);
    for (const [j, p] of [0, 1].entries()) {
      const r = order.indexOf(p);
      t.true(r >= 0, `position ${p} resident`);
      for (const k of held.tensors.keys()) t.deepEqual(row(held.tensors[k]!, held.count, r), row(spilled.rows!.tensors[k]!, 2, j), `position ${p}, tensor ${k}`);
    }
    const next = await seq.feed([ids[18]!]);
    t.true(next.every(Number.isFinite));
  } finally {
    await seq.close();
  }
});

test('hf export - a float16 batch of unequal sequences gives each the logits it gets alone (< 1e-3)', async (t) => {
  const ids = referenceOf('llama-gqa-fp16').prompt_ids;
  const V = fp16.spec.vocabSize;
  const alone = await fp16.forward({ seqId: 'alone', inputIds: ids });
  await fp16.forwardBatch([
    { seqId: 'x', inputIds: ids.slice(0, 3) },
    { seqId: 'y', inputIds: ids.slice(0, 9) },
  ]);
  const [x, y, z] = await fp16.forwardBatch([
    { seqId: 'x', inputIds: ids.slice(3, 5) },
    { seqId: 'y', inputIds: ids.slice(9) },
    { seqId: 'z', inputIds: ids.slice(0, 1) },
  ]);
  const [last] = await fp16.forwardBatch([{ seqId: 'x', inputIds: ids.slice(5, 7) }], 'last');
  const diffs = [
    maxAbsDiff(x!, alone.subarray(3 * V, 5 * V)),
    maxAbsDiff(y!, alone.subarray(9 * V)),
    maxAbsDiff(z!, alone.subarray(0, V)),
    maxAbsDiff(last!, alone.subarray(6 * V, 7 * V)),
  ];
  t.log(`float16: batched vs alone, max abs diff per sequence ${diffs.join(', ')}`);
  for (const d of diffs) t.true(d < 1e-3, `max abs diff ${d}`);
  await Promise.all(['alone', 'x', 'y', 'z'].map((q) => fp16.release(q)));
});

/** A protobuf field: varint (numbers) or length-delimited (strings, messages). */
function field(no: number, value: number | string | Uint8Array): Uint8Array {
  const varint = (n: number) => {
    const out: number[] = [];
    for (; n > 0x7f; n >>>= 7) out.push((n & 0x7f) | 0x80);
    out.push(n);
    return out;
  };
  if (typeof value === 'number') return Uint8Array.from([...varint(no << 3), ...varint(value)]);
  const bytes = typeof value === 'string' ? new TextEncoder().encode(value) : value;
  return Uint8Array.from([...varint((no << 3) | 2), ...varint(bytes.length), ...bytes]);
}
const message = (...fields: Uint8Array[]) => Uint8Array.from(fields.flatMap((f) => [...f]));

test('hf export - a bfloat16 graph is refused with a ModelLoadError naming bfloat16', async (t) => {
  // The smallest graph with a bfloat16 input: y = Identity(x), x and y bfloat16 (ONNX element type 16).
  const value = (name: string) => message(field(1, name), field(2, message(field(1, message(field(1, 16))))));
  const graph = message(field(1, message(field(1, 'x'), field(2, 'y'), field(4, 'Identity'))), field(2, 'g'), field(11, value('x')), field(12, value('y')));
  const model = message(field(1, 8), field(8, message(field(1, ''), field(2, 13))), field(7, graph));
  const dir = mkdtempSync(join(tmpdir(), 'cascade-hf-bf16-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'model.onnx'), model);
  copyFileSync(join(FIXTURES, 'llama-gqa', 'config.json'), join(dir, 'config.json'));
  copyFileSync(join(MODELS_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  await t.throwsAsync(OrtModelSession.open(dir), { name: 'ModelLoadError', message: /bfloat16 inputs or outputs.*float32 or float16/ });
});
