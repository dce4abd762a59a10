// Checks an exported EAGLE drafter and a featured target with ONNX Runtime, and times one pass of each.
//
//   node tools/train/eagle_check.mjs --target scratch/target-hidden --drafter models/eagle [--past 256] [--repeats 50]
//       [--record models/eagle/record.json]   (writes the result into the record as "measured")
//
// 1. The featured target (add_hidden_output.py) gives the original graph's logits and presents
//    unchanged (--original, default models/target) and a hidden_states output equal to the torch
//    features in the drafter's reference-hidden.bin.
// 2. The drafter reproduces reference.bin (logits, next_hidden_states) in two calls over its cache.
// 3. Cost: the median time of the target's decode(1) (original and featured graphs) and the drafter's
//    step(1), each over a --past-token cache on one intra-op thread (as `cascade bench costs` runs),
//    interleaved round by round, and the drafter's over the original target's.
// Prints one JSON object.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { timeInterleaved } from '../bench/interleaved.mjs';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const targetDir = args.target ?? 'scratch/target-hidden';
const originalDir = args.original ?? 'models/target';
const drafterDir = args.drafter ?? 'models/eagle';
const past = Number(args.past ?? 256);
const repeats = Number(args.repeats ?? 50);
const opts = { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 };

const floats = (path) => { const b = readFileSync(path); return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4); };
const ids = (a) => new ort.Tensor('int64', BigInt64Array.from(a.map(BigInt)), [1, a.length]);
const ones = (n) => new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]);
const maxDiff = (a, b) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i])); return m; };
/** Median ms of each pass, interleaved round by round after 5 untimed rounds. */
const timeEach = (fns) => timeInterleaved(fns, { warmup: 5, repeats });

const tcfg = JSON.parse(readFileSync(join(targetDir, 'config.json'), 'utf8'));
const dcfg = JSON.parse(readFileSync(join(drafterDir, 'config.json'), 'utf8'));
const ref = JSON.parse(readFileSync(join(drafterDir, 'reference.json'), 'utf8'));
const target = await ort.InferenceSession.create(join(targetDir, 'model.onnx'), opts);
const original = await ort.InferenceSession.create(join(originalDir, 'model.onnx'), opts);
const drafter = await ort.InferenceSession.create(join(drafterDir, 'model.onnx'), opts);
const kv = (cfg, n) => new ort.Tensor('float32', new Float32Array(cfg.num_key_value_heads * n * cfg.head_dim), [1, cfg.num_key_value_heads, n, cfg.head_dim]);
const targetFeeds = (tokens, pastLen, pos0) => {
  const feeds = { input_ids: ids(tokens), attention_mask: ones(pastLen + tokens.length), position_ids: ids(tokens.map((_, i) => pos0 + i)) };
  for (let i = 0; i < tcfg.num_hidden_layers; i++) feeds[`past_key_values.${i}.key`] = feeds[`past_key_values.${i}.value`] = kv(tcfg, pastLen);
  return feeds;
};

// 1. the featured target
const hiddenRef = floats(join(drafterDir, ref.hidden_states.file));
const targetIds = ref.target_input_ids;
const a = await target.run(targetFeeds(targetIds, 0, 0));
const b = await original.run(targetFeeds(targetIds, 0, 0));
const unchanged = original.outputNames.every((n) => maxDiff(a[n].data, b[n].data) === 0);
const hiddenDiff = maxDiff(a.hidden_states.data, hiddenRef);

// 2. the drafter, in two calls
const refOut = floats(join(drafterDir, ref.outputs.file));
const [s, vocab] = ref.outputs.logits_shape;
const hidden = dcfg.hidden_size;
let k = kv(dcfg, 0);
let v = kv(dcfg, 0);
const logits = new Float32Array(s * vocab);
const next = new Float32Array(s * hidden);
for (const [lo, hi] of [[0, ref.prefix], [ref.prefix, s]]) {
  const out = await drafter.run({
    input_ids: ids(ref.input_ids.slice(lo, hi)),
    hidden_states: new ort.Tensor('float32', hiddenRef.slice(lo * hidden, hi * hidden), [1, hi - lo, hidden]),
    attention_mask: ones(hi), position_ids: ids(ref.position_ids.slice(lo, hi)),
    'past_key_values.0.key': k, 'past_key_values.0.value': v,
  });
  logits.set(out.logits.data, lo * vocab);
  next.set(out.next_hidden_states.data, lo * hidden);
  k = out['present.0.key'];
  v = out['present.0.value'];
}
const drafterLogitsDiff = maxDiff(logits, refOut.subarray(0, s * vocab));
const drafterFeatureDiff = maxDiff(next, refOut.subarray(s * vocab));

// 3. cost of one pass over a `past`-token cache
const tFeeds = targetFeeds([42], past, past);
const dFeeds = {
  input_ids: ids([42]), hidden_states: new ort.Tensor('float32', hiddenRef.slice(0, hidden), [1, 1, hidden]),
  attention_mask: ones(past + 1), position_ids: ids([past]),
  'past_key_values.0.key': kv(dcfg, past), 'past_key_values.0.value': kv(dcfg, past),
};
const [originalMs, targetMs, drafterMs] = await timeEach([() => original.run(tFeeds), () => target.run(tFeeds), () => drafter.run(dFeeds)]);
const result = {
  featured_target: { other_outputs_unchanged: unchanged, hidden_states_max_abs_diff_vs_torch: hiddenDiff },
  drafter: { logits_max_abs_diff: drafterLogitsDiff, next_hidden_states_max_abs_diff: drafterFeatureDiff },
  cost: { past, repeats, threads: 1, target_decode_ms: targetMs, original_target_decode_ms: originalMs, drafter_step_ms: drafterMs,
    drafter_over_target: drafterMs / originalMs },
};
console.log(JSON.stringify(result, null, 1));
if (args.record) {
  const record = JSON.parse(readFileSync(args.record, 'utf8'));
  writeFileSync(args.record, `${JSON.stringify({ ...record, measured: { ...result, cpu: 'onnxruntime-node, CPU EP, 1 intra-op thread' } }, null, 1)}\n`);
}
