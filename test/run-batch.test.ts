import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { z } from 'zod';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { fails } from './helpers/cli.ts';
import { family, MODELS_DIR } from './helpers/family.ts';

/** `cascade run-batch`: OpenAI's batch file format in and out, against target-only decoding. */
const dir = mkdtempSync(join(tmpdir(), 'run-batch-'));
const write = (name: string, lines: unknown[]) => {
  const path = join(dir, name);
  writeFileSync(path, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');
  return path;
};
/** One output line as OpenAI documents it (https://platform.openai.com/docs/api-reference/batch/request-output). */
const OutputLine = z.object({
  id: z.string(),
  custom_id: z.string(),
  response: z.object({ status_code: z.number().int(), request_id: z.string().nullable(), body: z.record(z.string(), z.unknown()) }).nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
});
const readOutput = (path: string) => readFileSync(path, 'utf8').trim().split('\n').map((l) => OutputLine.passthrough().parse(JSON.parse(l)));

test('run-batch - every request answered in OpenAI\'s output format, greedy text equal to target-only decoding; a bad request is an error line, the others run', async (t) => {
  const prompts = ['def fibonacci(n):', 'import os\nimport sys\n', 'The quick brown fox'];
  const input = write('in.jsonl', [
    ...prompts.map((prompt, i) => ({ custom_id: `c${i}`, method: 'POST', url: '/v1/completions', body: { prompt, max_tokens: 12, temperature: 0 } })),
    { custom_id: 'chat', method: 'POST', url: '/v1/chat/completions', body: { messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 6, temperature: 0 } },
    { custom_id: 'bad', method: 'POST', url: '/v1/completions', body: { prompt: 'x', max_tokens: 2, n: 99 } },
  ]);
  const output = join(dir, 'out.jsonl');
  const run = await fails(['run-batch', '-i', input, '-o', output, '--concurrency', '3']);
  t.is(run.code, 1, 'a failed request makes the exit status 1');
  t.regex(run.stderr, /5\/5 done, 1 failed/);
  const lines = readOutput(output);
  t.deepEqual(lines.map((l) => l.custom_id).sort(), ['bad', 'c0', 'c1', 'c2', 'chat']);
  const sessions = new FamilySessions(family, {});
  const tok = TextTokenizer.load(join(MODELS_DIR, 'tokenizer.json'));
  try {
    for (const [i, prompt] of prompts.entries()) {
      const want = await generateAutoregressive(await sessions.get(family.target), { promptIds: tok.encodePrompt(prompt), maxTokens: 12, sampling: GREEDY, seed: 0 });
      const line = lines.find((l) => l.custom_id === `c${i}`)!;
      t.is(line.response!.status_code, 200);
      t.is(line.error, null);
      t.is((line.response!.body as { choices: { text: string }[] }).choices[0]!.text, tok.decode(want.tokenIds));
    }
  } finally {
    await sessions.close();
  }
  const bad = lines.find((l) => l.custom_id === 'bad')!;
  t.is(bad.response!.status_code, 400);
  t.is(bad.error, null, 'an HTTP answer, if an error one, is a response');
  t.regex((bad.response!.body as { error: { message: string } }).error.message, /n may be at most 16/);
  // --resume runs only what was not answered with a 200
  const again = await fails(['run-batch', '-i', input, '-o', output, '--resume']);
  t.regex(again.stderr, /1\/1 done, 1 failed \(4 answered before\)/);
  t.is(again.stderr.match(/1\/1 done/g)!.length, 1, 'the last progress line once');
  // one line per custom_id, as OpenAI's output: the failed request's old line made way for its new one
  const resumed = readOutput(output);
  t.deepEqual(resumed.map((l) => l.custom_id).sort(), ['bad', 'c0', 'c1', 'c2', 'chat']);
  t.deepEqual(resumed.filter((l) => l.custom_id !== 'bad'), lines.filter((l) => l.custom_id !== 'bad'), 'the answered lines are kept as they were');
  // a crash that cut the last line: that request runs again, and its fragment goes
  const ordered = [...resumed.filter((l) => l.custom_id === 'bad'), ...resumed.filter((l) => l.custom_id !== 'bad')];
  writeFileSync(output, ordered.map((l) => JSON.stringify(l)).join('\n').slice(0, -20));
  const cut = await fails(['run-batch', '-i', input, '-o', output, '--resume']);
  t.regex(cut.stderr, /2\/2 done, 1 failed \(3 answered before\)/);
  t.is(readOutput(output).length, 5);
  // a last answered line without its newline (an editor's save): the next answer starts a line of its own
  writeFileSync(output, readOutput(output).filter((l) => l.custom_id !== 'bad').map((l) => JSON.stringify(l)).join('\n'));
  await fails(['run-batch', '-i', input, '-o', output, '--resume']);
  t.deepEqual(readOutput(output).map((l) => l.custom_id).sort(), ['bad', 'c0', 'c1', 'c2', 'chat']);
});

test('run-batch - a malformed file is refused before anything runs, naming its lines; an existing output needs --resume; a missing output folder is named', async (t) => {
  const input = write('bad.jsonl', [
    '{not json',
    { custom_id: 'a', method: 'GET', url: '/v1/completions', body: {} },
    { custom_id: 'b', method: 'POST', url: '/v1/embeddings', body: {} },
    { custom_id: 'c', method: 'POST', url: '/v1/completions', body: { prompt: 'x', stream: true } },
    { custom_id: 'd', method: 'POST', url: '/v1/completions', body: { prompt: 'x' } },
    { custom_id: 'd', method: 'POST', url: '/v1/completions', body: { prompt: 'y' } },
  ]);
  const r = await fails(['run-batch', '-i', input, '-o', join(dir, 'never.jsonl')]);
  t.is(r.code, 2);
  for (const m of [/line 1: not JSON/, /line 2: method/, /line 3: url/, /line 4: body: a batch request cannot stream/, /line 6: custom_id "d" is used twice/]) t.regex(r.stderr, m);
  const ok = write('ok.jsonl', [{ custom_id: 'a', method: 'POST', url: '/v1/completions', body: { prompt: 'x', max_tokens: 1 } }]);
  const exists = write('exists.jsonl', []);
  t.regex((await fails(['run-batch', '-i', ok, '-o', exists])).stderr, /exists: give --resume/);
  const nowhere = await fails(['run-batch', '-i', ok, '-o', join(dir, 'no-such-folder', 'out.jsonl')]);
  t.is(nowhere.code, 2, 'a missing output folder is a usage error, found before the models load');
  t.regex(nowhere.stderr, /no-such-folder does not exist \(create it first\)/);
});
