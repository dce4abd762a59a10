/**
 * Two model folders of the same model (e.g. a graph before and after a rewrite), target-only greedy
 * decoding over held-out prompts, in one process: both sessions loaded once and warmed up, the two
 * sides taking turns each repeat. Prints each side's tokens/s end to end (prompt included: every
 * token over the whole request's time) and decode tokens/s (tokens after the first over the time
 * after it), medians over repeats, and on how many prompts their tokens were identical, and writes
 * the same as JSON.
 *
 * Usage: node --import tsx tools/bench/paired-models.ts DIR_A DIR_B [--prompts 8] [--max-tokens 128]
 *          [--repeats 3] [--threads 1] [--prompts-dir DIR] [--out FILE.json]
 */
import { writeFileSync } from 'node:fs';
import { heldOutPrompts } from '../../src/bench/peer-inputs.ts';
import { formatTable, median } from '../../src/bench/report.ts';
import { generateAutoregressive } from '../../src/engine/generate.ts';
import { GREEDY } from '../../src/kernels/sampling.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';
import { pairedArgs, takeTurns } from './paired-args.ts';

const { positionals, prompts, maxTokens, repeats, threads, promptsDir, out } = pairedArgs(2, 'paired-models.ts DIR_A DIR_B');

const sides = await Promise.all(positionals.map(async (dir) => ({ dir, session: await OrtModelSession.open(dir, { intraOpThreads: threads, prefixCache: false }) })));
const tokenizer = TextTokenizer.forModel(sides[0]!.session.spec);
const ids = heldOutPrompts(prompts, promptsDir).map((p) => tokenizer.encodePrompt(p.text));
const run = (s: OrtModelSession, promptIds: number[]) => generateAutoregressive(s, { promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });

const { e2e, decode, outputs } = await takeTurns(sides.length, repeats, ids, (i, p) => run(sides[i]!.session, p));
const identical = outputs[0]!.filter((o, j) => o.join() === outputs[1]![j]!.join()).length;
const rows = sides.map((s, i) => ({ model: s.dir, tokensPerSecond: median(e2e[i]!), decodeTokensPerSecond: median(decode[i]!), repeats: e2e[i]! }));
const result = { threads, prompts: ids.length, maxTokens, repeats, identical, rows, speedup: rows[1]!.tokensPerSecond / rows[0]!.tokensPerSecond, decodeSpeedup: rows[1]!.decodeTokensPerSecond / rows[0]!.decodeTokensPerSecond };
console.log(formatTable(['model', 'tok/s end to end (median)', 'decode tok/s (median)', 'each repeat, end to end'], rows.map((r) => [r.model, r.tokensPerSecond, r.decodeTokensPerSecond, r.repeats.map((x) => x.toFixed(0)).join(' ')])));
console.log(`B / A: ${result.speedup.toFixed(2)}x end to end, ${result.decodeSpeedup.toFixed(2)}x decode; identical tokens on ${identical}/${ids.length} prompts`);
if (out) writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
await Promise.all(sides.map((s) => s.session.close()));
