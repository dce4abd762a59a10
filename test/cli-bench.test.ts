import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { cascade, fails } from './helpers/cli.ts';
import { family, members } from './helpers/family.ts';

// Every `cascade bench` command end to end at a small size: tables, JSON and checks of its own.

test('cli - bench costs prints a row per model and writes JSON', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-'));
  const { stdout } = await cascade('bench', 'costs', '--repeats', '1', '--past', '32', '--out', out);
  for (const name of members) t.regex(stdout, new RegExp(`^${name}\\s`, 'm'));
  const record = JSON.parse(readFileSync(join(out, 'costs.json'), 'utf8'));
  t.deepEqual(record.models.map((m: { model: string }) => m.model), members);
  t.true(record.models.every((m: { decodeMsPerToken: number }) => m.decodeMsPerToken > 0));
});

test('cli - a bench\'s --out, methods and prompt sets are checked before anything is measured', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-bench-'));
  const file = join(dir, 'a-file');
  writeFileSync(file, '');
  const [costs, peer, methods, prompts] = await Promise.all([
    fails(['bench', 'costs', '--out', file]),
    fails(['bench', 'peer', '--out', join(file, 'under')]),
    fails(['bench', 'cascade', '--methods', 'bogus', '--out', dir]),
    fails(['bench', 'cascade', '--prompts', '12', '--sweep-prompts', '8', '--out', dir]),
  ]);
  t.regex(costs.stderr, /^error: --out .*a-file: .*a-file is a file, not a directory$/m);
  t.regex(peer.stderr, /a-file is a file, not a directory/);
  t.regex(methods.stderr, /unknown method bogus/);
  t.regex(prompts.stderr, /fewer than 12 to measure plus 8 to tune K on/);
  for (const r of [costs, peer, methods, prompts]) {
    t.is(r.code, 2);
    t.notRegex(r.stderr, /measuring/, 'refused before measuring');
  }
});

test('cli - bench costs measures batched decode and verify passes against one sequence, verify(32) among the scored sizes', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-batch-'));
  const { stdout } = await cascade('bench', 'costs', '--model', 'draft-l1', '--repeats', '1', '--past', '16', '--batch', '1,2', '--batch-verify', '4', '--out', out);
  t.regex(stdout, /score 32 ms/);
  t.regex(stdout, /^batched passes/m);
  t.regex(stdout, /^draft-l1\s+2\s+verify\(4\)/m);
  const record = JSON.parse(readFileSync(join(out, 'costs.json'), 'utf8'));
  t.deepEqual(record.batch, [1, 2]);
  const [m] = record.models;
  t.true(m.scoreMs[32] > 0);
  const rows = m.batched as { batch: number; tokens: number; ms: number; tokensPerSecond: number; vsOne: number }[];
  t.deepEqual(rows.map((r) => [r.batch, r.tokens]), [[1, 1], [1, 4], [2, 1], [2, 4]]);
  t.true(rows.every((r) => r.ms > 0 && Math.abs(r.tokensPerSecond - (r.batch * r.tokens * 1000) / r.ms) < 1e-6 * r.tokensPerSecond));
  t.true(rows.filter((r) => r.batch === 1).every((r) => r.vsOne === 1));
  t.regex((await fails(['bench', 'costs', '--batch', '0'])).stderr, /--batch must be an integer/);
});

test('cli - bench costs records a batched shape the runner refuses (a fused graph verifying several sequences) and measures the rest', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-fused-'));
  const fused = new URL('./fixtures/fused/draft-l2', import.meta.url).pathname;
  const { stdout } = await cascade('bench', 'costs', '--model', fused, '--tokenizer', 'models/tokenizer.json', '--repeats', '1', '--past', '16', '--batch', '2', '--batch-verify', '4', '--out', out);
  const rows = JSON.parse(readFileSync(join(out, 'costs.json'), 'utf8')).models[0].batched as { batch: number; tokens: number; ms?: number; refused?: string }[];
  t.true(rows.find((r) => r.batch === 2 && r.tokens === 1)!.ms! > 0, 'equal pasts, one new token each: runs');
  t.regex(rows.find((r) => r.batch === 2 && r.tokens === 4)!.refused!, /fused graph \(GroupQueryAttention\)/);
  t.regex(stdout, /refused \[1\]/);
  const none = mkdtempSync(join(tmpdir(), 'cascade-bench-nobatch-'));
  await cascade('bench', 'costs', '--model', 'draft-l1', '--repeats', '1', '--past', '16', '--no-batch', '--out', none);
  t.false('batched' in JSON.parse(readFileSync(join(none, 'costs.json'), 'utf8')).models[0]);
});

