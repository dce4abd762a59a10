import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { generateCascade } from '../src/engine/cascade.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { InvalidArgumentError, ModelLoadError } from '../src/errors.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { API_SAMPLING } from '../src/cluster/gateway/index.ts';
import { ChatTemplate, type ChatMessage } from '../src/models/chat-template.ts';
import { loadModelSpec } from '../src/models/config.ts';
import { resolveSampling } from '../src/models/generation-config.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { cascade, fails } from './helpers/cli.ts';
import { dirOf, family, members, MODELS_DIR } from './helpers/family.ts';

/**
 * A user's model directory's own conventions: chat templates rendered as transformers.js renders them,
 * tokenizer_config.json's add_bos_token and special tokens, generation_config.json's EOS ids and
 * sampling defaults. Templates are the public ones of their model families, written out here.
 */

/** Qwen2-Instruct's ChatML template (a default system message when the chat has none). */
const CHATML =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** Meta-Llama-3-8B-Instruct's template: BOS from the template, each message trimmed. */
const LLAMA3 =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}" +
  '{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}' +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/** Mistral-7B-Instruct-v0.1's template: refuses roles out of order with raise_exception. */
const MISTRAL =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}" +
  "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const CHAT: ChatMessage[] = [
  { role: 'system', content: 'You answer in one line.' },
  { role: 'user', content: 'What is 2+2?' },
  { role: 'assistant', content: '4' },
  { role: 'user', content: 'And {{ 3+3 }} % {% raw %}?' },
];

/** The bundled family's chat format before it became a template (gateway.ts chatPrompt): the reference. */
const rolePrompt = (messages: readonly ChatMessage[]): string => messages.map((m) => `${m.role}: ${m.content}\n\n`).join('') + 'assistant:';

