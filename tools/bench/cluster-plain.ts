/**
 * The cluster's plain decoding beside the embedded runner's, greedy, on held-out prompts: target-only
 * decoding embedded (`generateAutoregressive` in this process), target-only decoding through a
 * cluster (`cascade.mode: "ar"`: gateway, coordinator and verify actor over NATS and Redis, the
 * openai client streaming), and csd with the family's last drafter alone through the same cluster,
 * whose drafts are rarely accepted (issue 27's "never below 0.95x target-only decoding"). Each
 * repeat runs every prompt on each side in turn. Prints tokens/s per repeat and writes medians as
 * JSON, with how many prompts gave target-only decoding's text on both cluster sides.
 *
 * Usage: node --import tsx tools/bench/cluster-plain.ts [--models DIR] [--layout separate|colocated]
 *          [--multi-step-ms MS] [--prompts-dir DIR] [--prompts N] [--max-tokens N] [--repeats N] [--out FILE.json]
 * (--multi-step-ms: the verify actor's, `cascade actor verify --multi-step-ms`; prompts: N/2 of DIR/code.jsonl and N/2 of DIR/english.jsonl, e.g. from tools/bench/heldout-prompts.mjs;
 * a family whose target is a small model, e.g. draft-l2, stands in for a fast verifier such as a GPU's)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startBenchCluster, type Layout } from '../../src/bench/cluster.ts';
import { median } from '../../src/bench/report.ts';
import { generateAutoregressive } from '../../src/engine/generate.ts';
import { GREEDY } from '../../src/kernels/sampling.ts';
import { loadFamily } from '../../src/models/family.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';

const { values: a } = parseArgs({ options: { models: { type: 'string', default: 'models' }, layout: { type: 'string', default: 'separate' }, 'multi-step-ms': { type: 'string' }, 'prompts-dir': { type: 'string', default: 'scratch/heldout' }, prompts: { type: 'string', default: '8' }, 'max-tokens': { type: 'string', default: '96' }, repeats: { type: 'string', default: '3' }, out: { type: 'string' } } });
const layout = a.layout as Layout;
if (layout !== 'separate' && layout !== 'colocated') throw new Error(`--layout takes separate or colocated, got ${a.layout}`);
const [count, maxTokens, repeats] = [Number(a.prompts), Number(a['max-tokens']), Number(a.repeats)];
const read = (w: string) => readFileSync(join(a['prompts-dir']!, `${w}.jsonl`), 'utf8').trim().split('\n').slice(0, Math.ceil(count / 2)).map((l) => (JSON.parse(l) as { prompt: string }).prompt);
const prompts = [...read('code'), ...read('english')];
const family = loadFamily(a.models!);
const drafter = family.drafters.at(-1)!;
const target = await OrtModelSession.open(join(a.models!, family.target));
const tokenizer = TextTokenizer.forModel(target.spec);
const verifierFlags = a['multi-step-ms'] !== undefined ? ['--multi-step-ms', a['multi-step-ms']] : [];
if (verifierFlags.length && layout === 'colocated') throw new Error('--multi-step-ms is the verify actor\'s: layout separate');
const cluster = await startBenchCluster({ models: a.models!, maxTokens, concurrency: 1, layout, verifierFlags });
const SIDES = ['embedded target-only', 'cluster target-only', `cluster csd (${drafter} alone)`] as const;
const tokensPerSecond: number[][] = SIDES.map(() => []);
let identical = 0;
try {
  await cluster.complete('warm up', { mode: 'ar' });
  for (let rep = 0; rep < repeats; rep++) {
    const seconds = SIDES.map(() => 0);
    const tokens = SIDES.map(() => 0);
    for (const prompt of prompts) {
      const t0 = performance.now();
      const embedded = await generateAutoregressive(target, { promptIds: tokenizer.encodePrompt(prompt), maxTokens, sampling: GREEDY, seed: 0 });
      seconds[0]! += (performance.now() - t0) / 1000;
      tokens[0]! += embedded.tokenIds.length;
      const ar = await cluster.complete(prompt, { mode: 'ar' });
      const csd = await cluster.complete(prompt, { drafters: [drafter] });
      [ar, csd].forEach((c, i) => {
        seconds[i + 1]! += c.seconds;
        tokens[i + 1]! += c.tokens;
      });
      if (rep === 0 && ar.text === tokenizer.decode(embedded.tokenIds) && csd.text === ar.text) identical++;
    }
    SIDES.forEach((_, i) => tokensPerSecond[i]!.push(tokens[i]! / seconds[i]!));
    console.log(`repeat ${rep + 1}: ${SIDES.map((s, i) => `${s} ${tokensPerSecond[i]!.at(-1)!.toFixed(1)}`).join(', ')} tok/s`);
  }
} finally {
  await cluster.stop();
  await target.close();
}
const medians = Object.fromEntries(SIDES.map((s, i) => [s, median(tokensPerSecond[i]!)]));
const result = { models: a.models, target: family.target, layout, multiStepMs: a['multi-step-ms'] ?? 'default (10)', prompts: prompts.length, maxTokens, repeats, identicalToTargetOnly: `${identical}/${prompts.length}`, medians, tokensPerSecond: Object.fromEntries(SIDES.map((s, i) => [s, tokensPerSecond[i]])) };
console.log(JSON.stringify(result, null, 2));
if (a.out) writeFileSync(a.out, `${JSON.stringify(result, null, 2)}\n`);
