import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { freePort } from '../src/cluster/local-servers.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family, members, MODELS_DIR } from './helpers/family.ts';

const run = promisify(execFile);
const CLI = ['--import', 'tsx', new URL('../src/cli/main.ts', import.meta.url).pathname];
const cascade = (...args: string[]) => run(process.execPath, [...CLI, ...args], { cwd: new URL('..', import.meta.url).pathname });

async function fails(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await cascade(...args);
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error(`cascade ${args.join(' ')} succeeded`);
}

test('cli - generate --json prints the greedy continuation the engine produces', async (t) => {
  const prompt = 'class Stack:\n    def push(self, item):';
  const { stdout } = await cascade('generate', '--json', '--max-tokens', '20', '--prompt', prompt);
  const out = JSON.parse(stdout);
  const model = await OrtModelSession.open(dirOf(family.target));
  try {
    const tok = TextTokenizer.load(model.spec.tokenizerPath);
    const want = await generateAutoregressive(model, { promptIds: tok.encode(prompt), maxTokens: 20, sampling: GREEDY, seed: 0 });
    t.deepEqual(out.tokenIds, want.tokenIds);
    t.is(out.text, tok.decode(want.tokenIds));
    t.is(out.stats.promptTokens, tok.encode(prompt).length);
    t.is(out.stats.generatedTokens, want.tokenIds.length);
    t.true(out.stats.tokensPerSecond > 0 && out.stats.seconds > 0);
  } finally {
    await model.close();
  }
});

test('cli - generate streams the same text to stdout, stats to stderr', async (t) => {
  const { stdout: json } = await cascade('generate', '--json', '--max-tokens', '12', 'The', 'function');
  const { stdout, stderr } = await cascade('generate', '--max-tokens', '12', 'The', 'function');
  t.is(stdout, JSON.parse(json).text + '\n');
  t.regex(stderr, /tokens\/s/);
});

test('cli - generate stops quietly when its reader closes the pipe early', async (t) => {
  const child = spawn(process.execPath, [...CLI, 'generate', '--max-tokens', '64', 'def', 'main():'], { cwd: new URL('..', import.meta.url).pathname });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout.once('data', () => child.stdout.destroy()); // as `| head -c 1` does
  const [code] = (await once(child, 'exit')) as [number | null];
  t.is(code, 0, stderr);
  t.notRegex(stderr, /EPIPE|Error/);
});

test('cli - a prompt file works; bad flags and missing models exit with a clear error', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-cli-'));
  const file = join(dir, 'prompt.txt');
  await import('node:fs').then((fs) => fs.writeFileSync(file, 'import sys\n'));
  const { stdout } = await cascade('generate', '--json', '--max-tokens', '4', '--prompt-file', file, '--temperature', '0.8', '--seed', '3');
  t.true(JSON.parse(stdout).tokenIds.length <= 4);
  const bad = await fails(['generate', '--temperature', 'hot', 'x']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--temperature must be a number/);
  const two = await fails(['generate', '--prompt', 'a', 'b']);
  t.regex(two.stderr, /exactly one way/);
  const missing = await fails(['generate', '--models', join(dir, 'nope'), 'x']);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /not a model family/);
  const noFile = await fails(['generate', '--prompt-file', join(dir, 'absent.txt')]);
  t.regex(noFile.stderr, /cannot read --prompt-file/);
});

test('cli - bench costs prints a row per model and writes JSON', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-'));
  const { stdout } = await cascade('bench', 'costs', '--repeats', '1', '--past', '32', '--out', out);
  for (const name of members) t.regex(stdout, new RegExp(`^${name}\\s`, 'm'));
  const record = JSON.parse(readFileSync(join(out, 'costs.json'), 'utf8'));
  t.deepEqual(record.models.map((m: { model: string }) => m.model), members);
  t.true(record.models.every((m: { decodeMsPerToken: number }) => m.decodeMsPerToken > 0));
});

test('cli - every mode gives the same greedy text; --json reports the cascade and its acceptance', async (t) => {
  const texts = new Set<string>();
  for (const mode of ['ar', 'sd', 'mag', 'csd']) {
    const { stdout } = await cascade('generate', '--json', '--mode', mode, '--max-tokens', '24', 'import json\n\ndef load(path):');
    const out = JSON.parse(stdout);
    texts.add(out.text);
    t.is(out.cascade.mode, mode);
    t.is(out.stats.generatedTokens, out.tokenIds.length);
    t.true(out.stats.meanAcceptanceLength >= 1);
    t.true(out.stats.rounds >= 1);
  }
  t.is(texts.size, 1);
});