const dirs: string[] = [];
test.after.always(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A directory holding the bundled tokenizer.json and the given tokenizer_config.json (and other files). */
function tokenizerDir(files: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-chat-'));
  dirs.push(dir);
  copyFileSync(join(MODELS_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  for (const [name, body] of Object.entries(files)) writeFileSync(join(dir, name), typeof body === 'string' ? body : JSON.stringify(body));
  return dir;
}
const tokenizerOf = (dir: string) => TextTokenizer.load(join(dir, 'tokenizer.json'));

test('chat template - a ChatML (Qwen) template renders as built by hand, default system message included', (t) => {
  const tpl = new ChatTemplate(CHATML, { eos_token: '<|im_end|>' });
  t.is(
    tpl.render(CHAT),
    '<|im_start|>system\nYou answer in one line.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n' +
      '<|im_start|>user\nAnd {{ 3+3 }} % {% raw %}?<|im_end|>\n<|im_start|>assistant\n',
  );
  t.is(
    tpl.render([{ role: 'user', content: 'hi' }]),
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n',
  );
  t.is(tpl.render([{ role: 'user', content: 'hi' }], { addGenerationPrompt: false }), '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n');
});

test('chat template - a Llama-3 template renders its BOS once, from bos_token, and trims each message', (t) => {
  const tpl = new ChatTemplate(LLAMA3, { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' });
  t.is(
    tpl.render([
      { role: 'system', content: '  Be brief.\n' },
      { role: 'user', content: 'Hello' },
    ]),
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\n',
  );
});

test("chat template - raise_exception refuses the messages with the template's own message (an InvalidArgumentError)", (t) => {
  const tpl = new ChatTemplate(MISTRAL, { bos_token: '<s>', eos_token: '</s>' });
  t.is(tpl.render([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }, { role: 'user', content: 'Bye' }]), '<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]');
  t.throws(() => tpl.render([{ role: 'assistant', content: 'Hi' }]), { instanceOf: InvalidArgumentError, message: /Conversation roles must alternate/ });
  t.throws(() => tpl.render([{ role: 'system', content: 'x' }]), { instanceOf: InvalidArgumentError, message: /Conversation roles must alternate/ });
});

test("chat template - the bundled family's template renders byte for byte the role: text paragraphs the gateway sent before", (t) => {
  const chats: ChatMessage[][] = [
    CHAT,
    [{ role: 'user', content: 'def f(x):\n    return x  \n\n' }],
    [{ role: 'user', content: '' }],
    [{ role: 'system', content: ' {%- x -%} \t' }, { role: 'user', content: 'naïve café ✓ 𝄞' }],
  ];
  for (const name of members) {
    const tok = TextTokenizer.forModel(loadModelSpec(dirOf(name)));
    t.truthy(tok.chatTemplate, `${name} ships a chat template`);
    t.false(tok.addBos, `${name}: no BOS is added to prompts, as before`);
    for (const chat of chats) {
      t.is(tok.renderChat(chat), rolePrompt(chat), name);
      t.deepEqual(tok.encodeChat(chat), tok.encode(rolePrompt(chat)), name);
    }
  }
});

test('tokenizer config - add_bos_token starts a plain prompt with the BOS exactly once; without it nothing is added', (t) => {
  const withBos = tokenizerOf(tokenizerDir({ 'tokenizer_config.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', add_bos_token: true } }));
  const plain = withBos.encode('def main():');
  t.is(withBos.bosId, 0);
  t.deepEqual(withBos.encodePrompt('def main():'), [0, ...plain]);
  t.deepEqual(withBos.encodePrompt('<|endoftext|>def main():'), [0, ...plain], 'a prompt that already starts with the BOS keeps one');
  const without = tokenizerOf(tokenizerDir({ 'tokenizer_config.json': { bos_token: '<|endoftext|>', add_bos_token: false } }));
  t.deepEqual(without.encodePrompt('def main():'), plain);
  t.deepEqual(tokenizerOf(tokenizerDir({})).encodePrompt('def main():'), plain, 'no tokenizer_config.json: no BOS');
});

test('tokenizer config - a chat template that writes the BOS is tokenised without a second one; one that does not gets none', (t) => {
  const config = { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', add_bos_token: true };
  const llama = tokenizerOf(tokenizerDir({ 'tokenizer_config.json': { ...config, chat_template: LLAMA3 } }));
  const ids = llama.encodeChat([{ role: 'user', content: 'Hello' }]);
  t.is(ids[0], 0);
  t.not(ids[1], 0);
  t.is(ids.filter((id) => id === 0).length, 1);
  const chatml = tokenizerOf(tokenizerDir({ 'tokenizer_config.json': { ...config, chat_template: CHATML } }));
  t.false(chatml.encodeChat([{ role: 'user', content: 'Hello' }]).includes(0), 'transformers adds no special tokens after a template');
});

test('tokenizer config - chat_template.jinja wins over the config, a named "default" template is used, none means chats are refused', (t) => {
  const fromFile = tokenizerOf(tokenizerDir({ 'tokenizer_config.json': { chat_template: CHATML }, 'chat_template.jinja': LLAMA3 }));
  t.is(fromFile.chatTemplate?.source, LLAMA3);
  const named = tokenizerOf(tokenizerDir({ 'tokenizer_config.json': { chat_template: [{ name: 'rag', template: LLAMA3 }, { name: 'default', template: CHATML }] } }));
  t.is(named.chatTemplate?.source, CHATML);
  t.throws(() => tokenizerOf(tokenizerDir({})).encodeChat([{ role: 'user', content: 'hi' }]), { instanceOf: InvalidArgumentError, message: /has no chat template/ });
});

test('tokenizer config - a malformed tokenizer_config.json is a ModelLoadError naming the file and the field', (t) => {
  const cases: [unknown, RegExp][] = [
    ['{ not json', /tokenizer_config\.json is not valid JSON/],
    [{ add_bos_token: 'yes' }, /tokenizer_config\.json is malformed: field add_bos_token/],
    [{ chat_template: 42 }, /tokenizer_config\.json is malformed: field chat_template/],
    [{ chat_template: '{% for m in messages %}{{ m.content }}' }, /tokenizer_config\.json field chat_template is not a valid Jinja template/],
    [{ add_bos_token: true }, /tokenizer_config\.json field add_bos_token is true but the file names no bos_token/],
    [{ bos_token: '<s>' }, /tokenizer_config\.json field bos_token: "<s>" is not a token/],
  ];
  for (const [body, message] of cases) t.throws(() => tokenizerOf(tokenizerDir({ 'tokenizer_config.json': body })), { instanceOf: ModelLoadError, message });
});

// generation_config.json, on the Llama export of test/fixtures/hf (config.json: eos 0; generation_config.json: [0, 2]).

const FIXTURE = new URL('./fixtures/hf/llama-gqa', import.meta.url).pathname;
const reference: { prompt_ids: number[]; greedy_ids: number[] } = JSON.parse(readFileSync(join(FIXTURE, 'reference.json'), 'utf8'));

/** The fixture's model beside the bundled tokenizer, with `generation` as its generation_config.json (none when undefined). */
function exportDir(generation: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-genconfig-'));
  dirs.push(dir);
  for (const f of ['model.onnx', 'config.json']) symlinkSync(join(FIXTURE, f), join(dir, f));
  copyFileSync(join(MODELS_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  if (generation !== undefined) writeFileSync(join(dir, 'generation_config.json'), typeof generation === 'string' ? generation : JSON.stringify(generation));
  return dir;
}

test("generation config - its eos_token_id replaces config.json's; without the file config.json's stands", (t) => {
  t.deepEqual(loadModelSpec(exportDir({ bos_token_id: 0, eos_token_id: [0, 2] })).eosIds, [0, 2]);
  t.deepEqual(loadModelSpec(exportDir({ eos_token_id: 7 })).eosIds, [7]);
  t.deepEqual(loadModelSpec(exportDir({ temperature: 0.6 })).eosIds, [0], 'a file without eos_token_id leaves config.json deciding');
  t.deepEqual(loadModelSpec(exportDir(undefined)).eosIds, [0]);
  // a config.json without eos_token_id (or null): no end-of-sequence id unless generation_config.json gives one
  const noEos = exportDir(undefined);
  const config = JSON.parse(readFileSync(join(FIXTURE, 'config.json'), 'utf8'));
  for (const eos of [undefined, null]) {
    rmSync(join(noEos, 'config.json'));
    writeFileSync(join(noEos, 'config.json'), JSON.stringify({ ...config, eos_token_id: eos }));
    t.deepEqual(loadModelSpec(noEos).eosIds, [], `eos_token_id ${eos}`);
  }
  t.is(loadModelSpec(exportDir({ bos_token_id: 5 })).bosId, 5);
  t.is(loadModelSpec(exportDir(undefined)).bosId, 0, "config.json's bos_token_id");
});

test('generation config - a malformed generation_config.json, or one whose eos_token_id is outside the vocabulary, is a ModelLoadError naming the file and the field', (t) => {
  const cases: [unknown, RegExp][] = [
    ['{"eos_token_id": [0, 2', /generation_config\.json is not valid JSON/],
    [{ eos_token_id: 'two' }, /generation_config\.json is malformed: field eos_token_id/],
    [{ eos_token_id: [] }, /generation_config\.json is malformed: field eos_token_id/],
    [{ top_p: 1.5 }, /generation_config\.json is malformed: field top_p/],
    [{ temperature: -1 }, /generation_config\.json is malformed: field temperature/],
    [{ do_sample: 'no' }, /generation_config\.json is malformed: field do_sample/],
    // ids the model cannot draw or be fed
    [{ eos_token_id: 99999 }, /generation_config\.json: eos_token_id 99999 is outside the vocabulary of \d+ tokens, so generation would never end on it/],
  ];
  for (const [body, message] of cases) t.throws(() => loadModelSpec(exportDir(body)), { instanceOf: ModelLoadError, message });
});

test("generation config - sampling defaults: the request's settings win, the model's fill the gaps, then the caller's; do_sample false is greedy", (t) => {
  const sampled = loadModelSpec(exportDir({ do_sample: true, temperature: 0.6, top_p: 0.9 })).generation;
  t.deepEqual(sampled, { temperature: 0.6, topP: 0.9 });
  t.deepEqual(resolveSampling({}, sampled, API_SAMPLING), { temperature: 0.6, topP: 0.9, topK: 0 });
  t.deepEqual(resolveSampling({ temperature: 0, topK: 5 }, sampled, API_SAMPLING), { temperature: 0, topP: 0.9, topK: 5 });
  const greedy = loadModelSpec(exportDir({ do_sample: false, temperature: 0.6, top_k: 20 })).generation;
  t.deepEqual(greedy, { temperature: 0, topK: 20 });
  t.deepEqual(resolveSampling({}, greedy, API_SAMPLING), { temperature: 0, topP: 1, topK: 20 });
  t.deepEqual(resolveSampling({ temperature: 0.8 }, greedy, API_SAMPLING), { temperature: 0.8, topP: 1, topK: 20 });
  // min_p and repetition_penalty (as vLLM reads them): the model's unless the request sets its own
  const processors = loadModelSpec(exportDir({ min_p: 0.05, repetition_penalty: 1.1 })).generation;
  t.deepEqual(processors, { minP: 0.05, repetitionPenalty: 1.1 });
  t.deepEqual(resolveSampling({}, processors, API_SAMPLING), { ...API_SAMPLING, minP: 0.05, repetitionPenalty: 1.1 });
  t.deepEqual(resolveSampling({ repetitionPenalty: 1 }, processors, API_SAMPLING), { ...API_SAMPLING, minP: 0.05, repetitionPenalty: 1 });
  t.throws(() => loadModelSpec(exportDir({ repetition_penalty: 0 })), { instanceOf: ModelLoadError, message: /field repetition_penalty/ });
  t.is(loadModelSpec(exportDir({ eos_token_id: [0, 2] })).generation, undefined, 'only EOS: no sampling opinion');
  t.is(loadModelSpec(dirOf(family.target)).generation, undefined, 'the bundled family ships no generation_config.json');
  t.deepEqual(resolveSampling({}, undefined, API_SAMPLING), API_SAMPLING);
});

test('generation config - generation stops at any of its EOS ids, target-only and under speculative decoding', async (t) => {
  const g = reference.greedy_ids;
  t.false(g.includes(0) || g.includes(2), "precondition: config.json's and the fixture's EOS ids never come up");
  for (const [eos, stopsAfter] of [[[0, g[5]!], 5], [[g[9]!, 0, g[14]!], 9]] as const) {
    const model = await OrtModelSession.open(exportDir({ bos_token_id: 0, eos_token_id: eos }));
    try {
      const req = { promptIds: reference.prompt_ids, maxTokens: g.length, sampling: GREEDY, seed: 0 };
      const ar = await generateAutoregressive(model, req);
      t.deepEqual(ar.tokenIds, g.slice(0, stopsAfter), `eos ${JSON.stringify(eos)}`);
      t.is(ar.finishReason, 'stop');
      const sd = await generateCascade(model, { drafters: [{ kind: 'model', session: model }], kMatrix: [[4]], lenience: 1 }, req);
      t.deepEqual(sd.tokenIds, g.slice(0, stopsAfter));
      t.is(sd.finishReason, 'stop');
    } finally {
      await model.close();
    }
  }
});

// cascade generate: chats and the model's sampling defaults, through the CLI (draft-l1 as a one-model family: fast).

function oneModelFamily(generation?: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-family-'));
  dirs.push(dir);
  mkdirSync(join(dir, 'm'));
  for (const f of ['model.onnx', 'config.json', 'tokenizer.json', 'tokenizer_config.json']) symlinkSync(join(dirOf('draft-l1'), f), join(dir, 'm', f));
  if (generation !== undefined) writeFileSync(join(dir, 'm', 'generation_config.json'), JSON.stringify(generation));
  writeFileSync(join(dir, 'family.json'), JSON.stringify({ target: 'm', drafters: [] }));
  return dir;
}
const generate = async (...args: string[]) => JSON.parse((await cascade('generate', '--json', '--mode', 'ar', '--max-tokens', '8', ...args)).stdout);

test("cli - generate --message / --chat-file render the model's chat template, as the gateway does, with the gateway's roles", async (t) => {
  const models = oneModelFamily();
  const chat: ChatMessage[] = [{ role: 'system', content: 'Answer in Python.' }, { role: 'user', content: 'a=b\nsum of a list' }];
  const file = join(models, 'chat.json');
  writeFileSync(file, JSON.stringify(chat));
  const want = await generate('--models', models, '--prompt', rolePrompt(chat));
  const byFlags = await generate('--models', models, '--message', `system=${chat[0]!.content}`, '--message', `user=${chat[1]!.content}`);
  const byFile = await generate('--models', models, '--chat-file', file);
  t.deepEqual(byFlags.tokenIds, want.tokenIds);
  t.deepEqual(byFile.tokenIds, want.tokenIds);
  t.is(byFlags.stats.promptTokens, want.stats.promptTokens);
  const bad = await fails(['generate', '--models', models, '--message', 'no-role-here']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--message must be ROLE=TEXT/);
  // the gateway's roles, no others; developer is rendered as system, as the gateway renders it
  const wizard = await fails(['generate', '--models', models, '--message', 'wizard=hi']);
  t.is(wizard.code, 2);
  t.regex(wizard.stderr, /--message role "wizard" is not one of system, developer, user, assistant, tool/);
  const developer = await generate('--models', models, '--message', `developer=${chat[0]!.content}`, '--message', `user=${chat[1]!.content}`);
  t.deepEqual(developer.tokenIds, want.tokenIds);
});

test("cli - generate samples with the model's generation_config.json defaults unless flags say otherwise", async (t) => {
  const prompt = ['--prompt', 'import os\n', '--seed', '7'];
  const greedy = await generate('--models', oneModelFamily(), ...prompt);
  const sampledFamily = oneModelFamily({ do_sample: true, temperature: 1.5, top_k: 50 });
  const byModel = await generate('--models', sampledFamily, ...prompt);
  const byFlags = await generate('--models', oneModelFamily(), ...prompt, '--temperature', '1.5', '--top-k', '50');
  t.deepEqual(byModel.tokenIds, byFlags.tokenIds, "the model's defaults are the flags' values");
  t.notDeepEqual(byModel.tokenIds, greedy.tokenIds, 'precondition: sampling at 1.5 leaves the greedy path');
  t.deepEqual((await generate('--models', sampledFamily, ...prompt, '--temperature', '0')).tokenIds, greedy.tokenIds, 'a flag wins over the model');
  t.deepEqual((await generate('--models', oneModelFamily({ do_sample: false, temperature: 1.5 }), ...prompt)).tokenIds, greedy.tokenIds, 'do_sample false is greedy');
});
