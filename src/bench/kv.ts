import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { BoundedSequence, FULL_CACHE, type KvPolicyConfig } from '../engine/bounded-kv.ts';
import type { KvPolicyName } from '../kernels/kv-policy.ts';
import { argmax } from '../kernels/sampling.ts';
import { loadController, loadFamily, memberDir } from '../models/family.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import type { ModelSession } from '../models/session.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { writeSvg } from './plot.ts';
import { formatTable, median, writeJson } from './report.ts';
import { loadWorkload } from './workloads.ts';

export interface KvBenchOptions {
  readonly models: string;
  /** Tokens of each document kept in context. */
  readonly context: number;
  /** Greedy continuation tokens compared with full attention (teacher-forced). */
  readonly continuation: number;
  readonly fractions: readonly number[];
  readonly policies: readonly KvPolicyName[];
  readonly docs: number;
  readonly sinks: number;
  readonly recent: number;
  readonly rebuild: number;
  /** Prompt tokens per pass under a bounded cache (undefined: half the free budget). */
  readonly prefillChunk?: number;
  /** Tokens released at once when a cache is full (1: one per step). */
  readonly releaseBatch: number;
  readonly threads: number;
  readonly out: string;
}

/** One policy at one budget, summed over documents. */
interface Cell {
  policy: string;
  fraction: number;
  budget: number;
  nll: number[];
  agreement: number[];
  decodeTps: number[];
  kvBytes: number;
  releases: number;
  rebuilds: number;
}

const log = (msg: string) => process.stderr.write(msg + '\n');

/** Mean NLL (nats/token) of `ids[from..]` given logits rows predicting ids[1..] (row j predicts ids[j+1]). */
function nllOf(logits: Float32Array, ids: readonly number[], from: number, vocab: number): number {
  let sum = 0;
  let n = 0;
  for (let j = from - 1; j < ids.length - 1; j++) {
    const row = logits.subarray(j * vocab, (j + 1) * vocab);
    let max = -Infinity;
    for (const v of row) if (v > max) max = v;
    let z = 0;
    for (const v of row) z += Math.exp(v - max);
    sum += max + Math.log(z) - row[ids[j + 1]!]!;
    n++;
  }
  return sum / n;
}

/**
 * Runs one document under one cache: prefill (logits of every position, for NLL over the second
 * half), then the reference continuation fed token by token, counting how often this cache's greedy
 * choice equals full attention's (teacher forcing keeps the comparison position by position).
 */
async function runDoc(model: ModelSession, seqId: string, cfg: KvPolicyConfig, ids: readonly number[], reference: readonly number[] | undefined, continuation: number) {
  const seq = new BoundedSequence(model, seqId, cfg);
  const vocab = model.spec.vocabSize;
  try {
    const logits = await seq.feed(ids, 'all');
    const nll = nllOf(logits, ids, ids.length >> 1, vocab);
    const out: number[] = [];
    let next = argmax(logits.subarray((ids.length - 1) * vocab));
    let agree = 0;
    const t0 = performance.now();
    for (let i = 0; i < continuation; i++) {
      const want = reference ? reference[i]! : next;
      if (next === want) agree++;
      out.push(want);
      next = argmax(await seq.feed([want], 'last'));
    }
    const seconds = (performance.now() - t0) / 1000;
    return { nll, tokens: out, agreement: agree / continuation, decodeTps: continuation / seconds, resident: seq.resident, releases: seq.releases, rebuilds: seq.rebuilds };
  } finally {
    await seq.close();
  }
}

