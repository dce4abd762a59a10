// Median over rounds of each round's bench-costs medians, per model, past and form, with every
// round's values kept: node bench/results/forms/summarize.mjs RUNS_DIR OUT.json "what was run"
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [runs, outPath, what] = process.argv.slice(2);
const med = (a) => {
  const s = [...a].sort((x, y) => x - y);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const rounds = {};
for (const r of readdirSync(runs).sort()) {
  for (const p of readdirSync(join(runs, r)).sort()) {
    for (const form of ['unfused', 'fused']) {
      const dir = join(runs, r, p, form);
      const costs = JSON.parse(readFileSync(join(dir, 'costs.json'), 'utf8'));
      const loadavg = readFileSync(join(dir, 'loadavg'), 'utf8').trim().split(' ').slice(0, 3).map(Number);
      for (const m of costs.models) {
        const model = m.model.replace(/ \(.*\)$/, '');
        (rounds[`${model} past=${m.past} ${form}`] ??= []).push({ round: r, loadavg, prefillMs: m.prefillMs, decodeMsPerToken: m.decodeMsPerToken, scoreMs: m.scoreMs, executionProvider: m.executionProvider ?? 'cpu', kvLocation: m.kvLocation ?? 'host' });
      }
    }
  }
}
const summary = {};
for (const [key, list] of Object.entries(rounds)) {
  const scoreMs = {};
  for (const k of Object.keys(list[0].scoreMs)) scoreMs[k] = med(list.map((x) => x.scoreMs[k]));
  const decode = list.map((x) => x.decodeMsPerToken);
  summary[key] = { decodeMsPerToken: med(decode), decodeRange: [Math.min(...decode), Math.max(...decode)], scoreMs, prefillMs: med(list.map((x) => x.prefillMs)) };
}
const loads = Object.values(rounds).flat().map((x) => x.loadavg[0]);
writeFileSync(outPath, JSON.stringify({ what, loadavg1Range: [Math.min(...loads), Math.max(...loads)], summary, rounds }, null, 1) + '\n');
for (const key of Object.keys(summary).filter((k) => k.endsWith(' unfused'))) {
  const u = summary[key];
  const f = summary[key.replace(/unfused$/, 'fused')];
  const cell = (a, b) => `${a.toFixed(2)} | ${b.toFixed(2)} | ${(b / a).toFixed(2)}`;
  console.log(`| ${key.replace(/ unfused$/, '').replace(' past=', ' | ')} | ${cell(u.decodeMsPerToken, f.decodeMsPerToken)} | ${cell(u.scoreMs[8], f.scoreMs[8])} | ${cell(u.scoreMs[16], f.scoreMs[16])} |`);
}
