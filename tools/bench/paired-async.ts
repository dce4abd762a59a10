/**
 * Async drafting with and without one of its parts (async-cascade.ts), beside target-only decoding,
 * in one process: sd with one drafter and csd (that drafter ahead, MaG below), over held-out
 * prompts, each side taking turns each repeat (paired-args.ts takeTurns), at one sampling
 * temperature. `--compare rest`: the drafter's rest (MIN_DRAFT_GAIN: a drafter whose drafts are
 * rarely accepted is paused) against drafting throughout; `--compare branches`: outcome branches
 * (pre-drafting a rejection's outcome, SSD) against the speculation alone; `--compare pipeline`:
 * MaG pipelined below the drafter (the drafter reviews MaG's drafts on its speculation, PipeSpec)
 * against a drafter drafting one token a pass (csd only: sd has no MaG); `--compare below`: the
 * second neural drafter (`--below DIR`, default the family's second) as a level below the drafter
 * (RunOptions.levelBelow: the drafter reviews its drafts too) against MaG alone below it; `--compare alone`:
 * serial rounds under the adaptive schedule, the rounds it gives the target alone decoding several
 * tokens in one call (RunOptions.aloneSteps) against one token each. Prints end-to-end
 * tokens/s (medians over repeats), each side over target-only decoding, and on how many prompts a
 * side's tokens equal target-only decoding's (all expected: a sampled request is seeded and
 * verified drafter-invariantly), with each side's target passes, passes the drafter rested, tokens
 * drafted on outcome branches, branches adopted and their drafts accepted, MaG's drafts the drafter
 * reviewed and accepted, and writes the same as JSON.
 *
 * Usage: node --import tsx tools/bench/paired-async.ts [--compare rest|alone|branches|pipeline|below] [--drafter DIR] [--below DIR]
 *          [--temperature 0.7] [--prompts 8] [--max-tokens 128] [--repeats 3] [--threads 1]
 *          [--prompts-dir DIR] [--out FILE.json]
 * (the family in ./models; the drafter defaults to its largest drafter)
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { heldOutPrompts } from '../../src/bench/peer-inputs.ts';
import { formatTable, median } from '../../src/bench/report.ts';
import { generateCascade, type DrafterSpec, type RunOptions } from '../../src/engine/cascade.ts';
import { ScheduleMemory } from '../../src/engine/schedule.ts';
import { loadFamily, loadMagTables } from '../../src/models/family.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';
import { pairedArgs, takeTurns } from './paired-args.ts';

const { prompts, maxTokens, repeats, threads, promptsDir, out, extra } = pairedArgs(0, 'paired-async.ts', { compare: 'rest', drafter: '', below: '', temperature: '0.7' });
const temperature = Number(extra.temperature);
if (!(temperature >= 0)) throw new Error(`--temperature takes a number >= 0, got ${extra.temperature}`);
const compare = extra.compare;
if (compare !== 'rest' && compare !== 'alone' && compare !== 'branches' && compare !== 'pipeline' && compare !== 'below') throw new Error(`--compare takes rest, alone, branches, pipeline or below, got ${compare}`);
const family = loadFamily('models');
const open = (dir: string) => OrtModelSession.open(dir, { intraOpThreads: threads, prefixCache: false });
const target = await open(join('models', family.target));
const drafter = await open(extra.drafter || join('models', family.drafters[0]!));
const tables = loadMagTables(family, target.spec.vocabSize);
const model: DrafterSpec = { kind: 'model', session: drafter };
const lower = compare === 'below' ? await open(extra.below || join('models', family.drafters[1]!)) : undefined;
const mag: DrafterSpec = { kind: 'mag', tables };
/** The part compared: off, then on, as RunOptions. */
const parts: Record<'rest' | 'alone' | 'branches' | 'pipeline' | 'below', [string, Pick<RunOptions, 'drafterRest' | 'aloneSteps' | 'outcomeBranches' | 'pipeline' | 'levelBelow'>][]> = {
  rest: [['drafter always drafting', { drafterRest: false }], ['drafter resting', {}]],
  alone: [['one token a round the target decodes alone', { aloneSteps: false }], ['multi-step rounds the target decodes alone', {}]],
  branches: [['speculation alone', {}], ['outcome branches', { outcomeBranches: true }]],
  pipeline: [['drafter one token a pass', { pipeline: false }], ['MaG pipelined below the drafter', {}]],
  below: [['MaG pipelined below the drafter', {}], [`${lower?.spec.name} and MaG below the drafter`, { levelBelow: true }]],
};
const csd = (levelBelow: boolean | undefined): DrafterSpec[] => (levelBelow && lower ? [model, { kind: 'model', session: lower }, mag] : [model, mag]);
const sides = [
  { name: 'target only', drafters: [] as DrafterSpec[], options: {}, drafting: 'async' as 'async' | 'serial' },
  // the pipeline's reference is the same cascade in serial rounds (issue 27's bar: async >= 1.25x serial)
  ...(compare === 'pipeline' || compare === 'below' ? [{ name: 'csd (drafter + MaG), serial rounds', drafters: [model, mag], options: {}, drafting: 'serial' as const }] : []),
  ...(compare === 'pipeline' || compare === 'below' ? [[model, mag]] : [[model], [model, mag]]).flatMap((drafters) =>
    // `alone` compares serial rounds (the rounds the schedule gives the target alone); every other part is async drafting's
    parts[compare].map(([label, options]) => ({ name: `${drafters.length === 1 ? `sd (${drafter.spec.name})` : 'csd (drafter + MaG)'}, ${compare === 'alone' ? 'serial' : 'async'}, ${label}`, drafters: drafters.length === 1 ? drafters : csd(options.levelBelow), options, drafting: compare === 'alone' ? ('serial' as const) : ('async' as const) })),
  ),
].map((s) => ({ ...s, memory: new ScheduleMemory() }));
const tokenizer = TextTokenizer.forModel(target.spec);
const ids = heldOutPrompts(prompts, promptsDir).map((p) => tokenizer.encodePrompt(p.text));
const sampling = { temperature, topK: 0, topP: 1 };
/** The async loop's counts summed per side (stats.drafting). */
const DRAFTING_COUNTS = ['drafterPausedPasses', 'outcomeDrafts', 'outcomeHits', 'outcomeAccepted', 'pipelinedDrafts', 'pipelinedAccepted', 'belowDrafts', 'belowAccepted'] as const;
/** Per side, over the timed requests (not the warm-up): target passes, accepted drafts and DRAFTING_COUNTS. */
const counts = sides.map(() => ({ requests: 0, rounds: 0, acceptedTokens: 0, drafterPausedPasses: 0, outcomeDrafts: 0, outcomeHits: 0, outcomeAccepted: 0, pipelinedDrafts: 0, pipelinedAccepted: 0, belowDrafts: 0, belowAccepted: 0 }));
const { e2e, outputs } = await takeTurns(sides.length, repeats, ids, async (i, promptIds) => {
  const s = sides[i]!;
  const config = s.drafters.length ? { drafters: s.drafters, kMatrix: 'auto' as const, lenience: 1, drafting: s.drafting } : { drafters: [], kMatrix: [], lenience: 1 };
  const r = await generateCascade(target, config, { promptIds, maxTokens, sampling, seed: 7, stopAtEos: false, verification: 'invariant' }, undefined, { scheduleMemory: s.memory, ...s.options });
  const c = counts[i]!;
  // the first request of a side is its warm-up
  if (c.requests++ > 0) {
    c.rounds += r.stats.rounds;
    c.acceptedTokens += r.stats.acceptedTokens;
    for (const key of DRAFTING_COUNTS) c[key] += r.stats.drafting?.[key] ?? 0;
  }
  return r;
});
const rows = sides.map((s, i) => ({
  side: s.name,
  tokensPerSecond: median(e2e[i]!),
  vsTargetOnly: median(e2e[i]!) / median(e2e[0]!),
  repeats: e2e[i]!,
  sameAsTargetOnly: outputs[i]!.filter((o, j) => o.join() === outputs[0]![j]!.join()).length,
  ...counts[i]!,
  requests: counts[i]!.requests - 1,
}));
console.log(`${compare}: temperature ${temperature}, ${ids.length} prompts x ${maxTokens} tokens, ${repeats} repeats, ${threads} thread(s)`);
console.log(formatTable(['side', 'tok/s (median)', 'x target only', 'each repeat', 'same as target only', 'passes', 'passes rested', 'branch drafts', 'adopted', 'their drafts accepted', 'drafts from below the drafter reviewed', 'accepted', 'of them the neural level\'s', 'accepted'], rows.map((r) => [r.side, r.tokensPerSecond, r.vsTargetOnly, r.repeats.map((x) => x.toFixed(0)).join(' '), `${r.sameAsTargetOnly}/${ids.length}`, r.rounds, r.drafterPausedPasses, r.outcomeDrafts, r.outcomeHits, r.outcomeAccepted, r.pipelinedDrafts, r.pipelinedAccepted, r.belowDrafts, r.belowAccepted])));
if (out) writeFileSync(out, `${JSON.stringify({ compare, drafter: drafter.spec.name, ...(lower ? { below: lower.spec.name } : {}), temperature, threads, prompts: ids.length, maxTokens, repeats, rows }, null, 2)}\n`);
await Promise.all([target.close(), drafter.close(), lower?.close()]);