/** `cascade bench kv`: bounded-cache policies side by side on held-out long documents. */
export async function benchKv(o: KvBenchOptions): Promise<void> {
  const family = loadFamily(o.models);
  const model = await OrtModelSession.open(memberDir(family, family.target), { intraOpThreads: o.threads });
  const controller = o.policies.includes('adore') ? loadController(family) : undefined;
  try {
    const tok = TextTokenizer.load(model.spec.tokenizerPath);
    const need = o.context + o.continuation;
    const docs = loadWorkload('long')
      .map((d) => ({ id: d.id, ids: tok.encode(d.prompt) }))
      .filter((d) => d.ids.length >= o.context)
      .slice(0, o.docs);
    if (!docs.length) throw new Error(`no document of the long workload has ${o.context} tokens`);
    const { spec } = model;
    const bytesPerToken = spec.layers * 2 * spec.kvHeads * spec.headDim * 4;
    const cells = new Map<string, Cell>();
    const cell = (policy: string, fraction: number, budget: number) => {
      const key = `${policy}@${fraction}`;
      if (!cells.has(key)) cells.set(key, { policy, fraction, budget, nll: [], agreement: [], decodeTps: [], kvBytes: 0, releases: 0, rebuilds: 0 });
      return cells.get(key)!;
    };
    for (const [d, doc] of docs.entries()) {
      const ids = doc.ids.slice(0, o.context);
      log(`[${d + 1}/${docs.length}] ${doc.id}: ${ids.length} tokens in context (document has ${doc.ids.length}; needs ${need} with the continuation)`);
      const full = await runDoc(model, `full-${d}`, FULL_CACHE, ids, undefined, o.continuation);
      const f = cell('full', 1, ids.length);
      f.nll.push(full.nll);
      f.agreement.push(1);
      f.decodeTps.push(full.decodeTps);
      f.kvBytes = Math.max(f.kvBytes, full.resident * bytesPerToken);
      for (const fraction of o.fractions) {
        const budget = Math.max(8, Math.round(fraction * ids.length));
        for (const policy of o.policies) {
          const sinks = policy === 'streaming' || policy === 'h2o' || policy === 'adore' ? o.sinks : 0;
          const recent = policy === 'window' || policy === 'streaming' ? 0 : o.recent;
          // A small budget (a short --context) may leave fewer free slots than the chunk or batch asked.
          const fit = (n: number | undefined) => (n === undefined ? undefined : Math.min(n, budget - sinks - recent));
          const cfg: KvPolicyConfig = { policy, budget: { budget, sinks, recent, rebuild: policy === 'adore' ? o.rebuild : 0 }, controller, prefillChunk: fit(o.prefillChunk), releaseBatch: fit(o.releaseBatch) };
          const r = await runDoc(model, `${policy}-${fraction}-${d}`, cfg, ids, full.tokens, o.continuation);
          const c = cell(policy, fraction, budget);
          c.nll.push(r.nll);
          c.agreement.push(r.agreement);
          c.decodeTps.push(r.decodeTps);
          c.kvBytes = Math.max(c.kvBytes, r.resident * bytesPerToken);
          c.releases += r.releases;
          c.rebuilds += r.rebuilds;
        }
      }
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const fullNll = mean(cells.get('full@1')!.nll);
    const fullTps = median(cells.get('full@1')!.decodeTps);
    const rows = [...cells.values()].map((c) => ({
      policy: c.policy,
      fraction: c.fraction,
      budget: c.budget,
      nll: mean(c.nll),
      nllVsFullPct: ((mean(c.nll) - fullNll) / fullNll) * 100,
      agreement: mean(c.agreement),
      decodeTokensPerSecond: median(c.decodeTps),
      speedVsFull: median(c.decodeTps) / fullTps,
      kvMiB: c.kvBytes / 2 ** 20,
      releases: c.releases,
      rebuilds: c.rebuilds,
    }));
    const headers = ['policy', 'budget', 'tokens', 'NLL', 'NLL vs full %', 'agree', 'decode tok/s', 'x full', 'KV MiB', 'released', 'rebuilt'];
    const table = formatTable(
      headers,
      rows.map((r) => [r.policy, r.fraction === 1 ? 'all' : `${r.fraction * 100}%`, r.budget, r.nll, r.nllVsFullPct, r.agreement, r.decodeTokensPerSecond, r.speedVsFull, r.kvMiB, r.releases, r.rebuilds]),
    );
    const header =
      `KV cache benchmark: ${docs.length} held-out long documents, ${o.context} tokens of context each, target ${spec.name}; ` +
      `NLL over the second half of each context (prefill under the policy), agreement = greedy next token equal to full attention's over a ${o.continuation}-token teacher-forced continuation, ` +
      `decode tokens/s median over documents; sinks ${o.sinks}, recent window ${o.recent} (h2o, adore), rebuild ${o.rebuild} (adore); ` +
      `prompt fed ${o.prefillChunk ? `${o.prefillChunk} tokens per pass (at most the free budget)` : 'in passes of half the free budget'}; ` +
      `${o.releaseBatch === 1 ? 'one token released per step once full' : `${o.releaseBatch} tokens released at once when full`}`;
    process.stdout.write(`${header}\n\n${table}\n`);
    const json = writeJson(o.out, 'kv', { options: o, documents: docs.map((d) => ({ id: d.id, tokens: d.ids.length })), rows });
    const chart: TopLevelSpec = {
      title: `Held-out NLL vs KV budget (${o.context}-token contexts)`,
      width: 420,
      height: 260,
      data: { values: rows.filter((r) => r.policy !== 'full') },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'fraction', type: 'quantitative', title: 'KV budget (fraction of the context)' },
        y: { field: 'nllVsFullPct', type: 'quantitative', title: 'NLL above full attention (%)' },
        color: { field: 'policy', type: 'nominal' },
      },
    };
    await writeSvg(join(o.out, 'kv-quality.svg'), chart);
    writeFileSync(join(o.out, 'kv.md'), `# KV cache benchmark\n\n${header}.\n\n\`\`\`\n${table}\n\`\`\`\n\n![kv-quality.svg](kv-quality.svg)\n`);
    process.stdout.write(`\nwrote ${json}, ${join(o.out, 'kv.md')} and kv-quality.svg\n`);
  } finally {
    await model.close();
  }
}
