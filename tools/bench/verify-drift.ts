/**
 * How far a model's logits for tokens scored together in one verify pass are from the same tokens
 * scored one at a time (decode steps): speculative decoding is exact only when the two agree up to
 * float rounding. Prints the largest absolute logit difference and the argmax flips over 8 tokens
 * after each of 3 prompts of 40 tokens (the drift of a quantized kernel depends on the values, so a
 * few tokens can miss it).
 *
 * Usage: node --import tsx tools/bench/verify-drift.ts MODEL_DIR [MODEL_DIR...]
 */
import { OrtModelSession } from '../../src/models/ort-session.ts';

const DRAFTS = [300, 301, 280, 11, 325, 17, 900, 45];

for (const dir of process.argv.slice(2)) {
  const s = await OrtModelSession.open(dir, { intraOpThreads: 1, prefixCache: false });
  const V = s.spec.vocabSize;
  let worst = 0;
  let flips = 0;
  let rows = 0;
  for (let p = 0; p < 3; p++) {
    const prompt = Array.from({ length: 40 }, (_, i) => ((i * 37 + 11 + p * 101) % Math.min(2000, V - 5)) + 5);
    const drafts = DRAFTS.map((t) => (t + p * 7) % V);
    await s.forward({ seqId: `verify${p}`, inputIds: prompt }, 'last');
    const together = await s.forward({ seqId: `verify${p}`, inputIds: drafts }, 'all');
    await s.forward({ seqId: `decode${p}`, inputIds: prompt }, 'last');
    for (let i = 0; i < drafts.length; i++) {
      const one = await s.forward({ seqId: `decode${p}`, inputIds: [drafts[i]!] }, 'last');
      const row = together.subarray(i * V, (i + 1) * V);
      let a = 0;
      let b = 0;
      for (let t = 0; t < V; t++) {
        worst = Math.max(worst, Math.abs(row[t]! - one[t]!));
        if (row[t]! > row[a]!) a = t;
        if (one[t]! > one[b]!) b = t;
      }
      if (a !== b) flips++;
      rows++;
    }
  }
  process.stdout.write(`${dir}: max |verify - decode| logit difference ${worst.toExponential(2)}, argmax flips ${flips} of ${rows}\n`);
  await s.close();
}