test('cli - cascade settings come from flags or a config file, and bad ones are refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-cfg-'));
  const { writeFileSync } = await import('node:fs');
  const cfg = join(dir, 'cascade.yaml');
  writeFileSync(cfg, `mode: csd\ndrafters: [${family.drafters[0]}, mag]\nkMatrix: [[2, 5], [0, 3]]\nlenience: 2\nmaxTokens: 10\n`);
  const { stdout } = await cascade('generate', '--json', '--config', cfg, 'hello');
  const out = JSON.parse(stdout);
  t.deepEqual(out.cascade.kMatrix, [[2, 5], [0, 3]]);
  t.is(out.cascade.lenience, 2);
  t.true(out.tokenIds.length <= 10);
  const flagWins = JSON.parse((await cascade('generate', '--json', '--config', cfg, '--max-tokens', '3', 'hello')).stdout);
  t.true(flagWins.tokenIds.length <= 3);
  writeFileSync(cfg, 'mode: turbo\n');
  t.regex((await fails(['generate', '--config', cfg, 'x'])).stderr, /--config .* is invalid/);
  writeFileSync(cfg, 'kMatrx: [[1]]\n');
  t.regex((await fails(['generate', '--config', cfg, 'x'])).stderr, /kMatrx/);
  t.regex((await fails(['generate', '--mode', 'fast', 'x'])).stderr, /--mode must be one of/);
  t.regex((await fails(['generate', '--drafters', 'nope,mag', 'x'])).stderr, /unknown drafter "nope"/);
  t.regex((await fails(['generate', '--drafters', 'mag', '--k-matrix', '[[1],[2]]', 'x'])).stderr, /needs 1 rows/);
  t.regex((await fails(['generate', '--k-matrix', '{oops', 'x'])).stderr, /--k-matrix must be auto or JSON/);
  t.regex((await fails(['generate', '--lenience', '0.5', 'x'])).stderr, /--lenience must be a number >= 1/);
});

