/**
 * Would an EAGLE-2 draft tree (Li et al., EMNLP 2024) pay over the chain the feature drafter drafts
 * today, on this machine? Issue 24, build item 4: a projection from measured parts, not a built tree.
 *
 * Measured here, on held-out prompts (greedy continuations of the target, 1 ONNX Runtime thread):
 * - depth 1: the rank of the target's next token among the drafter's logits from the target's true
 *   feature (what EAGLE drafts first after a review);
 * - depth 2: given depth 1 drafted the target's token, its rank in the drafter's next row, read from
 *   the feature the drafter predicted (so both siblings of a tree and the chain share it);
 * - pass times: the target's verify pass over m tokens and the drafter's pass over m tokens, at the
 *   context these prompts reach (medians of 15).
 *
 * Projection (two levels; deeper levels are left out of both sides): a tree with k1 candidates at
 * depth 1 and k2 below the right one emits 1 + P(d1 in top-k1) + P(d1 in top-k1, d2 in top-k2)
 * tokens per round, for one target pass over 1 + k1 + k1*k2 tokens (a tree attention mask costs
 * what a causal pass of as many tokens does) and two drafter passes (1 and k1 tokens). The chain is
 * k1 = k2 = 1. Tokens per ms over target-only decoding's is the projected speedup of the level alone.
 *
 * Usage: node --import tsx tools/bench/eagle-tree.ts [--prompts-dir bench/results/eagle/prompts]
 *          [--workload code] [--prompts 8] [--max-tokens 48] [--models models] [--out FILE.json]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateAutoregressive } from '../../src/engine/generate.ts';
import { GREEDY } from '../../src/kernels/sampling.ts';
import { loadFamily, memberDir } from '../../src/models/family.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';

const { values: o } = parseArgs({
  options: {
    'prompts-dir': { type: 'string', default: 'bench/results/eagle/prompts' },
    workload: { type: 'string', default: 'code' },
    prompts: { type: 'string', default: '8' },
    'max-tokens': { type: 'string', default: '48' },
    models: { type: 'string', default: 'models' },
    out: { type: 'string' },
  },
});
const family = loadFamily(o.models!);
if (!family.eagle) throw new Error(`${family.dir}/family.json names no feature drafter ("eagle")`);
const open = (dir: string) => OrtModelSession.open(dir, { intraOpThreads: 1, prefixCache: false });
const [target, eagle] = [await open(memberDir(family, family.target)), await open(memberDir(family, family.eagle))];
const tok = TextTokenizer.forModel(target.spec);
const size = target.spec.features!.size;
const draftVocab = eagle.spec.draftVocab!;
const prompts = readFileSync(join(o['prompts-dir']!, `${o.workload}.jsonl`), 'utf8')
  .trim()
  .split('\n')
  .slice(0, Number(o.prompts))
  .map((l) => (JSON.parse(l) as { prompt: string }).prompt);

/** Rank of `token` among a drafter logits row over draft_vocab (Infinity when outside it). */
function rank(row: Float32Array, token: number): number {
  const at = draftVocab.indexOf(token);
  if (at < 0) return Infinity;
  let r = 0;
  for (let i = 0; i < row.length; i++) if (row[i]! > row[at]! || (row[i] === row[at] && i < at)) r++;
  return r;
}

const depth1: number[] = [];
const depth2: number[] = [];
let context = 0;
for (const [n, text] of prompts.entries()) {
  const promptIds = tok.encode(text);
  const out = (await generateAutoregressive(target, { promptIds, maxTokens: Number(o['max-tokens']), sampling: GREEDY, seed: 0, stopAtEos: false })).tokenIds;
  const x = [...promptIds, ...out];
  context = Math.max(context, x.length);
  // the target's features f_0 .. f_{n-1}, one pass
  const f = (await target.step({ seqId: `t${n}`, inputIds: x, returnHidden: true }, 'last', false)).hidden!;
  await target.release(`t${n}`);
  // the drafter teacher-forced: row p reads x_p with f_{p-1} and predicts x_{p+1} (and f^_p)
  const seq = `e${n}`;
  const rows = x.length - 1;
  const forced = await eagle.step({ seqId: seq, inputIds: x.slice(1), positionIds: x.slice(1).map((_, j) => j + 1), hiddenStates: f.subarray(0, rows * size), returnHidden: true }, 'all', false);
  const V = draftVocab.length;
  const row = (p: number) => forced.logits.subarray((p - 1) * V, p * V);
  const predicted = (p: number) => forced.hidden!.subarray((p - 1) * size, p * size);
  // positions p whose prediction x_{p+1} and x_{p+2} are generated tokens; descending, so `keep` cuts only rows already used
  for (let p = x.length - 3; p >= promptIds.length - 1 && p >= 1; p--) {
    const r1 = rank(row(p), x[p + 1]!);
    depth1.push(r1);
    // depth 2 below the target's token: x_{p+1} with the drafter's predicted feature f^_p, over rows 1..p
    const next = await eagle.step({ seqId: seq, inputIds: [x[p + 1]!], positionIds: [p + 1], hiddenStates: predicted(p).slice(), keep: p }, 'last', false);
    depth2.push(r1 === Infinity ? Infinity : rank(next.logits, x[p + 2]!));
  }
  await eagle.release(seq);
  process.stderr.write(`prompt ${n + 1}/${prompts.length}: ${promptIds.length} + ${out.length} tokens\n`);
}

