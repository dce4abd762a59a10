import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateCascade, levelName, type DrafterSpec } from '../engine/cascade.ts';
import { defaultKMatrix } from '../engine/presets.ts';
import { GREEDY } from '../kernels/sampling.ts';
import { loadMagTables, loadController, loadFamily } from '../models/family.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { formatTable, median, writeJson } from './report.ts';
import { loadWorkload } from './workloads.ts';

export interface SelfDraftBenchOptions {
  readonly models: string;
  readonly docs: number;
  readonly context: number;
  readonly maxTokens: number;
  readonly budget: number;
  readonly repeats: number;
  /** auto: the adaptive schedule (the product's default); fixed: defaultKMatrix per method. */
  readonly schedule: 'auto' | 'fixed';
  readonly out: string;
}

/**
 * `cascade bench self-draft`: ADORE placement (c) on long contexts. The target's own weights over
 * an ADORE-bounded cache draft, as the first level, for the full-cache target; compared with ar,
 * csd and MaG on held-out long documents, greedy, side by side, with token identity checked.
 */
export async function benchSelfDraft(o: SelfDraftBenchOptions): Promise<void> {
  const family = loadFamily(o.models);
  const sessions = new FamilySessions(family, {});
  try {
    const target = await sessions.get(family.target);
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    const controller = loadController(family);
    const docs = loadWorkload('long')
      .map((d) => tok.encode(d.prompt))
      .filter((d) => d.length >= o.context)
      .slice(0, o.docs)
      .map((d) => d.slice(0, o.context));
    const mag: DrafterSpec = { kind: 'mag', tables: loadMagTables(family) };
    const neural: DrafterSpec[] = await Promise.all(family.drafters.map(async (d) => ({ kind: 'model' as const, session: await sessions.get(d) })));
    const self: DrafterSpec = { kind: 'model', session: target, kv: { policy: 'adore', budget: { budget: o.budget, sinks: 4, recent: 16, rebuild: 2 }, controller } };
    const selfName = levelName(self, target);
    const methods: [string, DrafterSpec[]][] = [
      ['ar', []],
      ['mag', [mag]],
      [`csd (${family.drafters.join(', ')}, mag)`, [...neural, mag]],
      [`self-draft adore-${o.budget} + mag`, [self, mag]],
      [`self-draft adore-${o.budget} + csd`, [self, ...neural, mag]],
    ];
    const rates: Record<string, number[]> = {};
    const decode: Record<string, number[]> = {};
    const ttft: Record<string, number[]> = {};
    const mal: Record<string, number[]> = {};
    /** Forward passes the self-draft level made per request: the adaptive schedule may leave it out. */
    const selfPasses: Record<string, number[]> = {};
    const outputs: Record<string, string[]> = {};
    // Untimed warm-up: the runtime's first long passes (allocation, kernel choice) are not any method's cost.
    await generateCascade(target, { drafters: [], kMatrix: [], lenience: 1 }, { promptIds: docs[0]!, maxTokens: 4, sampling: GREEDY, seed: 0 });
    for (let rep = 0; rep < o.repeats; rep++) {
      for (const [name, drafters] of methods) {
        const K = o.schedule === 'auto' ? 'auto' : drafters.length === 1 ? [[4]] : defaultKMatrix(drafters.map((d) => (d.kind === 'mag' ? 'mag' : 'model')));
        for (const [i, promptIds] of docs.entries()) {
          const r = await generateCascade(target, { drafters, kMatrix: K, lenience: 1 }, { promptIds, maxTokens: o.maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });
          (rates[name] ??= []).push(r.tokenIds.length / r.stats.seconds);
          // Decode rate: tokens after the first over the time after it (prefill of every level excluded).
          (decode[name] ??= []).push((r.tokenIds.length - 1) / (r.stats.seconds - r.stats.firstTokenSeconds));
          (ttft[name] ??= []).push(r.stats.firstTokenSeconds);
          (selfPasses[name] ??= []).push(r.stats.models[selfName]?.forwardPasses ?? 0);
          (mal[name] ??= []).push(r.stats.meanAcceptanceLength);
          (outputs[name] ??= [])[i] = r.tokenIds.join(',');
        }
      }
      process.stderr.write(`repeat ${rep + 1}/${o.repeats} done\n`);
    }
    const ar = median(rates['ar']!);
    const arDecode = median(decode['ar']!);
    const rows = methods.map(([name]) => ({
      method: name,
      firstTokenSeconds: median(ttft[name]!),
      decodeTokensPerSecond: median(decode[name]!),
      decodeVsAr: median(decode[name]!) / arDecode,
      tokensPerSecond: median(rates[name]!),
      vsAr: median(rates[name]!) / ar,
      meanAcceptanceLength: median(mal[name]!),
      selfDraftPasses: selfPasses[name]!.reduce((a, b) => a + b, 0) / selfPasses[name]!.length,
      identical: outputs[name]!.every((t, i) => t === outputs['ar']![i]),
    }));
    const table = formatTable(
      ['method', 'first token s', 'decode tok/s', 'x ar', 'end-to-end tok/s', 'x ar', 'mean acceptance length', 'self-draft passes', 'greedy = ar'],
      rows.map((r) => [r.method, r.firstTokenSeconds, r.decodeTokensPerSecond, r.decodeVsAr, r.tokensPerSecond, r.vsAr, r.meanAcceptanceLength, r.selfDraftPasses, r.identical ? 'yes' : 'NO']),
    );
    const what =
      `${docs.length} held-out long documents cut to ${o.context} tokens, ${o.maxTokens} greedy tokens each, K ${o.schedule === 'auto' ? 'chosen by the adaptive schedule' : 'fixed (defaultKMatrix)'}, ` +
      `median over documents × ${o.repeats} repeats; decode = tokens after the first over the time after it (every level's prefill excluded), end-to-end = all tokens over the whole request; self-draft passes = the self-draft level's forward passes per request (mean)`;
    writeJson(o.out, 'self-draft', { what, budget: o.budget, schedule: o.schedule, rows });
    writeFileSync(join(o.out, 'self-draft.md'), `# ADORE placement (c): self-draft on long contexts\n\n${what}.\n\n\`\`\`\n${table}\n\`\`\`\n`);
    process.stdout.write(`${what}\n\n${table}\n\nwrote ${join(o.out, 'self-draft.json')} and self-draft.md\n`);
  } finally {
    await sessions.close();
  }
}
