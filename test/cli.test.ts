import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { parseKMatrix } from '../src/cli/options.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { MAX_K } from '../src/engine/presets.ts';
import { InvalidArgumentError } from '../src/errors.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { CLI, cascade, fails } from './helpers/cli.ts';
import { dirOf, family, MODELS_DIR } from './helpers/family.ts';

// `cascade generate` and its flags as a user runs them: child processes over the bundled models.

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
  t.is(missing.code, 2, 'bad input');
  t.regex(missing.stderr, /not a model family/);
  // a family.json with a misspelt key, or the target among its own drafters, is refused by name
  for (const [json, reason] of [
    [{ target: 'target', drafter: ['draft-l1'], drafters: [] }, /family\.json is malformed: unrecognized key 'drafter' \(did you mean 'drafters'\?\)/],
    [{ target: 'target', drafters: ['target'] }, /the target "target" cannot be its own drafter/],
  ] as const) {
    const family = join(dir, `family-${reason.source.length}`);
    await import('node:fs').then((fs) => (fs.mkdirSync(family), fs.writeFileSync(join(family, 'family.json'), JSON.stringify(json))));
    const r = await fails(['generate', '--models', family, 'x']);
    t.is(r.code, 1);
    t.regex(r.stderr, reason);
  }
  const noFile = await fails(['generate', '--prompt-file', join(dir, 'absent.txt')]);
  t.regex(noFile.stderr, /cannot read --prompt-file/);
  // an empty item is no token id (Number('') would be token 0)
  for (const ids of ['', '1,,2', '3,', '0x10', '1e3', '+5']) {
    const r = await fails(['generate', '--prompt-ids', ids]);
    t.is(r.code, 2, ids);
    t.regex(r.stderr, /--prompt-ids must be comma-separated non-negative token ids/);
  }
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

test('cli - --drafting async with and without --outcome-branches gives the greedy text of target-only decoding; --json reports the choice and the branches drafted', async (t) => {
  const run = async (...args: string[]) => JSON.parse((await cascade('generate', '--json', '--mode', 'csd', '--drafting', 'async', '--max-tokens', '24', ...args, 'import json\n\ndef load(path):')).stdout);
  const [ar, on, off] = await Promise.all([cascade('generate', '--json', '--mode', 'ar', '--max-tokens', '24', 'import json\n\ndef load(path):').then((r) => JSON.parse(r.stdout)), run('--outcome-branches'), run()]);
  t.deepEqual(on.tokenIds, ar.tokenIds);
  t.deepEqual(off.tokenIds, ar.tokenIds);
  t.is(on.cascade.outcomeBranches, true);
  t.is(off.cascade.outcomeBranches, false);
  t.deepEqual(off.cascade.drafters, [family.drafters[0], 'mag'], 'the levels async drafting runs: the first neural drafter ahead, MaG below it');
  t.is(off.stats.drafting.outcomeDrafts, 0);
  t.is(typeof on.stats.drafting.outcomeDrafts, 'number');
  t.regex((await fails(['generate', '--outcome-branches', 'x'])).stderr, /--outcome-branches needs --drafting async/);
});

test('cli - logits processors (penalties, logit_bias) give the same greedy tokens under csd as under ar, and change them', async (t) => {
  const run = async (...args: string[]) => JSON.parse((await cascade('generate', '--json', '--max-tokens', '20', ...args, 'import json\n\ndef load(path):')).stdout) as { tokenIds: number[] };
  const processors = ['--presence-penalty', '0.5', '--frequency-penalty', '0.5', '--repetition-penalty', '1.3', '--logit-bias', '{"13": -100}'];
  const [ar, csd, plain] = await Promise.all([run('--mode', 'ar', ...processors), run('--mode', 'csd', ...processors), run('--mode', 'ar')]);
  t.deepEqual(csd.tokenIds, ar.tokenIds);
  t.notDeepEqual(ar.tokenIds, plain.tokenIds);
  t.false(ar.tokenIds.includes(13), 'the banned token never appears');
  t.regex((await fails(['generate', '--presence-penalty', '3', 'x'])).stderr, /presence penalty must be in \[-2, 2\], got 3/);
  t.regex((await fails(['generate', '--logit-bias', '[1]', 'x'])).stderr, /--logit-bias takes a JSON object/);
  // "013" and "13" would be one token, one bias silently replacing the other
  t.regex((await fails(['generate', '--logit-bias', '{"13": 100, "013": -100}', 'x'])).stderr, /--logit-bias keys are token ids \(integers from 0, without leading zeros\); got "013"/);
});

