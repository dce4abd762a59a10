/**
 * Times the single-op chains of tools/bench/int8-products.py (MatMulNBits 8-bit at level 4, w8a8,
 * DynamicQuantizeMatMul) at 1, 2, 4, 8, 13, 64 and 350 rows, 1 ONNX Runtime thread, the three taking
 * turns (median ms per run), then checks each for batch invariance: the largest difference between a
 * row run alone (and as a padded pair) and the same row inside a pass of 13 (docs/quantization.md,
 * `--scheme w8a8`).
 *
 * Usage: node tools/bench/int8-products.mjs DIR   (DIR written by tools/bench/int8-products.py)
 */
import ort from 'onnxruntime-node';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node tools/bench/int8-products.mjs DIR (made by tools/bench/int8-products.py DIR)\n');
  process.exit(2);
}
const names = ['nbits', 'w8a8', 'dqmm'];
const sessions = {};
for (const n of names) sessions[n] = await ort.InferenceSession.create(`${dir}/${n}.onnx`, { intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential' });
const median = (v) => [...v].sort((x, y) => x - y)[v.length >> 1];
const input = (rows) => new ort.Tensor('float32', new Float32Array(rows * 512).map(() => Math.random() - 0.5), [rows, 512]);

console.log(`rows  ${names.map((n) => n.padStart(8)).join('  ')}   (median ms per run)`);
for (const rows of [1, 2, 4, 8, 13, 64, 350]) {
  const feeds = { A: input(rows) };
  const times = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < (rows >= 64 ? 10 : 60); r++) {
    for (const n of names) {
      const t0 = performance.now();
      await sessions[n].run(feeds);
      times[n].push(performance.now() - t0);
    }
  }
  console.log(`${String(rows).padStart(4)}  ${names.map((n) => median(times[n]).toFixed(3).padStart(8)).join('  ')}`);
}

const ROWS = 13;
const a = new Float32Array(ROWS * 512).map(() => (Math.random() - 0.5) * (Math.random() < 0.01 ? 20 : 1));
for (const n of names) {
  const together = (await sessions[n].run({ A: new ort.Tensor('float32', a, [ROWS, 512]) })).Y.data;
  let worst = 0;
  for (let i = 0; i < ROWS; i++) {
    for (const copies of [1, 2]) {
      const alone = new Float32Array(copies * 512);
      for (let c = 0; c < copies; c++) alone.set(a.subarray(i * 512, (i + 1) * 512), c * 512);
      const y = (await sessions[n].run({ A: new ort.Tensor('float32', alone, [copies, 512]) })).Y.data;
      for (let j = 0; j < 512; j++) worst = Math.max(worst, Math.abs(y[j] - together[i * 512 + j]));
    }
  }
  console.log(`${n}: max |a row alone (or as a padded pair) - the same row in a pass of ${ROWS}| = ${worst}`);
}
