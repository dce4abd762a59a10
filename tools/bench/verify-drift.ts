/**
 * How far a model's logits for tokens scored together in one verify pass are from the same tokens
 * scored one at a time (decode steps) and in two passes (3 + 5): speculative decoding is exact only
 * when they agree. Prints, with batch invariance off and on (SessionOptions.batchInvariant), the
 * largest absolute logit difference and the argmax flips over 8 tokens after each of 6 prompts of
 * 40-105 tokens (a quantized kernel's drift depends on the values, so a few tokens can miss it).
 *
 * Usage: node --import tsx tools/bench/verify-drift.ts MODEL_DIR [MODEL_DIR...]
 */
import { OrtModelSession } from '../../src/models/ort-session.ts';
import type { BatchInvariance } from '../../src/models/session.ts';

const DRAFTS = [300, 301, 280, 11, 325, 17, 900, 45];

/** The largest |a - b| over a row, and whether their argmaxes differ. */
function compare(a: Float32Array, b: Float32Array): [number, boolean] {
  let worst = 0;
  let ia = 0;
  let ib = 0;
  for (let t = 0; t < a.length; t++) {
    worst = Math.max(worst, Math.abs(a[t]! - b[t]!));
    if (a[t]! > a[ia]!) ia = t;
    if (b[t]! > b[ib]!) ib = t;
  }
  return [worst, ia !== ib];
}

for (const dir of process.argv.slice(2)) {
  for (const batchInvariant of ['off', 'on'] as BatchInvariance[]) {
    const s = await OrtModelSession.open(dir, { intraOpThreads: 1, prefixCache: false, batchInvariant });
    const V = s.spec.vocabSize;
    const found = { decode: { worst: 0, flips: 0 }, split: { worst: 0, flips: 0 } };
    let rows = 0;
    for (let p = 0; p < 6; p++) {
      const prompt = Array.from({ length: 40 + 13 * p }, (_, i) => ((i * 37 + 11 + p * 101) % Math.min(2000, V - 5)) + 5);
      const drafts = DRAFTS.map((t) => (t * (p + 1) + p * 7) % V);
      for (const id of ['verify', 'decode', 'split']) await s.forward({ seqId: `${id}${p}`, inputIds: prompt }, 'last');
      const together = await s.forward({ seqId: `verify${p}`, inputIds: drafts }, 'all');
      const first = await s.forward({ seqId: `split${p}`, inputIds: drafts.slice(0, 3) }, 'all');
      const rest = await s.forward({ seqId: `split${p}`, inputIds: drafts.slice(3) }, 'all');
      const split = new Float32Array(drafts.length * V);
      split.set(first);
      split.set(rest, 3 * V);
      for (let i = 0; i < drafts.length; i++) {
        const row = together.subarray(i * V, (i + 1) * V);
        const one = await s.forward({ seqId: `decode${p}`, inputIds: [drafts[i]!] }, 'last');
        for (const [name, other] of [['decode', one], ['split', split.subarray(i * V, (i + 1) * V)]] as const) {
          const [worst, flip] = compare(row, other);
          found[name].worst = Math.max(found[name].worst, worst);
          if (flip) found[name].flips++;
        }
        rows++;
      }
    }
    const say = (name: keyof typeof found) => `${found[name].worst.toExponential(2)} (${found[name].flips} of ${rows} argmax flips)`;
    process.stdout.write(`${dir}, batch invariance ${batchInvariant}: max |verify - decode| ${say('decode')}, max |verify - (3 + 5)| ${say('split')}\n`);
    await s.close();
  }
}
