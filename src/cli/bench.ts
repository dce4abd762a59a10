import type { Command } from 'commander';
import { measureCosts, SCORE_KS, type ModelCosts } from '../bench/costs.ts';
import { formatTable, writeJson } from '../bench/report.ts';
import { loadFamily, memberDir } from '../models/family.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { parseNumber } from './options.ts';

interface CostOptions {
  models: string;
  out: string;
  repeats: number;
  past: number;
  threads: number;
}

async function costs(o: CostOptions): Promise<void> {
  const family = loadFamily(o.models);
  const names = [family.target, ...family.drafters];
  const results: ModelCosts[] = [];
  for (const name of names) {
    process.stderr.write(`measuring ${name} …\n`);
    const model = await OrtModelSession.open(memberDir(family, name), { intraOpThreads: o.threads });
    try {
      results.push(await measureCosts(model, o.past, o.repeats));
    } finally {
      await model.close();
    }
  }
  const target = results[0]!;
  const headers = ['model', `prefill ${o.past} ms`, 'decode ms/tok', ...SCORE_KS.map((k) => `score ${k} ms`), 'decode vs target', 'score 8 vs target'];
  const rows = results.map((r) => [
    r.model,
    r.prefillMs,
    r.decodeMsPerToken,
    ...SCORE_KS.map((k) => r.scoreMs[k]!),
    r.decodeMsPerToken / target.decodeMsPerToken,
    r.scoreMs[8]! / target.scoreMs[8]!,
  ]);
  process.stdout.write(`model costs: medians of ${o.repeats}+ repeats, ${o.threads} ONNX Runtime thread(s), past = ${o.past} tokens\n\n`);
  process.stdout.write(formatTable(headers, rows) + '\n');
  const path = writeJson(o.out, 'costs', { past: o.past, threads: o.threads, repeats: o.repeats, models: results });
  process.stdout.write(`\nwrote ${path}\n`);
}

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks: print a table and write JSON');
  bench
    .command('costs')
    .description('per-model prefill, decode and k-token scoring costs, and each drafter relative to the target')
    .option('--models <dir>', 'model family directory', 'models')
    .option('--out <dir>', 'directory for the JSON record', 'results')
    .option('--repeats <n>', 'repeats per measurement (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 5)
    .option('--past <n>', 'tokens already in the cache when decoding and scoring', parseNumber('--past', { min: 1, integer: true }), 256)
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }), 1)
    .action(costs);
}