test('cli - --mode ar stays target-only decoding: --self-draft and --eagle-model, which would add a drafter to it, are refused before anything is made', async (t) => {
  const a = await fails(['generate', '--mode', 'ar', '--self-draft', 'int4', '--self-draft-cache', join(tmpdir(), 'cascade-never-made'), 'x']);
  t.is(a.code, 2);
  t.regex(a.stderr, /--mode ar is target-only decoding: --self-draft would add a drafter to it; use --mode sd, mag or csd/);
  t.false(existsSync(join(tmpdir(), 'cascade-never-made')), 'no copy was made');
  const b = await fails(['generate', '--mode', 'ar', '--eagle-model', join(MODELS_DIR, 'eagle'), 'x']);
  t.regex(b.stderr, /--mode ar is target-only decoding: --eagle-model would add a drafter to it/);
});

test('cli - --eagle-model names itself when its folder is missing, or is the graph file rather than its folder', async (t) => {
  const missing = await fails(['generate', '--eagle-model', join(MODELS_DIR, 'no-such-drafter'), 'x']);
  t.regex(missing.stderr, /--eagle-model: model directory .*no-such-drafter does not exist/);
  const file = await fails(['generate', '--eagle-model', join(MODELS_DIR, 'eagle', 'model.onnx'), 'x']);
  t.regex(file.stderr, /--eagle-model: .*model\.onnx is a file, not a model directory: name the folder that holds the graph/);
});

test('cli - --stop ends the text before the first stop string, as target-only decoding\'s text cut there, under ar and csd, streamed and --json', async (t) => {
  const prompt = 'import json\n\ndef load(path):';
  const full = JSON.parse((await cascade('generate', '--json', '--max-tokens', '30', '--mode', 'ar', prompt)).stdout) as { text: string; tokenIds: number[] };
  const stop = full.text.slice(Math.floor(full.text.length / 2), Math.floor(full.text.length / 2) + 4);
  const want = full.text.slice(0, full.text.indexOf(stop));
  for (const mode of ['ar', 'csd']) {
    const out = JSON.parse((await cascade('generate', '--json', '--max-tokens', '30', '--mode', mode, '--stop', 'never-there', '--stop', stop, prompt)).stdout) as { text: string; finishReason: string; tokenIds: number[] };
    t.is(out.text, want, mode);
    t.is(out.finishReason, 'stop');
    t.deepEqual(out.tokenIds, full.tokenIds.slice(0, out.tokenIds.length), 'the tokens up to the one that completed the stop string');
    t.true(out.tokenIds.length < full.tokenIds.length);
  }
  const streamed = await cascade('generate', '--max-tokens', '30', '--stop', stop, prompt);
  t.is(streamed.stdout, `${want}\n`);
  t.regex((await fails(['generate', '--stop', '', 'x'])).stderr, /--stop takes a non-empty string/);
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
  writeFileSync(cfg, `mode: turbo\nkMatrix: [[2, ${MAX_K + 1}]]\n`);
  const invalid = (await fails(['generate', '--config', cfg, 'x'])).stderr;
  t.regex(invalid, /--config .* is invalid/);
  t.regex(invalid, new RegExp(`'kMatrix\\[0\\]\\[1\\]': a K entry may be at most ${MAX_K}`), 'the K bound is named with the entry');
  // a misspelt key, or the API's spelling of one, is answered with the key it likely meant
  writeFileSync(cfg, 'kMatrx: [[1]]\nmax_tokens: 5\n');
  t.regex((await fails(['generate', '--config', cfg, 'x'])).stderr, /unrecognized keys 'kMatrx' \(did you mean 'kMatrix'\?\), 'max_tokens' \(did you mean 'maxTokens'\?\)/);
  t.regex((await fails(['generate', '--mode', 'fast', 'x'])).stderr, /--mode must be one of/);
  t.regex((await fails(['generate', '--drafters', 'nope,mag', 'x'])).stderr, /unknown drafter "nope"/);
  t.regex((await fails(['generate', '--drafters', 'mag', '--k-matrix', '[[1],[2]]', 'x'])).stderr, /needs 1 row for 1 drafter/);
  t.regex((await fails(['generate', '--k-matrix', '{oops', 'x'])).stderr, /--k-matrix must be auto or JSON/);
  t.regex((await fails(['generate', '--lenience', '0.5', 'x'])).stderr, /--lenience must be a number >= 1/);
});

