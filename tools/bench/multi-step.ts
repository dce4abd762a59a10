/**
 * Multi-step decoding against one call per token, on one model, in one process: target-only
 * decoding (greedy, the cascade loop `bench peer` times) over held-out prompts with
 * SessionOptions.multiStep on and off, both sessions loaded once and warmed up, the two sides
 * taking turns each repeat. Prints each side's decode tokens/s (tokens after the first over the time
 * after it; medians over repeats) and on how many prompts their tokens were identical (all
 * expected), and writes the same as JSON.
 *
 * Usage: node --import tsx tools/bench/multi-step.ts MODEL_DIR [--prompts 8] [--max-tokens 128]
 *          [--repeats 3] [--threads 1] [--prompts-dir DIR] [--out FILE.json]
 */
import { writeFileSync } from 'node:fs';
import { heldOutPrompts } from '../../src/bench/peer-inputs.ts';
import { formatTable, median } from '../../src/bench/report.ts';
import { generateCascade } from '../../src/engine/cascade.ts';
import { GREEDY } from '../../src/kernels/sampling.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';
import { pairedArgs, takeTurns } from './paired-args.ts';

const { positionals, prompts, maxTokens, repeats, threads, promptsDir, out } = pairedArgs(1, 'multi-step.ts MODEL_DIR');
const dir = positionals[0]!;

const session = (multiStep: boolean) => OrtModelSession.open(dir, { intraOpThreads: threads, prefixCache: false, multiStep });
const sides = [
  { name: 'one call per token', session: await session(false) },
  { name: 'multi-step', session: await session(true) },
];
const tokenizer = TextTokenizer.forModel(sides[0]!.session.spec);
const ids = heldOutPrompts(prompts, promptsDir).map((p) => tokenizer.encodePrompt(p.text));
const run = (s: OrtModelSession, promptIds: number[]) => generateCascade(s, { drafters: [], kMatrix: [], lenience: 1 }, { promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });

const { decode: rates, outputs } = await takeTurns(sides.length, repeats, ids, (i, p) => run(sides[i]!.session, p));
const identical = outputs[0]!.filter((o, j) => o.join() === outputs[1]![j]!.join()).length;
const rows = sides.map((s, i) => ({ side: s.name, decodeTokensPerSecond: median(rates[i]!), repeats: rates[i]! }));
const result = { model: dir, threads, prompts: ids.length, maxTokens, repeats, identical, rows, speedup: rows[1]!.decodeTokensPerSecond / rows[0]!.decodeTokensPerSecond };
console.log(formatTable(['side', 'decode tok/s (median)', 'each repeat'], rows.map((r) => [r.side, r.decodeTokensPerSecond, r.repeats.map((x) => x.toFixed(0)).join(' ')])));
console.log(`multi-step / one call per token: ${result.speedup.toFixed(2)}x; identical tokens on ${identical}/${ids.length} prompts`);
if (out) writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
await Promise.all(sides.map((s) => s.session.close()));
