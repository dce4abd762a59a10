// The first-draft agreement of ONNX feature drafters (EAGLE, models/eagle and its quantized copies) with
// the target's greedy tokens on the TEST split, under ONNX Runtime (CPU EP): what eagle.py's `evaluate`
// measures in torch (eagle_model.agreement, step1), for the graph a cascade actually runs.
//
//   /usr/bin/python3 tools/train/eagle.py heldout --out scratch/eagle-heldout   # once: the windows as raw arrays
//   node tools/train/eagle_agreement.mjs --heldout scratch/eagle-heldout models/eagle DIR...
//
// `eagle.py heldout` needs a Python with torch and numpy (Debian's /usr/bin/python3 with python3-torch)
// and the tokenized splits in data/tokens, which a clean checkout lacks: `python3 tools/train/corpus.py
// --out data/corpus && python3 tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json
// --out data/tokens` (tools/train/train_family.sh installs what corpus.py reads). It runs the target over
// 48 test windows per domain, minutes on a CPU, and caches them in .cache/eagle/.
//
// For each window of SEQ tokens x with the target's features f and greedy tokens g: one drafter call over
// input_ids x[1..], hidden_states f[..SEQ-1], position_ids 1..SEQ-1, an empty cache; the drafter's argmax
// at t, mapped through config.json's draft_vocab, agrees when it equals g[t + 1] (the target's token after
// x[t + 1], from its true feature at t, as after a verification). Prints one JSON object: per drafter
// and domain, the agreement and the positions counted.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';

const argv = process.argv.slice(2);
const at = argv.indexOf('--heldout');
if (at < 0 || !argv[at + 1] || argv.length < 3) {
  console.error('usage: node tools/train/eagle_agreement.mjs --heldout DIR DRAFTER_DIR...');
  process.exit(2);
}
const heldout = argv[at + 1];
const drafters = argv.filter((_, i) => i !== at && i !== at + 1);
if (!existsSync(join(heldout, 'meta.json'))) {
  console.error(`${heldout} has no meta.json: write the test windows there first with /usr/bin/python3 tools/train/eagle.py heldout --out ${heldout}`);
  process.exit(2);
}
const meta = JSON.parse(readFileSync(join(heldout, 'meta.json'), 'utf8'));
const { seq, hidden } = meta;
const raw = (file, Type) => { const b = readFileSync(join(heldout, file)); return new Type(b.buffer, b.byteOffset, b.byteLength / Type.BYTES_PER_ELEMENT); };
const ids = (a) => new ort.Tensor('int64', BigInt64Array.from(a, BigInt), [1, a.length]);

const result = {};
for (const dir of drafters) {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const vocab = cfg.draft_vocab;
  if (!Array.isArray(vocab)) throw new Error(`${dir}/config.json has no draft_vocab: not a feature drafter`);
  const session = await ort.InferenceSession.create(join(dir, 'model.onnx'), { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 });
  const empty = new ort.Tensor('float32', new Float32Array(0), [1, cfg.num_key_value_heads, 0, cfg.head_dim]);
  const n = seq - 1;
  const positions = ids(Array.from({ length: n }, (_, i) => i + 1));
  const mask = new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]);
  result[dir] = {};
  for (const [domain, windows] of Object.entries(meta.windows)) {
    const tokens = raw(`${domain}.ids.bin`, Int32Array);
    const features = raw(`${domain}.f.bin`, Float32Array);
    const greedy = raw(`${domain}.greedy.bin`, Int32Array);
    let hits = 0;
    for (let w = 0; w < windows; w++) {
      const out = await session.run({
        input_ids: ids(tokens.subarray(w * seq + 1, (w + 1) * seq)),
        hidden_states: new ort.Tensor('float32', features.slice(w * seq * hidden, (w * seq + n) * hidden), [1, n, hidden]),
        attention_mask: mask, position_ids: positions,
        'past_key_values.0.key': empty, 'past_key_values.0.value': empty,
      });
      const logits = out.logits.data;
      for (let t = 0; t < n; t++) {
        let best = 0;
        for (let v = 1; v < vocab.length; v++) if (logits[t * vocab.length + v] > logits[t * vocab.length + best]) best = v;
        if (vocab[best] === greedy[w * seq + t + 1]) hits++;
      }
      process.stderr.write(`\r${dir} ${domain} ${w + 1}/${windows}`);
    }
    result[dir][domain] = { step1: Number((hits / (windows * n)).toFixed(4)), positions: windows * n };
  }
  process.stderr.write('\n');
  await session.release();
}
console.log(JSON.stringify(result, null, 1));
