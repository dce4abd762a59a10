/**
 * How often the target accepts MaG's drafts, by MaG's match-length class (its draft context,
 * src/engine/levels.ts MAG_MATCH_CLASSES): the target's greedy output after each prompt is decoded
 * once, then replayed position by position. At each position MaG (over prompt ‖ output so far)
 * proposes 8 tokens; a draft counts as accepted while it equals the output (the rate of the first d
 * drafts counts the positions with at least d tokens of output left). Two MaGs side by side:
 * the paper's (CS Drafting: every match copied, bigram fill) and the family's (its trigram table
 * too, matches of 2 or more tokens copied). Prints, per workload and MaG, the positions in each class
 * and the rate at which the first 1, 2, 4 and 8 drafts were all accepted; writes the same as JSON.
 *
 * Usage: node --import tsx tools/bench/mag-replay.ts --prompts-dir DIR [--model DIR] [--models DIR]
 *          [--max-tokens 256] [--workload code,english] [--out FILE.json]
 * (DIR holds WORKLOAD.jsonl files with a "prompt" per row, as tools/bench/mag-tune-prompts.py writes)
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatTable } from '../../src/bench/report.ts';
import { loadWorkload, type Workload } from '../../src/bench/workloads.ts';
import { generateCascade } from '../../src/engine/cascade.ts';
import { MAG_MATCH_CLASSES, magMatchClass } from '../../src/engine/levels.ts';
import { MaxGram, type MaxGramOptions } from '../../src/kernels/maxgram.ts';
import { GREEDY } from '../../src/kernels/sampling.ts';
import { loadFamily, loadMagTables } from '../../src/models/family.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';

const { values } = parseArgs({
  options: {
    'prompts-dir': { type: 'string' },
    models: { type: 'string', default: 'models' },
    model: { type: 'string' },
    'max-tokens': { type: 'string', default: '256' },
    workload: { type: 'string', default: 'code,english' },
    out: { type: 'string' },
  },
});
const maxTokens = Number(values['max-tokens']);
if (!values['prompts-dir'] || !(Number.isInteger(maxTokens) && maxTokens > 0)) {
  process.stderr.write('usage: mag-replay.ts --prompts-dir DIR [--model DIR] [--models DIR] [--max-tokens 256] [--workload code,english] [--out FILE.json]\n');
  process.exit(2);
}
const family = loadFamily(values.models!);
const tables = loadMagTables(family);
const mags: Record<string, MaxGramOptions> = { "the paper's (bigram, every match)": { bigram: tables.bigram }, "the family's (trigram, matches of 2+)": { ...tables } };
const target = await OrtModelSession.open(values.model ?? join(family.dir, family.target), { intraOpThreads: 1, prefixCache: false });
const tok = TextTokenizer.forModel(target.spec);
const DEPTHS = [1, 2, 4, 8];
const result: Record<string, Record<string, Record<string, { positions: number; accepted: number[]; reached: number[] }>>> = {};
for (const workload of values.workload!.split(',') as Workload[]) {
  const runs: { prompt: number[]; output: number[] }[] = [];
  for (const row of loadWorkload(workload, values['prompts-dir'])) {
    const prompt = tok.encodePrompt(row.prompt);
    const r = await generateCascade(target, { drafters: [], kMatrix: [], lenience: 1 }, { promptIds: prompt, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });
    runs.push({ prompt, output: r.tokenIds });
  }
  result[workload] = {};
  for (const [name, options] of Object.entries(mags)) {
    const byClass: Record<string, { positions: number; accepted: number[]; reached: number[] }> = {};
    for (const { prompt, output } of runs) {
      const mag = new MaxGram(options);
      mag.append(prompt);
      for (let pos = 0; pos < output.length; pos++) {
        const cls = (byClass[magMatchClass(mag.longestMatch().length)] ??= { positions: 0, accepted: DEPTHS.map(() => 0), reached: DEPTHS.map(() => 0) });
        const drafts = mag.propose(8);
        let a = 0;
        while (a < drafts.length && pos + a < output.length && drafts[a] === output[pos + a]) a++;
        cls.positions++;
        DEPTHS.forEach((d, i) => {
          if (pos + d > output.length) return; // fewer than d tokens left: the first d cannot all be accepted
          cls.reached[i]! += 1;
          cls.accepted[i]! += a >= d ? 1 : 0;
        });
        mag.append([output[pos]!]);
      }
    }
    result[workload][name] = byClass;
    const rows = MAG_MATCH_CLASSES.map(String)
      .filter((c) => byClass[c])
      .map((c) => [c, byClass[c]!.positions, ...byClass[c]!.accepted.map((x, i) => x / byClass[c]!.reached[i]!)]);
    console.log(`\n${workload}, MaG ${name}: ${runs.length} prompts x ${maxTokens} greedy tokens of ${target.spec.name}\n`);
    console.log(formatTable(['match class (tokens >=)', 'positions', ...DEPTHS.map((d) => `first ${d} accepted`)], rows));
  }
}
if (values.out) writeFileSync(values.out, `${JSON.stringify({ model: target.spec.name, promptsDir: values['prompts-dir'], maxTokens, depths: DEPTHS, result }, null, 2)}\n`);
await target.close();