/** Median ms of `f` over 15 runs after 3 warm-ups. */
async function median(f: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 3; i++) await f();
  const t: number[] = [];
  for (let i = 0; i < 15; i++) {
    const t0 = performance.now();
    await f();
    t.push(performance.now() - t0);
  }
  return t.sort((a, b) => a - b)[7]!;
}
const past = Array.from({ length: context - 16 }, (_, i) => 5 + ((i * 37) % 2000));
const passMs = async (s: OrtModelSession, m: number, features: boolean): Promise<number> => {
  await s.step({ seqId: 'p', inputIds: past, ...(features ? { hiddenStates: new Float32Array(past.length * size) } : {}) }, 'last', false);
  const ids = Array.from({ length: m }, (_, i) => 100 + i);
  const ms = await median(() => s.step({ seqId: 'p', inputIds: ids, keep: past.length, ...(features ? { hiddenStates: new Float32Array(m * size), returnHidden: true } : {}) }, 'all', false));
  await s.release('p');
  return ms;
};
const targetMs: number[] = [];
const eagleMs: number[] = [];
for (let m = 1; m <= 17; m++) targetMs[m] = await passMs(target, m, false);
for (let m = 1; m <= 4; m++) eagleMs[m] = await passMs(eagle, m, true);

const within = (ranks: number[], k: number) => ranks.filter((r) => r < k).length / ranks.length;
const both = (k1: number, k2: number) => depth1.filter((r, i) => r < k1 && depth2[i]! < k2).length / depth1.length;
const shapes: [number, number][] = [[1, 1], [2, 1], [3, 1], [2, 2], [3, 2], [4, 2], [4, 3]];
const base = 1 / targetMs[1]!;
const rowsOut = shapes.map(([k1, k2]) => {
  const tokens = 1 + within(depth1, k1) + both(k1, k2);
  const verified = 1 + k1 + k1 * k2;
  const ms = targetMs[verified]! + eagleMs[1]! + eagleMs[k1]!;
  return { shape: `${k1}x${k2}`, tokensPerRound: tokens, verifiedTokens: verified, roundMs: ms, speedup: tokens / ms / base };
});
const result = {
  workload: o.workload,
  positions: depth1.length,
  context,
  depth1TopK: [1, 2, 3, 4].map((k) => within(depth1, k)),
  depth2TopKGivenDepth1: [1, 2, 3].map((k) => both(Infinity, k) / within(depth1, Infinity)),
  targetPassMs: targetMs.slice(1),
  drafterPassMs: eagleMs.slice(1),
  projection: rowsOut,
};
process.stdout.write(`${o.workload}: ${depth1.length} positions, context up to ${context} tokens\n`);
process.stdout.write(`depth 1, target token in the drafter's top 1..4: ${result.depth1TopK.map((v) => v.toFixed(3)).join(' ')}\n`);
process.stdout.write(`depth 2 (given depth 1 right), top 1..3: ${result.depth2TopKGivenDepth1.map((v) => v.toFixed(3)).join(' ')}\n`);
process.stdout.write(`target pass ms by tokens 1..17: ${result.targetPassMs.map((v) => v.toFixed(2)).join(' ')}\n`);
process.stdout.write(`drafter pass ms by tokens 1..4: ${result.drafterPassMs.map((v) => v.toFixed(2)).join(' ')}\n`);
process.stdout.write('shape  tokens/round  verified  round ms  x target-only (projected)\n');
for (const r of rowsOut) process.stdout.write(`${r.shape.padEnd(5)}  ${r.tokensPerRound.toFixed(3).padStart(12)}  ${String(r.verifiedTokens).padStart(8)}  ${r.roundMs.toFixed(2).padStart(8)}  ${r.speedup.toFixed(3).padStart(8)}\n`);
if (o.out) writeFileSync(o.out, JSON.stringify(result, null, 2) + '\n');
await Promise.all([target.close(), eagle.close()]);
