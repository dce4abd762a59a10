/**
 * Async drafting with and without the drafter's rest (async-cascade.ts, MIN_DRAFT_GAIN: a drafter
 * whose drafts are rarely accepted is paused), beside target-only decoding, in one process: sd with
 * the family's largest drafter and csd (that drafter ahead, MaG below), over held-out prompts, each
 * side taking turns each repeat (paired-args.ts takeTurns), at one sampling temperature. Prints
 * end-to-end tokens/s (medians over repeats), each side over target-only decoding, and on how many
 * prompts a side's tokens equal target-only decoding's (all expected: a sampled request is
 * seeded and verified drafter-invariantly), and writes the same as JSON.
 *
 * Usage: node --import tsx tools/bench/paired-drafter-rest.ts [--temperature 0.7] [--prompts 8]
 *          [--max-tokens 128] [--repeats 3] [--threads 1] [--prompts-dir DIR] [--out FILE.json]
 * (the family in ./models)
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { heldOutPrompts } from '../../src/bench/peer-inputs.ts';
import { formatTable, median } from '../../src/bench/report.ts';
import { generateCascade, type DrafterSpec } from '../../src/engine/cascade.ts';
import { ScheduleMemory } from '../../src/engine/schedule.ts';
import { loadFamily, loadMagTables } from '../../src/models/family.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';
import { pairedArgs, takeTurns } from './paired-args.ts';

const { prompts, maxTokens, repeats, threads, promptsDir, out, extra } = pairedArgs(0, 'paired-drafter-rest.ts', { temperature: '0.7' });
const temperature = Number(extra.temperature);
if (!(temperature >= 0)) throw new Error(`--temperature takes a number >= 0, got ${extra.temperature}`);
const family = loadFamily('models');
const open = (dir: string) => OrtModelSession.open(dir, { intraOpThreads: threads, prefixCache: false });
const target = await open(join('models', family.target));
const drafter = await open(join('models', family.drafters[0]!));
const tables = loadMagTables(family, target.spec.vocabSize);
const model: DrafterSpec = { kind: 'model', session: drafter };
const mag: DrafterSpec = { kind: 'mag', tables };
const sides = [
  { name: 'target only', drafters: [] as DrafterSpec[], rest: true },
  { name: `sd (${family.drafters[0]}), async, drafter always drafting`, drafters: [model], rest: false },
  { name: `sd (${family.drafters[0]}), async, drafter resting`, drafters: [model], rest: true },
  { name: 'csd (drafter + MaG), async, drafter always drafting', drafters: [model, mag], rest: false },
  { name: 'csd (drafter + MaG), async, drafter resting', drafters: [model, mag], rest: true },
].map((s) => ({ ...s, memory: new ScheduleMemory() }));
const tokenizer = TextTokenizer.forModel(target.spec);
const ids = heldOutPrompts(prompts, promptsDir).map((p) => tokenizer.encodePrompt(p.text));
const sampling = { temperature, topK: 0, topP: 1 };
const { e2e, outputs } = await takeTurns(sides.length, repeats, ids, (i, promptIds) => {
  const s = sides[i]!;
  const config = s.drafters.length ? { drafters: s.drafters, kMatrix: 'auto' as const, lenience: 1, drafting: 'async' as const } : { drafters: [], kMatrix: [], lenience: 1 };
  return generateCascade(target, config, { promptIds, maxTokens, sampling, seed: 7, stopAtEos: false, verification: 'invariant' }, undefined, { scheduleMemory: s.memory, drafterRest: s.rest });
});
const rows = sides.map((s, i) => ({
  side: s.name,
  tokensPerSecond: median(e2e[i]!),
  vsTargetOnly: median(e2e[i]!) / median(e2e[0]!),
  repeats: e2e[i]!,
  sameAsTargetOnly: outputs[i]!.filter((o, j) => o.join() === outputs[0]![j]!.join()).length,
}));
console.log(`temperature ${temperature}, ${ids.length} prompts x ${maxTokens} tokens, ${repeats} repeats, ${threads} thread(s)`);
console.log(formatTable(['side', 'tok/s (median)', 'x target only', 'each repeat', 'same as target only'], rows.map((r) => [r.side, r.tokensPerSecond, r.vsTargetOnly, r.repeats.map((x) => x.toFixed(0)).join(' '), `${r.sameAsTargetOnly}/${ids.length}`])));
if (out) writeFileSync(out, `${JSON.stringify({ temperature, threads, prompts: ids.length, maxTokens, repeats, rows }, null, 2)}\n`);
await Promise.all([target.close(), drafter.close()]);
