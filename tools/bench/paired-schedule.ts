/**
 * MaG as it was and as it is, on one target, in one process: the adaptive schedule with and without
 * draft contexts (schedule.ts: MaG's acceptance counted per match-length class, or in one table), and
 * MaG's fill with and without the family's trigram table (maxgram.ts). Target-only decoding, MaG
 * alone and the family's default cascade, greedy over held-out prompts, K `auto`, each side with its
 * own ScheduleMemory (warmed on the first prompt, not timed), the sides taking turns each repeat.
 * Prints end-to-end and decode tokens/s (medians over repeats), tokens per target pass, and on how
 * many prompts each side's tokens equal target-only decoding's (all expected), and writes the same
 * as JSON.
 *
 * Usage: node --import tsx tools/bench/paired-schedule.ts MODEL_DIR [--prompts 8] [--max-tokens 128]
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

const { positionals, prompts, maxTokens, repeats, threads, promptsDir, out } = pairedArgs(1, 'paired-schedule.ts MODEL_DIR');
const family = loadFamily('models');
const target = await OrtModelSession.open(positionals[0]!, { intraOpThreads: threads, prefixCache: false });
const drafterSessions = new Map<string, OrtModelSession>();
for (const d of family.drafters) drafterSessions.set(d, await OrtModelSession.open(join('models', d), { intraOpThreads: threads, prefixCache: false }));
const tables = loadMagTables(family);
const bigramOnly = { bigram: tables.bigram };
const csd = planCascade({ mode: 'csd' }, family.drafters);

interface Side {
  readonly name: string;
  readonly drafters: readonly string[];
  readonly draftContexts: boolean;
  readonly trigram: boolean;
  readonly memory: ScheduleMemory;
}
const side = (name: string, drafters: readonly string[], draftContexts: boolean, trigram: boolean): Side => ({ name, drafters, draftContexts, trigram, memory: new ScheduleMemory() });
const sides: Side[] = [
  side('target only', [], true, true),
  side('MaG, one table, bigram (before)', ['mag'], false, false),
  side('MaG, by match length, bigram', ['mag'], true, false),
  side('MaG, by match length, trigram (now)', ['mag'], true, true),
  side('default cascade, one table, bigram (before)', csd.drafters, false, false),
  side('default cascade, by match length, trigram (now)', csd.drafters, true, true),
];
const spec = (s: Side, d: string): DrafterSpec => (d === 'mag' ? { kind: 'mag', tables: s.trigram ? tables : bigramOnly } : { kind: 'model', session: drafterSessions.get(d)! });
const tokenizer = TextTokenizer.forModel(target.spec);
const ids = heldOutPrompts(prompts, promptsDir).map((p) => tokenizer.encodePrompt(p.text));
const run = (s: Side, promptIds: number[]) =>
  generateCascade(target, { drafters: s.drafters.map((d) => spec(s, d)), kMatrix: s.drafters.length ? 'auto' : [], lenience: 1 }, { promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false }, undefined, {
    scheduleMemory: s.memory,
    draftContexts: s.draftContexts,
  });

const { e2e, decode, perPass, outputs } = await takeTurns(sides.length, repeats, ids, (i, p) => run(sides[i]!, p));
const rows = sides.map((s, i) => ({
  side: s.name,
  tokensPerSecond: median(e2e[i]!),
  decodeTokensPerSecond: median(decode[i]!),
  tokensPerPass: median(perPass[i]!),
  repeats: e2e[i]!,
  identical: outputs[i]!.filter((o, j) => o.join() === outputs[0]![j]!.join()).length,
}));
console.log(
  formatTable(
    ['side', 'tok/s (median)', 'decode tok/s', 'tokens/pass', 'x target only', 'each repeat', 'same as target only'],
    rows.map((r) => [r.side, r.tokensPerSecond, r.decodeTokensPerSecond, r.tokensPerPass, r.tokensPerSecond / rows[0]!.tokensPerSecond, r.repeats.map((x) => x.toFixed(0)).join(' '), `${r.identical}/${ids.length}`]),
  ),
);
const result = { model: positionals[0], threads, prompts: ids.length, maxTokens, repeats, rows };
if (out) writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
await Promise.all([target, ...drafterSessions.values()].map((s) => s.close()));
