// The median time of one decode step of a target and of EAGLE drafter graphs, over a 256-token cache
// on one intra-op thread (as `cascade bench costs` and tools/train/eagle_check.mjs time them), the
// graphs interleaved round by round so that load from other processes falls on all alike. Unlike
// eagle_check.mjs it checks nothing against a torch reference, so any head width applies.
//
//   node tools/bench/drafter-cost.mjs TARGET_DIR DRAFTER_DIR... [--repeats 200] [--out FILE.json]
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { timeInterleaved } from './interleaved.mjs';

const argv = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = argv.indexOf(name);
  if (i < 0) return fallback;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
};
const repeats = Number(flag('--repeats', '200'));
const out = flag('--out', undefined);
if (argv.length < 2 || !Number.isInteger(repeats) || repeats < 1) {
  console.error('usage: node tools/bench/drafter-cost.mjs TARGET_DIR DRAFTER_DIR... [--repeats N] [--out FILE.json]');
  process.exit(2);
}
const [targetDir, ...drafters] = argv;
const past = 256;
const opts = { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 };
const ids = (a) => new ort.Tensor('int64', BigInt64Array.from(a.map(BigInt)), [1, a.length]);
const ones = (n) => new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]);
const kv = (cfg, n) => new ort.Tensor('float32', new Float32Array(cfg.num_key_value_heads * n * cfg.head_dim), [1, cfg.num_key_value_heads, n, cfg.head_dim]);
const config = (dir) => JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));

const tcfg = config(targetDir);
const target = await ort.InferenceSession.create(join(targetDir, 'model.onnx'), opts);
const tFeeds = { input_ids: ids([42]), attention_mask: ones(past + 1), position_ids: ids([past]) };
for (let i = 0; i < tcfg.num_hidden_layers; i++) tFeeds[`past_key_values.${i}.key`] = tFeeds[`past_key_values.${i}.value`] = kv(tcfg, past);
const passes = [() => target.run(tFeeds)];
for (const dir of drafters) {
  const cfg = config(dir);
  const session = await ort.InferenceSession.create(join(dir, 'model.onnx'), opts);
  const feeds = {
    input_ids: ids([42]), hidden_states: new ort.Tensor('float32', new Float32Array(cfg.hidden_size).fill(0.1), [1, 1, cfg.hidden_size]),
    attention_mask: ones(past + 1), position_ids: ids([past]), 'past_key_values.0.key': kv(cfg, past), 'past_key_values.0.value': kv(cfg, past),
  };
  passes.push(() => session.run(feeds));
}
const [targetMs, ...drafterMs] = await timeInterleaved(passes, { warmup: 10, repeats });
const result = { past, repeats, threads: 1, target: targetDir, target_ms: targetMs,
  drafters: drafters.map((dir, i) => ({ drafter: dir, draft_vocab: config(dir).draft_vocab.length, ms: drafterMs[i], over_target: drafterMs[i] / targetMs })) };
console.log(JSON.stringify(result, null, 1));
if (out) writeFileSync(out, `${JSON.stringify(result, null, 1)}\n`);
