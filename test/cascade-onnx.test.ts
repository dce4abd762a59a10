import test from 'ava';
import { loadWorkload, WORKLOADS } from '../src/bench/workloads.ts';
import { generateCascade, type CascadeConfig, type DrafterSpec } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { defaultKMatrix, planCascade } from '../src/engine/presets.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { loadMagTables } from '../src/models/family.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family } from './helpers/family.ts';

const target = await OrtModelSession.open(dirOf(family.target));
const sessions = new Map(await Promise.all(family.drafters.map(async (d) => [d, await OrtModelSession.open(dirOf(d))] as const)));
const magTables = loadMagTables(family);
const tok = TextTokenizer.load(target.spec.tokenizerPath);
test.after.always(() => Promise.all([target, ...sessions.values()].map((s) => s.close())));

// Held-out prompts (man pages and npm's sources, never trained on): all 48 of bench/prompts, plus the
// first half of every third one, so that the cascade also starts from mid-sentence cuts. 64 prompts.
const full = WORKLOADS.flatMap((w) => loadWorkload(w).map((p) => p.prompt));
const prompts = [...full, ...full.filter((_, i) => i % 3 === 0).map((p) => p.slice(0, p.length >> 1))];
const encoded = prompts.map((p) => tok.encode(p));
const MAX_TOKENS = 20;
const request = (promptIds: number[]) => ({ promptIds, maxTokens: MAX_TOKENS, sampling: GREEDY, seed: 0, stopAtEos: false });

let reference: Promise<number[][]> | undefined;
/** Target-only greedy outputs, computed once and shared by every shape. */
const targetOutputs = () => (reference ??= (async () => {
  const out: number[][] = [];
  for (const ids of encoded) out.push((await generateAutoregressive(target, request(ids))).tokenIds);
  return out;
})());

const [large, small] = family.drafters as [string, string];
const spec = (d: string): DrafterSpec => (d === 'mag' ? { kind: 'mag', tables: magTables } : { kind: 'model', session: sessions.get(d)! });
const shape = (drafters: string[], kMatrix?: number[][], lenience?: number, magFirst?: number): CascadeConfig => {
  // without kMatrix: the adaptive schedule (auto), the default
  const plan = planCascade({ mode: 'csd', drafters, kMatrix, lenience }, family.drafters);
  return { drafters: plan.drafters.map(spec), kMatrix: plan.kMatrix, lenience: plan.lenience, magFirst };
};

/** Shapes over every held-out prompt; `true` marks those run on every other prompt only (32: CI's time limit), the default cascade and sd over all 64. */
const shapes: [string, CascadeConfig, boolean?][] = [
  [`sd with ${large}`, shape([large])],
  [`sd with ${small}, K=6`, shape([small], [[6]]), true],
  ['mag (prompt lookup)', shape(['mag']), true],
  [`2 levels: ${large} + mag`, shape([large, 'mag']), true],
  [`2 levels: ${large} + ${small}, lenience 2`, shape([large, small], [[2, 5], [0, 3]], 2), true],
  [`3 levels: ${large} + ${small} + mag`, shape([large, small, 'mag'])],
  [`3 levels: ${large} + ${small} + mag, lenience 4, custom K`, shape([large, small, 'mag'], [[3, 6, 9], [0, 3, 6], [0, 0, 3]], 4), true],
  ['horizontal only', shape([large, small, 'mag'], [[1, 2, 4], [0, 0, 0], [0, 0, 0]]), true],
  [`3 levels, the fixed default K`, shape([large, small, 'mag'], defaultKMatrix([large, small, 'mag'])), true],
  ['3 levels, MaG first from 2 tokens', shape([large, small, 'mag'], undefined, undefined, 2), true],
];

test(`cascade (ONNX) - ${prompts.length} held-out prompts`, (t) => {
  t.true(prompts.length >= 50);
});

for (const [name, config, half] of shapes) {
  test.serial(`cascade (ONNX) - ${name}: greedy output is token-identical to target-only decoding on ${half ? 'every other' : 'every'} held-out prompt`, async (t) => {
    const want = await targetOutputs();
    const mismatches: string[] = [];
    for (const [i, ids] of encoded.entries()) {
      if (half && i % 2) continue;
      const got = await generateCascade(target, config, request(ids));
      if (got.tokenIds.join() !== want[i]!.join()) mismatches.push(`prompt ${i}: ${JSON.stringify(tok.decode(got.tokenIds))} != ${JSON.stringify(tok.decode(want[i]!))}`);
    }
    t.deepEqual(mismatches, []);
  });
}
