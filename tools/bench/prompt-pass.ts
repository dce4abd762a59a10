/**
 * One prompt pass of a fused graph (tools/train/fuse.py, with its num_logits_to_keep input) through
 * raw onnxruntime-node `session.run`, scoring every row of the head (0), one row or two (what the
 * runner feeds under batch invariance): the median and fastest ms of `--repeats` passes each, the
 * three taking turns, after two untimed passes. Prints a table and writes JSON with --out.
 *
 * Usage: node --import tsx tools/bench/prompt-pass.ts FUSED_DIR [--tokens 350] [--repeats 10] [--threads 1] [--out FILE.json]
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { formatTable, median } from '../../src/bench/report.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { tokens: { type: 'string', default: '350' }, repeats: { type: 'string', default: '10' }, threads: { type: 'string', default: '1' }, out: { type: 'string' } },
});
const [n, repeats, threads] = [values.tokens, values.repeats, values.threads].map(Number) as [number, number, number];
if (positionals.length !== 1 || ![n, repeats, threads].every((x) => Number.isInteger(x) && x > 0)) {
  process.stderr.write('usage: prompt-pass.ts FUSED_DIR [--tokens N] [--repeats N] [--threads N] [--out FILE.json]\n');
  process.exit(2);
}
const session = await ort.InferenceSession.create(join(positionals[0]!, 'model.onnx'), { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
if (!session.inputNames.includes('num_logits_to_keep')) {
  process.stderr.write(`${positionals[0]} has no num_logits_to_keep input: fuse it again with tools/train/fuse.py\n`);
  process.exit(1);
}
const int64 = (values: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), dims);
const feeds: Record<string, ort.Tensor> = {
  input_ids: int64(Array.from({ length: n }, (_, i) => 5 + ((i * 37) % 4000)), [1, n]),
  attention_mask: int64(Array(n).fill(1), [1, n]),
  position_ids: int64(Array.from({ length: n }, (_, i) => i), [1, n]),
};
for (const m of session.inputMetadata) {
  if (!m.name.startsWith('past_key_values.') || !m.isTensor) continue;
  const [, kvHeads, , headDim] = m.shape as [unknown, number, unknown, number];
  feeds[m.name] = m.type === 'float16' ? new ort.Tensor('float16', new Uint16Array(0), [1, kvHeads, 0, headDim]) : new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
}
const keeps = [0, 1, 2];
const times = keeps.map(() => [] as number[]);
const pass = (keep: number) => session.run({ ...feeds, num_logits_to_keep: int64([keep], []) }, ['logits']);
for (const keep of keeps) for (let i = 0; i < 2; i++) await pass(keep);
for (let r = 0; r < repeats; r++) {
  for (const [i, keep] of keeps.entries()) {
    const t0 = performance.now();
    await pass(keep);
    times[i]!.push(performance.now() - t0);
  }
}
const rows = keeps.map((keep, i) => ({ numLogitsToKeep: keep, rows: keep || n, medianMs: median(times[i]!), fastestMs: Math.min(...times[i]!) }));
console.log(formatTable(['num_logits_to_keep', 'head rows', 'median ms', 'fastest ms'], rows.map((r) => [r.numLogitsToKeep, r.rows, r.medianMs, r.fastestMs])));
if (values.out) writeFileSync(values.out, `${JSON.stringify({ model: positionals[0], tokens: n, repeats, threads, rows }, null, 2)}\n`);
await session.release();
