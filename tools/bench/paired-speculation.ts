/**
 * Two targets under speculation, in one process: each target with target-only decoding, MaG alone
 * and the family's default cascade (csd), greedy over held-out prompts, K `auto`, each side with its
 * own ScheduleMemory, the six sides taking turns each repeat (paired-args.ts takeTurns). Made to
 * compare two quantizations of one model where it matters, in verify passes as well as decode steps
 * (docs/quantization.md: `--scheme w8a8` against `nbits`). Prints end-to-end and decode tokens/s
 * (medians over repeats), tokens per target pass, each side over its own target-only decoding, and
 * on how many prompts a side's tokens equal its own target-only decoding's (all expected: the
 * oracle of exactness), and writes the same as JSON.
 *
 * Usage: node --import tsx tools/bench/paired-speculation.ts DIR_A DIR_B [--prompts 8] [--max-tokens 128]
 *          [--repeats 3] [--threads 1] [--prompts-dir DIR] [--out FILE.json]
 * (drafters and MaG's tables from ./models, the family)
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { heldOutPrompts } from '../../src/bench/peer-inputs.ts';
import { formatTable, median } from '../../src/bench/report.ts';
import { generateCascade, type DrafterSpec } from '../../src/engine/cascade.ts';
import { planCascade } from '../../src/engine/presets.ts';
import { ScheduleMemory } from '../../src/engine/schedule.ts';
import { GREEDY } from '../../src/kernels/sampling.ts';
import { loadFamily, loadMagTables } from '../../src/models/family.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';
import { pairedArgs, takeTurns } from './paired-args.ts';

const { positionals, prompts, maxTokens, repeats, threads, promptsDir, out } = pairedArgs(2, 'paired-speculation.ts DIR_A DIR_B');
const family = loadFamily('models');
const targets = await Promise.all(positionals.map((d) => OrtModelSession.open(d, { intraOpThreads: threads, prefixCache: false })));
const drafterSessions = new Map<string, OrtModelSession>();
for (const d of family.drafters) drafterSessions.set(d, await OrtModelSession.open(join('models', d), { intraOpThreads: threads, prefixCache: false }));
const tables = loadMagTables(family, targets[0]!.spec.vocabSize);
const methods: [string, readonly string[]][] = [
  ['target only', []],
  ['MaG', ['mag']],
  ['default cascade', planCascade({ mode: 'csd' }, family.drafters).drafters],
];
const sides = targets.flatMap((target, ti) => methods.map(([method, drafters]) => ({ model: positionals[ti]!, method, target, drafters, memory: new ScheduleMemory() })));
const spec = (d: string): DrafterSpec => (d === 'mag' ? { kind: 'mag', tables } : { kind: 'model', session: drafterSessions.get(d)! });
const tokenizer = TextTokenizer.forModel(targets[0]!.spec);
const ids = heldOutPrompts(prompts, promptsDir).map((p) => tokenizer.encodePrompt(p.text));
const { e2e, decode, perPass, outputs } = await takeTurns(sides.length, repeats, ids, (i, promptIds) => {
  const s = sides[i]!;
  return generateCascade(s.target, { drafters: s.drafters.map(spec), kMatrix: s.drafters.length ? 'auto' : [], lenience: 1 }, { promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false }, undefined, {
    scheduleMemory: s.memory,
  });
});
const rows = sides.map((s, i) => {
  const plain = i - (i % methods.length);
  return {
    model: s.model,
    method: s.method,
    tokensPerSecond: median(e2e[i]!),
    decodeTokensPerSecond: median(decode[i]!),
    tokensPerPass: median(perPass[i]!),
    vsTargetOnly: median(e2e[i]!) / median(e2e[plain]!),
    repeats: e2e[i]!,
    sameAsTargetOnly: outputs[i]!.filter((o, j) => o.join() === outputs[plain]![j]!.join()).length,
  };
});
console.log(
  formatTable(
    ['model', 'method', 'tok/s (median)', 'decode tok/s', 'tokens/pass', 'x its target only', 'same as its target only'],
    rows.map((r) => [r.model, r.method, r.tokensPerSecond, r.decodeTokensPerSecond, r.tokensPerPass, r.vsTargetOnly, `${r.sameAsTargetOnly}/${ids.length}`]),
  ),
);
for (const [m] of methods) {
  const [a, b] = rows.filter((r) => r.method === m);
  console.log(`${m}: B / A ${(b!.tokensPerSecond / a!.tokensPerSecond).toFixed(2)}x end to end, ${(b!.decodeTokensPerSecond / a!.decodeTokensPerSecond).toFixed(2)}x decode`);
}
if (out) writeFileSync(out, `${JSON.stringify({ models: positionals, threads, prompts: ids.length, maxTokens, repeats, rows }, null, 2)}\n`);
await Promise.all([...targets, ...drafterSessions.values()].map((s) => s.close()));
