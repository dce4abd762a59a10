import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import * as ort from 'onnxruntime-node';

// models/eagle: the EAGLE feature drafter of issue 24 (tools/train/eagle.py). Its contract is in
// config.json ("contract"); the torch reference is reference.json/.bin over the target's features.
const dir = join(import.meta.dirname, '..', 'models', 'eagle');
const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as {
  hidden_size: number; num_key_value_heads: number; head_dim: number; vocab_size: number; draft_vocab: number[];
};
const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as {
  input_ids: number[]; position_ids: number[]; prefix: number; draft_greedy: number[];
  hidden_states: { file: string }; outputs: { file: string; logits_shape: [number, number] };
};
const floats = (file: string) => {
  const b = readFileSync(join(dir, file));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
const i64 = (v: number[]) => new ort.Tensor('int64', BigInt64Array.from(v, BigInt), [1, v.length]);

test('eagle drafter - the ONNX graph reproduces the torch reference in two calls over its own cache', async (t) => {
  const session = await ort.InferenceSession.create(join(dir, 'model.onnx'));
  const H = config.hidden_size;
  const [s, vocab] = ref.outputs.logits_shape;
  const hidden = floats(ref.hidden_states.file);
  const want = floats(ref.outputs.file);
  const empty = new ort.Tensor('float32', new Float32Array(0), [1, config.num_key_value_heads, 0, config.head_dim]);
  let past: { key: ort.Tensor; value: ort.Tensor } = { key: empty, value: empty };
  const logits = new Float32Array(s * vocab);
  const next = new Float32Array(s * H);
  for (const [lo, hi] of [[0, ref.prefix], [ref.prefix, s]] as const) {
    const out = await session.run({
      input_ids: i64(ref.input_ids.slice(lo, hi)),
      hidden_states: new ort.Tensor('float32', hidden.slice(lo * H, hi * H), [1, hi - lo, H]),
      attention_mask: i64(new Array<number>(hi).fill(1)),
      position_ids: i64(ref.position_ids.slice(lo, hi)),
      'past_key_values.0.key': past.key,
      'past_key_values.0.value': past.value,
    });
    t.deepEqual(out['present.0.key']!.dims, [1, config.num_key_value_heads, hi, config.head_dim]);
    logits.set(out.logits!.data as Float32Array, lo * vocab);
    next.set(out.next_hidden_states!.data as Float32Array, lo * H);
    past = { key: out['present.0.key'] as ort.Tensor, value: out['present.0.value'] as ort.Tensor };
  }
  t.true(maxDiff(logits, want.subarray(0, s * vocab)) < 1e-3, `logits max abs diff ${maxDiff(logits, want.subarray(0, s * vocab))}`);
  t.true(maxDiff(next, want.subarray(s * vocab)) < 1e-3, `next_hidden_states max abs diff ${maxDiff(next, want.subarray(s * vocab))}`);
  const argmax = Array.from({ length: s }, (_, i) => {
    const row = logits.subarray(i * vocab, (i + 1) * vocab);
    return config.draft_vocab[row.indexOf(Math.max(...row))];
  });
  t.deepEqual(argmax, ref.draft_greedy);
});

test('eagle drafter - draft_vocab maps each logit to a distinct token id of the target vocabulary', (t) => {
  const ids = config.draft_vocab;
  t.is(ids.length, ref.outputs.logits_shape[1]);
  t.is(new Set(ids).size, ids.length);
  t.true(ids.every((id) => Number.isInteger(id) && id >= 0 && id < config.vocab_size));
});
