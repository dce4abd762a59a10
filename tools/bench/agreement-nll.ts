/**
 * What a lossy copy of a model costs against the model itself, as docs/quantization.md reports it:
 *
 * - **Greedy agreement, teacher-forced.** For each `bench/prompts` prompt (16 per workload: code,
 *   grounded, english; its last 192 tokens), the reference decodes 64 greedy tokens. One pass of each
 *   copy over prompt + continuation then gives the fraction of those 64 positions where its argmax is
 *   the reference's token: 1,024 positions per workload.
 * - **NLL on held-out text.** Nats per token over the first 256 tokens of each of the 16
 *   `bench/prompts/long.jsonl` documents (4,080 predicted tokens), from each model's logits.
 *
 * Models run on the CPU EP, 1 thread, each in its own defaults (batch invariance `auto`). Prints a
 * table; the reference's own NLL comes first.
 *
 * Usage: node --import tsx tools/bench/agreement-nll.ts REFERENCE_DIR COPY_DIR [COPY_DIR...]
 */
import { readFileSync } from 'node:fs';
import { generateAutoregressive } from '../../src/engine/generate.ts';
import { argmax, GREEDY } from '../../src/kernels/sampling.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import { TextTokenizer } from '../../src/models/tokenizer.ts';

const [refDir, ...copies] = process.argv.slice(2);
if (!refDir || !copies.length) throw new Error('usage: agreement-nll.ts REFERENCE_DIR COPY_DIR [COPY_DIR...]');
const WORKLOADS = ['code', 'grounded', 'english'];
const CONTEXT = 192;
const CONTINUATION = 64;
const NLL_TOKENS = 256;

const prompts = (file: string): string[] =>
  readFileSync(new URL(`../../bench/prompts/${file}.jsonl`, import.meta.url), 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { prompt: string }).prompt);

const ref = await OrtModelSession.open(refDir, { intraOpThreads: 1, prefixCache: false });
const tok = TextTokenizer.forModel({ dir: refDir, tokenizerPath: ref.spec.tokenizerPath });
const V = ref.spec.vocabSize;
/** -log softmax(row)[token], in nats. */
const nll = (row: Float32Array, token: number): number => {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return Math.log(sum) + max - row[token]!;
};

// the reference's continuations, once
const cases: Record<string, { context: number[]; continuation: number[] }[]> = {};
for (const w of WORKLOADS) {
  cases[w] = [];
  for (const text of prompts(w)) {
    const context = tok.encodePrompt(text).slice(-CONTEXT);
    const continuation = (await generateAutoregressive(ref, { promptIds: context, maxTokens: CONTINUATION, sampling: GREEDY, seed: 0, stopAtEos: false })).tokenIds;
    cases[w]!.push({ context, continuation });
  }
  process.stderr.write(`${refDir}: ${cases[w]!.length} ${w} continuations\n`);
}
const documents = prompts('long').map((t) => tok.encodePrompt(t).slice(0, NLL_TOKENS));

let n = 0;
async function measure(dir: string): Promise<string[]> {
  const s = dir === refDir ? ref : await OrtModelSession.open(dir, { intraOpThreads: 1, prefixCache: false });
  const row = [dir];
  for (const w of WORKLOADS) {
    let agree = 0;
    let total = 0;
    for (const { context, continuation } of cases[w]!) {
      const seqId = `a${n++}`;
      // the row of input position j predicts token j + 1: the context's last token and the continuation but its last
      const logits = await s.forward({ seqId, inputIds: [...context, ...continuation.slice(0, -1)] }, continuation.length);
      await s.release(seqId);
      continuation.forEach((t, i) => {
        total++;
        if (argmax(logits.subarray(i * V, (i + 1) * V)) === t) agree++;
      });
    }
    row.push((agree / total).toFixed(3));
  }
  let sum = 0;
  let count = 0;
  for (const ids of documents) {
    const seqId = `n${n++}`;
    const logits = await s.forward({ seqId, inputIds: ids }, 'all');
    await s.release(seqId);
    for (let i = 0; i + 1 < ids.length; i++, count++) sum += nll(logits.subarray(i * V, (i + 1) * V), ids[i + 1]!);
  }
  row.push((sum / count).toFixed(4), String(count));
  process.stderr.write(`${dir}: measured\n`);
  if (s !== ref) await s.close();
  return row;
}

const rows = [await measure(refDir)];
for (const dir of copies) rows.push(await measure(dir));
process.stdout.write(`| model | ${WORKLOADS.join(' | ')} | NLL (nats/token) | tokens |\n|---|${WORKLOADS.map(() => '---|').join('')}---|---|\n`);
for (const r of rows) process.stdout.write(`| ${r.join(' | ')} |\n`);
await ref.close();