test(`cli - --k-matrix takes entries up to ${MAX_K}, the gateway's limit, and refuses a larger one as bad usage`, (t) => {
  t.deepEqual(parseKMatrix(`[[2, ${MAX_K}], [0, 3]]`), [[2, MAX_K], [0, 3]]);
  // an InvalidArgumentError is what the CLI exits 2 for (main.ts; see the usage-error test below)
  t.throws(() => parseKMatrix(`[[2, ${MAX_K + 1}], [0, 3]]`), { instanceOf: InvalidArgumentError, message: `--k-matrix[0][1] is ${MAX_K + 1}: a K entry may be at most ${MAX_K}, the most tokens one drafter call proposes` });
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

test('cli - generate --batch-invariant on (flag or config file) runs the target\'s one-token passes as two rows and --json says so; auto leaves a float graph alone', async (t) => {
  const run = async (...args: string[]) => JSON.parse((await cascade('generate', '--json', '--model', 'models/draft-l2', '--max-tokens', '4', '--temperature', '0', ...args, 'def f(x):')).stdout) as { tokenIds: number[]; batchInvariant: boolean };
  const on = await run('--batch-invariant', 'on');
  t.true(on.batchInvariant);
  t.true(on.tokenIds.length > 0 && on.tokenIds.length <= 4);
  const cfg = join(mkdtempSync(join(tmpdir(), 'cascade-cli-')), 'invariant.yaml');
  writeFileSync(cfg, 'batchInvariant: on\n');
  t.true((await run('--config', cfg)).batchInvariant);
  t.false((await run()).batchInvariant);
});

test('cli - usage errors exit 2 with the reason; a failed write to stdout is one line and exit 1', async (t) => {
  const unknown = await fails(['generate', '--bogus', 'x']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /unknown option '--bogus'/);
  const ar = await fails(['generate', '--mode', 'ar', '--k-matrix', '[[8]]', 'x']);
  t.is(ar.code, 2);
  t.regex(ar.stderr, /mode ar, no drafters\) takes no K matrix/);
  const invariance = await fails(['generate', '--batch-invariant', 'maybe', 'x']);
  t.is(invariance.code, 2);
  t.regex(invariance.stderr, /--batch-invariant must be one of auto, on, off, got "maybe"/);
  t.notRegex(invariance.stderr, /is an option, not a value/);
  // a value left out: commander hands the next option over as the value, and the refusal says so
  const missing = await fails(['generate', '--batch-invariant', '--max-tokens', '4', 'x']);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /got "--max-tokens"\n\(--max-tokens is an option, not a value: --batch-invariant needs its value right after it\)/);
  // --multi-step-ms sets up the verifier a coordinator hosts, and takes a number of ms >= 0
  const stray = await fails(['coordinator', '--nats', 'nats://127.0.0.1:1', '--redis', 'redis://127.0.0.1:1', '--multi-step-ms', '40']);
  t.is(stray.code, 2);
  t.regex(stray.stderr, /--multi-step-ms sets up the verifier that --verifier hosts/);
  const negative = await fails(['actor', 'verify', '--nats', 'nats://127.0.0.1:1', '--multi-step-ms', '-1']);
  t.is(negative.code, 2);
  t.regex(negative.stderr, /--multi-step-ms/);
  // a coordinator's --actor-silence-ms is 0 (off) or two heartbeats at least: one late heartbeat is no dead actor
  const silence = await fails(['coordinator', '--nats', 'nats://127.0.0.1:1', '--redis', 'redis://127.0.0.1:1', '--actor-silence-ms', '500']);
  t.is(silence.code, 2);
  t.regex(silence.stderr, /--actor-silence-ms must be 0 \(off\) or at least 2000: actors send a heartbeat every 1000 ms, got "500"/);
  const full = spawn(process.execPath, [...CLI, 'generate', '--max-tokens', '4', 'x'], { cwd: new URL('..', import.meta.url).pathname, stdio: ['ignore', openSync('/dev/full', 'w'), 'pipe'] });
  let stderr = '';
  full.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const [code] = (await once(full, 'exit')) as [number | null];
  t.is(code, 1);
  t.regex(stderr, /^error: cannot write to standard output: ENOSPC/);
  t.notRegex(stderr, /\n\s+at /, 'no stack trace');
});
