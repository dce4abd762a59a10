/**
 * Two settings of one model timed step by step, alternating, in one process: the difference a
 * whole-run benchmark cannot resolve on a shared machine, whose speed drifts by 20-30% between runs
 * (bench/results/README.md). Each round prefills the same prompt in both sessions, then times
 * `--steps` passes of each, A and B taking turns and swapping who goes first every step; prints the
 * median ms per pass of each and B / A, and on how many passes their logits differed (0 expected
 * where the settings promise bit-identical logits, e.g. on against on).
 *
 * - `decode`: one token a pass (what batch invariance pads).
 * - `verify`: six tokens a pass, then a rollback to two of them (a speculative round's pattern).
 *
 * Usage: node --import tsx tools/bench/paired-steps.ts MODEL_DIR [--a on|off|auto] [--b on|off|auto]
 *          [--mode decode|verify] [--past 256] [--steps 100] [--rounds 4] [--tokenizer FILE]
 * (--a and --b are --batch-invariant; the defaults, on against off, time what the padding costs.)
 */
import { parseArgs } from 'node:util';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { BATCH_INVARIANCE, type BatchInvariance } from '../../src/models/session.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    a: { type: 'string', default: 'on' },
    b: { type: 'string', default: 'off' },
    mode: { type: 'string', default: 'decode' },
    past: { type: 'string', default: '256' },
    steps: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '4' },
    tokenizer: { type: 'string' },
  },
});
const dir = positionals[0];
const [past, steps, rounds] = [values.past, values.steps, values.rounds].map(Number) as [number, number, number];
const settings: readonly string[] = BATCH_INVARIANCE;
if (!dir || !['decode', 'verify'].includes(values.mode!) || !settings.includes(values.a!) || !settings.includes(values.b!) || ![past, steps, rounds].every((n) => Number.isInteger(n) && n > 0)) {
  process.stderr.write('usage: paired-steps.ts MODEL_DIR [--a on|off|auto] [--b on|off|auto] [--mode decode|verify] [--past N] [--steps N] [--rounds N] [--tokenizer FILE]\n');
  process.exit(2);
}
// a folder without tokenizer.json (a graph-only fixture) borrows one
const source = values.tokenizer ? { dir, tokenizer: values.tokenizer } : dir;
const open = (batchInvariant: string) => OrtModelSession.open(source, { intraOpThreads: 1, prefixCache: false, batchInvariant: batchInvariant as BatchInvariance });
const a = await open(values.a!);
const b = await open(values.b!);
const prompt = Array.from({ length: past }, (_, i) => 100 + ((i * 37) % 5000));
const times = new Map([[a, [] as number[]], [b, [] as number[]]]);
let differ = 0;
for (let round = 0; round < rounds; round++) {
  const seq = `r${round}`;
  for (const s of [a, b]) await s.forward({ seqId: seq, inputIds: prompt }, 'last');
  let length = past;
  for (let i = 0; i < steps; i++) {
    const logits: Float32Array[] = [];
    for (const s of i % 2 ? [a, b] : [b, a]) {
      const start = performance.now();
      if (values.mode === 'decode') logits.push(await s.forward({ seqId: seq, inputIds: [300 + i], positionIds: [length] }, 'last'));
      else {
        const ids = [300 + i, 301, 302, 303, 304, 305];
        logits.push(await s.forward({ seqId: seq, inputIds: ids, positionIds: ids.map((_, j) => length + j) }, 'last'));
        await s.truncate(seq, length + 2);
      }
      times.get(s)!.push(performance.now() - start);
    }
    if (logits[0]!.some((x, j) => x !== logits[1]![j])) differ++;
    length += values.mode === 'decode' ? 1 : 2;
  }
  for (const s of [a, b]) await s.release(seq);
}
await Promise.all([a.close(), b.close()]);
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
const [ma, mb] = [median(times.get(a)!), median(times.get(b)!)];
console.log(`${dir} ${values.mode}, past ${past}, ${rounds} x ${steps} passes each: A (batch-invariant ${values.a}) ${ma.toFixed(3)} ms, B (${values.b}) ${mb.toFixed(3)} ms, B / A ${(mb / ma).toFixed(3)}; logits differed on ${differ} of ${rounds * steps} passes`);