test('cli - bench cascade places the target and the drafters (--execution-providers, --draft-execution-providers, --kv-location, --batch-invariant) and records the placement', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-placed-'));
  const { stdout } = await cascade('bench', 'cascade', '--model', 'draft-l2', '--draft-model', 'draft-l1', '--execution-providers', 'cpu', '--draft-execution-providers', 'cpu', '--kv-location', 'host', '--batch-invariant', 'on', '--workload', 'code', '--temperatures', '0', '--repeats', '1', '--prompts', '1', '--sweep-prompts', '1', '--max-tokens', '6', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'cascade.json'), 'utf8'));
  t.deepEqual(record.placement, {
    'draft-l2': { requested: ['cpu'], provider: 'cpu', kvLocation: 'host', batchInvariant: true },
    'draft-l1': { requested: ['cpu'], provider: 'cpu', kvLocation: 'host', batchInvariant: false },
  });
  const methods = record.results[0].methods as { method: string; identicalToAr: boolean }[];
  t.deepEqual(methods.map((m) => m.method).filter((m) => m === 'ar' || m === 'csd'), ['ar', 'csd']);
  t.true(methods.slice(1).every((m) => m.identicalToAr === true));
  t.regex(stdout, /placement: draft-l2 on cpu \(KV host, batch-invariant\), draft-l1 on cpu \(KV host\)/);
  t.regex((await fails(['bench', 'cascade', '--execution-providers', 'gpu'])).stderr, /--execution-providers takes auto or a comma-separated list/);
  t.regex((await fails(['bench', 'cascade', '--kv-location', 'disk'])).stderr, /--kv-location must be one of/);
  t.regex((await fails(['bench', 'cascade', '--batch-invariant', 'maybe'])).stderr, /--batch-invariant must be one of auto, on, off/);
});

test('cli - bench cascade --self-draft makes the target\'s int4 copy and measures it as sd:<target>-int4 and inside csd, identical to ar', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-self-draft-'));
  await cascade('bench', 'cascade', '--model', 'draft-l2', '--draft-model', 'draft-l1', '--self-draft', 'int4', '--self-draft-cache', join(out, 'cache'), '--methods', 'sd:draft-l2-int4,csd', '--workload', 'code', '--temperatures', '0', '--repeats', '1', '--prompts', '1', '--sweep-prompts', '1', '--max-tokens', '6', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'cascade.json'), 'utf8'));
  t.deepEqual(Object.keys(record.placement), ['draft-l2', 'draft-l2-int4', 'draft-l1']);
  t.false(record.placement['draft-l2-int4'].batchInvariant, 'a drafter never pads');
  const methods = record.results[0].methods as { method: string; identicalToAr: boolean; kMatrix: number[][] }[];
  t.deepEqual(methods.map((m) => m.method), ['ar', 'sd:draft-l2-int4', 'csd']);
  t.true(methods.slice(1).every((m) => m.identicalToAr === true));
  t.is(methods[2]!.kMatrix.length, 3, 'csd stacks the copy, draft-l1 and MaG');
  t.regex((await fails(['bench', 'cascade', '--self-draft', 'int2'])).stderr, /--self-draft must be one of int4, int8/);
});

test('cli - bench cascade compares every method, verifies greedy identity and writes JSON, markdown and plots', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-'));
  const { stdout } = await cascade('bench', 'cascade', '--workload', 'grounded', '--temperatures', '0', '--repeats', '1', '--prompts', '1', '--sweep-prompts', '1', '--max-tokens', '8', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'cascade.json'), 'utf8'));
  const methods = record.results[0].methods;
  t.deepEqual(methods.map((m: { method: string }) => m.method), ['ar', ...family.drafters.map((d) => `sd:${d}`), 'mag', 'mag-recent', 'csd-vertical', 'csd-horizontal', 'csd', 'mag>csd']);
  t.true(methods.slice(1).every((m: { identicalToAr: boolean }) => m.identicalToAr === true), 'every greedy method reproduced ar');
  t.true(methods.every((m: { tokensPerSecond: number; swi: number }) => m.tokensPerSecond > 0 && m.swi > 0));
  t.regex(stdout, /grounded, temperature 0/);
  t.true(readFileSync(join(out, 'speedups-t0.svg'), 'utf8').startsWith('<svg'));
  t.regex(readFileSync(join(out, 'cascade.md'), 'utf8'), /# Cascade benchmark/);
  t.regex((await fails(['bench', 'cascade', '--workload', 'poetry'])).stderr, /--workload must be/);
});