test('cli - bench cascade compares every method, verifies greedy identity and writes JSON, markdown and plots', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cascade-bench-'));
  const { stdout } = await cascade('bench', 'cascade', '--workload', 'grounded', '--temperatures', '0', '--repeats', '1', '--prompts', '1', '--sweep-prompts', '1', '--max-tokens', '8', '--out', out);
  const record = JSON.parse(readFileSync(join(out, 'cascade.json'), 'utf8'));
  const methods = record.results[0].methods;
  t.deepEqual(methods.map((m: { method: string }) => m.method), ['ar', ...family.drafters.map((d) => `sd:${d}`), 'mag', 'mag-recent', 'csd-vertical', 'csd-horizontal', 'csd']);
  t.true(methods.slice(1).every((m: { identicalToAr: boolean }) => m.identicalToAr === true), 'every greedy method reproduced ar');
  t.true(methods.every((m: { tokensPerSecond: number; swi: number }) => m.tokensPerSecond > 0 && m.swi > 0));
  t.regex(stdout, /grounded, temperature 0/);
  t.true(readFileSync(join(out, 'speedups-t0.svg'), 'utf8').startsWith('<svg'));
  t.regex(readFileSync(join(out, 'cascade.md'), 'utf8'), /# Cascade benchmark/);
  t.regex((await fails(['bench', 'cascade', '--workload', 'poetry'])).stderr, /--workload must be/);
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

test('cli - generate --kv-policy bounds the target cache and reports it; bad settings are refused', async (t) => {
  const prompt = 'def area(radius):\n    return 3.14159 * radius * radius\n'.repeat(6);
  const { stdout } = await cascade('generate', '--json', '--mode', 'ar', '--kv-policy', 'streaming', '--kv-budget', '32', '--max-tokens', '12', '--prompt', prompt);
  const out = JSON.parse(stdout);
  t.is(out.tokenIds.length, 12);
  t.like(out.stats.kv, { policy: 'streaming', budget: 32 });
  t.true(out.stats.kv.peakResident <= 32);
  t.regex((await fails(['generate', '--mode', 'ar', '--kv-policy', 'window', '--prompt', 'x'])).stderr, /needs --kv-budget/);
  t.regex((await fails(['generate', '--kv-policy', 'window', '--kv-budget', '32', '--prompt', 'x'])).stderr, /runs with --mode ar/);
  t.regex((await fails(['generate', '--mode', 'ar', '--kv-policy', 'lru', '--kv-budget', '32', '--prompt', 'x'])).stderr, /--kv-policy must be one of/);
});

test('cli - bounded caches on drafters or a self-draft level keep the greedy text of target-only decoding', async (t) => {
  const prompt = 'def area(radius):\n    return 3.14159 * radius * radius\n'.repeat(6);
  const text = async (...args: string[]) => JSON.parse((await cascade('generate', '--json', '--max-tokens', '24', '--prompt', prompt, ...args)).stdout);
  const ar = await text('--mode', 'ar');
  const self = await text('--mode', 'mag', '--kv-placement', 'self-draft', '--kv-policy', 'streaming', '--kv-budget', '40');
  const drafters = await text('--mode', 'csd', '--kv-placement', 'drafters', '--kv-policy', 'window', '--kv-budget', '32');
  t.deepEqual(self.tokenIds, ar.tokenIds);
  t.deepEqual(drafters.tokenIds, ar.tokenIds);
  t.deepEqual(self.cascade.drafters, ['self', 'mag']);
  t.true(Object.keys(self.stats.models).some((m) => m.startsWith(`${family.target}@streaming`)), 'the self-draft level is reported apart from the target');
  t.regex((await fails(['generate', '--mode', 'ar', '--kv-placement', 'drafters', '--kv-policy', 'window', '--kv-budget', '32', '--prompt', 'x'])).stderr, /needs neural drafters/);
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

/** `cascade` as installed (bin/cascade.js under plain node, no tsx flag): how `npx cascade` runs. */
const BIN = new URL('../bin/cascade.js', import.meta.url).pathname;
const installed = (...args: string[]) => run(process.execPath, [BIN, ...args], { cwd: tmpdir() });

/** Processes whose command line names `marker` (every role of a cluster started with it in a path). */
async function processesNaming(marker: string): Promise<string[]> {
  const { stdout } = await run('ps', ['-eo', 'pid=,args=']);
  return stdout.split('\n').filter((l) => l.includes(marker) && !l.includes(' ps '));
}

/** A models path unique to one test (a link to the family), so its roles can be found by their command lines. */
function uniqueModels(): { dir: string; models: string } {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-up-'));
  const models = join(dir, 'family');
  symlinkSync(MODELS_DIR, models);
  return { dir, models };
}

test.serial('cli - bin/cascade.js cluster up starts every role, serves a completion, and cluster down stops them', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  try {
    const { stdout } = await installed('cluster', 'up', '--state-dir', state, '--models', models);
    t.regex(stdout, /cluster up: 7 processes/);
    const gateway = (JSON.parse(readFileSync(join(state, 'cluster.json'), 'utf8')) as { gateway: string }).gateway;
    const { apiKey } = JSON.parse(readFileSync(join(state, 'secrets.json'), 'utf8')) as { apiKey: string };
    const res = await fetch(`${gateway}/v1/completions`, { method: 'POST', headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'def add(a, b):', max_tokens: 4, temperature: 0 }) });
    t.is(res.status, 200);
    t.is(((await res.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens, 4);
    t.regex((await installed('cluster', 'down', '--state-dir', state)).stdout, /cluster down: stopped 7 processes/);
    t.deepEqual(readdirSync(state).filter((f) => !f.endsWith('.log')), [], 'state, secrets and server configs are gone');
    t.deepEqual(await processesNaming(dir), []);
  } finally {
    await installed('cluster', 'down', '--state-dir', state).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('cli - a cluster up that fails late stops what it started and leaves no files behind', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  const closed = await freePort(); // nothing listens there: the actors find out once their models are loaded
  try {
    const err = await t.throwsAsync(installed('cluster', 'up', '--state-dir', state, '--models', models, '--nats', `nats://127.0.0.1:${closed}`));
    const { code, stderr } = err as unknown as { code: number; stderr: string };
    t.is(code, 1);
    t.regex(stderr, /cluster up failed; stopped redis-server, verify-0, .*coordinator-0 and removed the files it wrote/);
    t.regex(stderr, /exited during start-up; its log ended:[^]*cannot connect to NATS/);
    t.false(existsSync(state), 'no secrets, configs, logs or state directory left');
    t.deepEqual(await processesNaming(dir), [], 'no process left running');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