test('cli - bench cascade measures a user\'s exports: --model and --draft-model folders (the HF fixtures), every greedy method identical to ar', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-hf-'));
  const hf = (name: string) => new URL(`./fixtures/hf/${name}`, import.meta.url).pathname;
  await cascade('bench', 'cascade', '--model', hf('llama-gqa'), '--draft-model', hf('llama-gqa-fp16'), '--tokenizer', 'models/tokenizer.json', '--workload', 'code', '--temperatures', '0', '--repeats', '1', '--prompts', '1', '--sweep-prompts', '1', '--max-tokens', '8', '--out', out);
  const methods = JSON.parse(readFileSync(join(out, 'cascade.json'), 'utf8')).results[0].methods;
  t.deepEqual(methods.map((m: { method: string }) => m.method), ['ar', 'sd:llama-gqa-fp16', 'mag', 'mag-recent', 'csd-vertical', 'csd-horizontal', 'csd', 'mag>csd']);
  t.true(methods.slice(1).every((m: { identicalToAr: boolean }) => m.identicalToAr === true));
});

test('cli - bench scale compares auto with a K sweep, measures sessions in flight with and without batching, calibrates and validates the simulator', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-scale-'));
  const { stdout } = await cascade('bench', 'scale', '--workload', 'code', '--prompts', '1', '--sweep-prompts', '1', '--concurrency', '1,2', '--repeats', '1', '--max-tokens', '6', '--no-cluster', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'scale.json'), 'utf8'));
  t.is(record.auto.length, 1);
  t.true(record.auto[0].identicalToAr, 'auto and the best fixed K reproduce ar');
  t.true(record.auto[0].sweep.length >= 20, 'the sweep covers every cascade shape');
  t.is(record.load.rows.length, 2 * 2 * 3, 'sessions x batching x speculation');
  t.true(record.load.rows.every((r: { identicalToAr: boolean; tokensPerSecond: number }) => r.identicalToAr && r.tokensPerSecond > 0));
  t.true(record.calibration.points.length >= 8);
  t.true(record.validation.every((v: { simulated: number }) => v.simulated > 0));
  t.true(record.projection.some((p: { verifiers: number }) => p.verifiers === 64));
  t.regex(stdout, /Simulator validation/);
  t.regex((await fails(['bench', 'scale', '--concurrency', '0'])).stderr, /--concurrency/);
});

test('cli - bench self-draft runs every method on long documents, token-identical to ar, and reports the self-draft level\'s passes', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-self-draft-'));
  const { stdout } = await cascade('bench', 'self-draft', '--docs', '1', '--context', '96', '--max-tokens', '6', '--budget', '48', '--repeats', '1', '--schedule', 'fixed', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'self-draft.json'), 'utf8'));
  const rows = record.rows as { method: string; identical: boolean; selfDraftPasses: number; decodeTokensPerSecond: number; firstTokenSeconds: number }[];
  t.is(rows.length, 5);
  t.true(rows.every((r) => r.identical), 'every method gives the greedy text of ar');
  t.true(rows.filter((r) => r.method.startsWith('self-draft')).every((r) => r.selfDraftPasses > 0), 'with fixed K the self-draft level drafts');
  t.true(rows.filter((r) => !r.method.startsWith('self-draft')).every((r) => r.selfDraftPasses === 0));
  t.true(rows.every((r) => r.decodeTokensPerSecond > 0 && r.firstTokenSeconds > 0));
  t.regex(stdout, /decode tok\/s/);
  t.regex((await fails(['bench', 'self-draft', '--schedule', 'sometimes'])).stderr, /--schedule must be auto or fixed/);
});

test('cli - bench kv compares bounded caches with full attention on long documents and writes JSON, markdown and a plot', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-kv-'));
  const { stdout } = await cascade('bench', 'kv', '--context', '96', '--continuation', '4', '--docs', '1', '--fractions', '0.25,0.5', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'kv.json'), 'utf8'));
  const rows = record.rows as { policy: string; fraction: number; budget: number; kvMiB: number; agreement: number }[];
  t.deepEqual([...new Set(rows.map((r) => r.policy))], ['full', 'window', 'streaming', 'h2o', 'adore']);
  const full = rows.find((r) => r.policy === 'full')!;
  for (const r of rows.filter((x) => x.policy !== 'full')) {
    t.is(r.budget, Math.round(r.fraction * 96));
    t.true(r.kvMiB <= full.kvMiB * r.fraction + 1e-9, `${r.policy} at ${r.fraction} holds at most its budget`);
    t.true(r.agreement >= 0 && r.agreement <= 1);
  }
  t.regex(stdout, /NLL vs full %/);
  t.true(readFileSync(join(out, 'kv-quality.svg'), 'utf8').startsWith('<svg'));
  t.regex((await fails(['bench', 'kv', '--fractions', '1.5'])).stderr, /--fractions must be budgets in \(0, 1\)/);
  t.regex((await fails(['bench', 'kv', '--policies', 'full'])).stderr, /--policies must be among/);
});
