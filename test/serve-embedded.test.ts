import { createServer, type AddressInfo } from 'node:net';
import test from 'ava';
import OpenAI from 'openai';
import { startEmbeddedGatewayRole, type Role } from '../src/cluster/roles.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { fails } from './helpers/cli.ts';
import { family, MODELS_DIR } from './helpers/family.ts';

/**
 * `cascade serve --embedded`: the OpenAI gateway over the engine in one process (no NATS, Redis or
 * other processes), driven with the official openai client; the oracle is target-only decoding.
 */
let gateway: Role & { url: string };
let client: OpenAI;
const oracle = new FamilySessions(family, {});
const tokenizer = TextTokenizer.forModel({ dir: `${MODELS_DIR}/${family.target}`, tokenizerPath: `${MODELS_DIR}/tokenizer.json` });
const PROMPT = 'def read_config(path):\n    """Read the configuration file."""\n    ';
const K = { mode: 'csd', k_matrix: [[2, 4, 8], [0, 2, 6], [0, 0, 4]] };

test.before(async () => {
  gateway = await startEmbeddedGatewayRole({ models: MODELS_DIR, port: 0 });
  client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
});
test.after.always(async () => {
  await gateway?.stop();
  await oracle.close();
});

const targetOnly = async (promptIds: number[], maxTokens: number) => {
  const r = await generateAutoregressive(await oracle.get(family.target), { promptIds, maxTokens, sampling: GREEDY, seed: 0, logprobs: 1 });
  return { text: tokenizer.decode(r.tokenIds), logprobs: r.logprobs! };
};

test.serial('serve --embedded - completions and chat, streamed and not, give target-only decoding\'s greedy text and log probabilities', async (t) => {
  const want = await targetOnly(tokenizer.encodePrompt(PROMPT), 24);
  const r = (await client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 24, temperature: 0, logprobs: 1, cascade: K } as never)) as unknown as OpenAI.Completions.Completion;
  t.is(r.choices[0]!.text, want.text);
  t.true(r.choices[0]!.logprobs!.token_logprobs!.every((v, i) => Math.abs(v - want.logprobs[i]!.logprob) <= 1e-4));
  t.true((r.usage as unknown as { cascade: { accepted_tokens: number } }).cascade.accepted_tokens > 0, 'drafts were accepted');
  const messages = [{ role: 'user' as const, content: 'Write a function that reads a file.' }];
  const chatWant = await targetOnly(tokenizer.encodeChat(messages), 16);
  let streamed = '';
  for await (const c of await client.chat.completions.create({ model: family.target, messages, max_tokens: 16, temperature: 0, stream: true })) streamed += c.choices[0]?.delta.content ?? '';
  t.is(streamed, chatWant.text);
});

test.serial('serve --embedded - n choices with a seed are the n = 1 requests seeded seed + i; stop strings cut the text; bad input is a 400, an unknown route a 404 in OpenAI\'s shape', async (t) => {
  const body = { model: family.target, prompt: PROMPT, max_tokens: 8, temperature: 0.9, seed: 11, cascade: K };
  const one = (await client.completions.create({ ...body, seed: 12 } as never)) as unknown as OpenAI.Completions.Completion;
  const two = (await client.completions.create({ ...body, n: 2 } as never)) as unknown as OpenAI.Completions.Completion;
  t.is(two.choices[1]!.text, one.choices[0]!.text);
  const full = (await targetOnly(tokenizer.encodePrompt(PROMPT), 24)).text;
  const stop = full.slice(10, 13);
  const cut = (await client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 24, temperature: 0, stop: [stop], cascade: K } as never)) as unknown as OpenAI.Completions.Completion;
  t.is(cut.choices[0]!.text, full.slice(0, full.indexOf(stop)));
  t.is(cut.choices[0]!.finish_reason, 'stop');
  const bad = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', cascade: { drafters: ['nope'] } }) });
  t.is(bad.status, 400);
  // drafters as a careless client lists them: each 400 names its own problem
  const post = async (cascade: object) => {
    const r = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', max_tokens: 2, temperature: 0, cascade }) });
    return { status: r.status, error: ((await r.json()) as { error?: { message: string; param: string } }).error };
  };
  const refusals: [object, RegExp, string][] = [
    [{ drafters: ['mag', family.eagle] }, /a feature drafter \(EAGLE\) can only be the first drafter/, 'cascade.drafters'],
    [{ drafters: [family.drafters[1], family.drafters[1]] }, new RegExp(`drafter "${family.drafters[1]}" is named twice`), 'cascade.drafters'],
    [{ drafters: [] }, /the drafters list is empty: for target-only decoding use mode ar/, 'cascade.drafters'],
    [{ mode: 'ar', drafters: ['mag'] }, /mode ar is target-only decoding, with no drafters: leave out the drafters \(mag\)/, 'cascade.drafters'],
  ];
  for (const [cascade, reason, param] of refusals) {
    const r = await post(cascade);
    t.is(r.status, 400, JSON.stringify(cascade));
    t.regex(r.error?.message ?? '', reason);
    t.is(r.error?.param, param);
  }
  t.is((await post({ mode: 'ar', drafters: [] })).status, 200, 'an empty list with mode ar is that mode\'s own cascade');
  // OpenAI's own mistakes get messages that say what to send, and name the param
  const badBodies: [string, unknown, RegExp, string | null][] = [
    ['completions', { max_tokens: 2 }, /prompt is required/, 'prompt'],
    ['completions', { prompt: ['a', 'b'] }, /one prompt per request/, 'prompt'],
    ['completions', { prompt: 'x', tool: [] }, /^invalid request: unrecognized parameter 'tool'$/, 'tool'],
    // OpenAI parameters this server does not implement are named as such, not as unknown
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f' } }] }, /^invalid request: function calling is not supported by this server/, 'tools'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_object' } }, /^invalid request: structured output is not supported/, 'response_format'],
    ['completions', { prompt: 'x', suffix: 'y' }, /^invalid request: suffix \(insertion\) is not supported/, 'suffix'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], store: true }, /^invalid request: stored completions are not supported/, 'store'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], service_tier: 'flex' }, /one service tier/, 'service_tier'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], reasoning_effort: 'low' }, /no reasoning mode/, 'reasoning_effort'],
    ['completions', 'def f():', /^invalid request: the request body must be a JSON object, sent with content-type: application\/json$/, null],
    ['completions', { prompt: 'x', logit_bias: { '13': 100, '013': -100 } }, /without leading zeros/, 'logit_bias.013'],
    ['chat/completions', { prompt: 'x' }, /messages is required \(a chat request; \/v1\/completions takes a prompt\)/, 'messages'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 100000 }, /plus max_completion_tokens \(100000\) exceeds the model's context/, 'max_completion_tokens'],
    ['chat/completions', { messages: [{ role: 'user', content: [{ type: 'text' }] }] }, /a text content part needs its text/, 'messages[0].content[0].text'],
    ['chat/completions', { messages: [{ role: 'user' }] }, /^invalid request: missing required parameter 'messages\[0\]\.content'$/, 'messages[0].content'],
    // OpenAI's own param form and what to send instead
    ['chat/completions', { messages: [{ role: 'user', content: 5 }] }, /^invalid request: 'messages\[0\]\.content': expected a string or an array of text parts/, 'messages[0].content'],
    // stream_options only with stream: true (vLLM; OpenAI), and no unknown key in it
    ['completions', { prompt: 'x', stream_options: { include_usage: true } }, /stream_options is only allowed with stream: true/, 'stream_options'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], stream: true, stream_options: { include_usage: true, foo: 1 } }, /unrecognized parameter 'stream_options\.foo'/, 'stream_options.foo'],
    ['chat/completions', [{ role: 'user', content: 'x' }], /^invalid request: the request body must be an object, received array$/, null],
    ['chat/completions', { messages: 'hi' }, /^invalid request: invalid 'messages': expected array, received string$/, 'messages'],
    ['chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 0, temperature: 3 }, /^invalid request: invalid 'max_tokens': too small: expected number to be >=1; invalid 'temperature': too big: expected number to be <=2$/, 'max_tokens'],
  ];
  // ... and sent with values that change nothing, they are taken
  const noOp = await fetch(`${gateway.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 2, tools: [], tool_choice: 'none', parallel_tool_calls: false, response_format: { type: 'text' }, modalities: ['text'], store: false, metadata: { team: 'a' }, service_tier: 'auto' }) });
  t.is(noOp.status, 200, await noOp.clone().text());
  for (const [path, body, reason, param] of badBodies) {
    const r = await fetch(`${gateway.url}/v1/${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const { error } = (await r.json()) as { error: { message: string; param: string | null } };
    t.is(r.status, 400, JSON.stringify(body));
    t.regex(error.message, reason);
    t.is(error.param, param, JSON.stringify(body));
  }
  // bodies nested past any field of the API: a 400, not the validators' stack overflow as a 500
  for (const body of [`{"prompt":${'['.repeat(5000)}${']'.repeat(5000)},"max_tokens":2}`, '['.repeat(100_000) + ']'.repeat(100_000)]) {
    const deep = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    t.is(deep.status, 400);
    t.regex(((await deep.json()) as { error: { message: string } }).error.message, /nests/);
  }
  // a seed past 53 bits: one message, not zod's own beside it
  const seed = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', max_tokens: 2, seed: 2 ** 60 }) });
  t.is(seed.status, 400);
  t.is(((await seed.json()) as { error: { message: string } }).error.message, 'invalid request: seed must be an integer of at most 53 bits');
  // models.retrieve: the served model as /v1/models lists it, another a 404
  t.deepEqual(await client.models.retrieve(family.target), (await client.models.list()).data[0]);
  t.true((await client.models.retrieve('gpt-4o').catch((e: unknown) => e)) instanceof OpenAI.NotFoundError);
  // an unknown route: OpenAI's error body, which the openai client reads as a NotFoundError
  const missing = await client.embeddings.create({ model: family.target, input: 'x' }).catch((e: unknown) => e);
  t.true(missing instanceof OpenAI.NotFoundError, String(missing));
  t.deepEqual((missing as InstanceType<typeof OpenAI.NotFoundError>).error, { message: 'Invalid URL (POST /v1/embeddings)', type: 'invalid_request_error', param: null, code: 404 });
  const health = (await (await fetch(`${gateway.url}/health`)).json()) as { engine: string; inFlight: number; kvLocation: string; batchInvariant: boolean };
  t.is(health.engine, 'embedded');
  t.is(health.inFlight, 0);
  // the target's, as a verify actor reports them: the family's unfused float target
  t.is(health.kvLocation, 'host');
  t.is(health.batchInvariant, false);
  // refusals are counted by route and status (cascade_requests_total counts only generation)
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  t.regex(metrics, /cascade_http_requests_total\{method="POST",route="\/v1\/completions",status="400"\} [1-9]/);
  t.regex(metrics, /cascade_http_requests_total\{method="POST",route="unmatched",status="404"\} 1/);
  t.regex(metrics, /cascade_http_requests_total\{method="POST",route="\/v1\/completions",status="200"\} [1-9]/);
});

test.serial('serve --embedded - a stream that runs past --request-timeout-ms ends with OpenAI\'s whole error body (code 504) before [DONE]', async (t) => {
  const short = await startEmbeddedGatewayRole({ models: MODELS_DIR, port: 0, requestTimeoutMs: 300 });
  try {
    const res = await fetch(`${short.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT, max_tokens: 2000, temperature: 0, stream: true, cascade: { mode: 'ar' } }) });
    t.is(res.status, 200);
    const events = (await res.text()).split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
    t.is(events.at(-1), '[DONE]');
    t.deepEqual(JSON.parse(events.at(-2)!), { error: { message: 'the request did not finish within 300 ms', type: 'server_error', param: null, code: 504 } });
  } finally {
    await short.stop();
  }
});

test.serial('serve --embedded - a client that goes away mid-stream cancels its request', async (t) => {
  const controller = new AbortController();
  const stream = await client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 400, temperature: 0, stream: true }, { signal: controller.signal });
  let finish: string | null | undefined;
  try {
    for await (const c of stream) {
      finish ??= c.choices[0]?.finish_reason;
      if (c.choices[0]?.text) controller.abort();
    }
  } catch {
    // the abort
  }
  t.falsy(finish, 'left before the request finished');
  for (let i = 0; i < 50; i++) {
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    if (/cascade_requests_total\{status="cancelled"\} 1/.test(metrics)) return t.pass();
    await new Promise((r) => setTimeout(r, 100));
  }
  t.fail('the request was not cancelled within 5 s of its client leaving');
});

test.serial('serve --embedded - the family\'s feature drafter (EAGLE) as a request\'s first drafter: greedy and seeded sampled (invariant) text equals target-only decoding\'s', async (t) => {
  const promptIds = tokenizer.encodePrompt(PROMPT);
  const want = await targetOnly(promptIds, 32);
  const ask = (body: object) => client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 32, ...body } as never) as unknown as Promise<OpenAI.Completions.Completion & { usage: { cascade: { accepted_tokens: number } } }>;
  // a fixed K: the adaptive schedule's choice follows measured pass times, so it may leave the drafters out on a loaded machine
  const greedy = await ask({ temperature: 0, cascade: { drafters: [family.eagle, 'mag'], k_matrix: [[3, 5], [0, 0]] } });
  t.is(greedy.choices[0]!.text, want.text);
  t.true(greedy.usage.cascade.accepted_tokens > 0);
  const first = await ask({ temperature: 0, cascade: { drafters: [family.eagle, 'mag'], k_matrix: [[3, 5], [0, 0]], mag_first: 2 } });
  t.is(first.choices[0]!.text, want.text, 'MaG first');
  t.true((first.usage.cascade as { mag_first_rounds?: number }).mag_first_rounds! > 0, 'MaG drafted rounds alone');
  const sampling = { temperature: 0.8, topK: 0, topP: 1 };
  const oracleText = tokenizer.decode((await generateAutoregressive(await oracle.get(family.target), { promptIds, maxTokens: 32, sampling, seed: 9, verification: 'invariant' })).tokenIds);
  const sampled = await ask({ temperature: 0.8, seed: 9, cascade: { drafters: [family.eagle], verification: 'invariant' } });
  t.is(sampled.choices[0]!.text, oracleText);
});

test.serial('serve --embedded - async drafting with and without outcome branches (cascade.outcome_branches) gives target-only decoding\'s text; usage counts the branches adopted and MaG\'s drafts the drafter reviewed', async (t) => {
  const want = await targetOnly(tokenizer.encodePrompt(PROMPT), 32);
  type Usage = { cascade: { outcome_hits?: number; outcome_drafts?: number; drafter_paused_passes?: number; pipelined_drafts?: number; pipelined_accepted?: number } };
  for (const outcome_branches of [undefined, true]) {
    const cascade = { drafters: [family.drafters[0], 'mag'], drafting: 'async', ...(outcome_branches === undefined ? {} : { outcome_branches }) };
    const r = (await client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 32, temperature: 0, cascade } as never)) as unknown as OpenAI.Completions.Completion & { usage: Usage };
    t.is(r.choices[0]!.text, want.text, JSON.stringify(cascade));
    t.is(typeof r.usage.cascade.outcome_hits, 'number');
    if (outcome_branches === undefined) t.deepEqual([r.usage.cascade.outcome_drafts, r.usage.cascade.outcome_hits], [0, 0], 'none without branches (the default)');
    else t.is(typeof r.usage.cascade.outcome_drafts, 'number');
    t.true(r.usage.cascade.pipelined_accepted! <= r.usage.cascade.pipelined_drafts!, 'MaG\'s drafts the drafter accepted are among those it reviewed');
  }
  // the second drafter as a level below the first (cascade.level_below)
  const below = (await client.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 32, temperature: 0, cascade: { drafters: [...family.drafters, 'mag'], drafting: 'async', level_below: true } } as never)) as unknown as OpenAI.Completions.Completion & { usage: { cascade: { below_drafts: number; below_accepted: number; pipelined_drafts: number } } };
  t.is(below.choices[0]!.text, want.text, 'level_below');
  t.true(below.usage.cascade.below_accepted <= below.usage.cascade.below_drafts && below.usage.cascade.below_drafts <= below.usage.cascade.pipelined_drafts);
  const belowSerial = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: family.target, prompt: 'x', cascade: { level_below: true } }) });
  t.is(belowSerial.status, 400);
  t.is(((await belowSerial.json()) as { error: { param: string } }).error.param, 'cascade.level_below');
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  for (const name of ['cascade_drafter_paused_passes_total', 'cascade_outcome_branch_drafts_total', 'cascade_outcome_branch_hits_total', 'cascade_pipelined_drafts_total{result="reviewed"}']) t.regex(metrics, new RegExp(`^${name.replace(/[{}]/g, '\\$&')} \\d`, 'm'), `Prometheus has ${name}`);
  const bad = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: family.target, prompt: 'x', cascade: { outcome_branches: 'no' } }) });
  t.is(bad.status, 400);
  t.regex(((await bad.json()) as { error: { message: string } }).error.message, /outcome_branches/);
  const serial = await fetch(`${gateway.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: family.target, prompt: 'x', cascade: { outcome_branches: true } }) });
  t.is(serial.status, 400);
  t.deepEqual(((await serial.json()) as { error: { param: string } }).error.param, 'cascade.outcome_branches', 'branches under serial rounds are a 400');
  // a server started with --drafting async --outcome-branches: its default for requests that do not say; a serial request is still served
  const own = await startEmbeddedGatewayRole({ models: MODELS_DIR, port: 0, drafting: 'async', outcomeBranches: true });
  try {
    const ownClient = new OpenAI({ baseURL: `${own.url}/v1`, apiKey: 'none', maxRetries: 0 });
    for (const cascade of [undefined, { drafting: 'serial' }]) {
      const r = (await ownClient.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 32, temperature: 0, ...(cascade ? { cascade } : {}) } as never)) as unknown as OpenAI.Completions.Completion & { usage: Usage };
      t.is(r.choices[0]!.text, want.text, JSON.stringify(cascade));
      t.is(typeof r.usage.cascade.outcome_hits, cascade ? 'undefined' : 'number', 'async requests report branches adopted');
    }
    // a fixed K is a 400 under async drafting (K is not used there), and a client that did not ask for async learns it is the server's default
    const fixedK = await ownClient.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 4, cascade: { drafters: [family.drafters[0], 'mag'], k_matrix: [[2, 4], [0, 2]] } } as never).catch((err: unknown) => err);
    t.true(fixedK instanceof OpenAI.BadRequestError);
    t.is((fixedK as InstanceType<typeof OpenAI.BadRequestError>).param, 'cascade.k_matrix');
    t.regex((fixedK as Error).message, /takes no K matrix.*this server drafts async unless a request asks otherwise: send cascade.drafting "serial"/);
    const r = await ownClient.completions.create({ model: family.target, prompt: PROMPT, max_tokens: 4, temperature: 0, cascade: { drafters: [family.drafters[0], 'mag'], k_matrix: [[2, 4], [0, 2]], drafting: 'serial' } } as never);
    t.is(r.choices[0]!.text, want.text.slice(0, r.choices[0]!.text.length), 'and with drafting serial the same K is served');
  } finally {
    await own.stop();
  }
});

test('serve --embedded - refuses a port past 65535 and a blank --api-key, and takes no --nats or --redis, and a cluster gateway takes no --execution-providers, --batch-invariant or --self-draft-cache (its --self-draft: test/self-draft-cluster.test.ts)', async (t) => {
  const a = await fails(['serve', '--embedded', '--nats', 'nats://127.0.0.1:4222', '--port', '0', '--outcome-branches']);
  t.regex(a.stderr, /--nats and --redis are for a cluster/);
  t.regex(a.stderr, /note: --outcome-branches applies to requests that ask for async drafting \(cascade.drafting "async"\); the default here is --drafting serial/);
  const [b, c, d] = await Promise.all([fails(['serve', '--execution-providers', 'cpu', '--port', '0']), fails(['serve', '--self-draft', 'int4', '--self-draft-cache', '/tmp/x', '--port', '0']), fails(['serve', '--batch-invariant', 'on', '--port', '0'])]);
  t.regex(b.stderr, /--threads, --execution-providers, --kv-location and --batch-invariant are for --embedded/);
  t.regex(c.stderr, /--self-draft-cache is for --embedded: a cluster's gateway only names the --self-draft copy/);
  t.regex(d.stderr, /--threads, --execution-providers, --kv-location and --batch-invariant are for --embedded/);
  // a port out of range is refused before the models load, not by the socket after
  const e = await fails(['serve', '--embedded', '--port', '99999']);
  t.is(e.code, 2);
  t.regex(e.stderr, /--port must be an integer from 0 to 65535, got "99999"/);
  // a port something listens on is refused before the models load, not by the socket after them
  const taken = createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  try {
    const port = (taken.address() as AddressInfo).port;
    const busy = await fails(['serve', '--embedded', '--port', String(port)]);
    t.is(busy.code, 2);
    t.regex(busy.stderr, new RegExp(`--port ${port} cannot be used on 127\\.0\\.0\\.1 \\(another process listens there\\): choose another`));
  } finally {
    taken.close();
  }
  // a blank key (an unset $KEY) is refused, not taken as no authentication
  const [blank, blankEnv, blankUp] = await Promise.all([
    fails(['serve', '--embedded', '--port', '0', '--api-key', '']),
    fails(['serve', '--embedded', '--port', '0'], { env: { ...process.env, CASCADE_API_KEYS: ' , ' } }),
    fails(['cluster', 'up', '--api-key', ' ']),
  ]);
  t.regex(blank.stderr, /--api-key names no key \(got ""\)/);
  t.regex(blankEnv.stderr, /CASCADE_API_KEYS names no key/);
  t.regex(blankUp.stderr, /--api-key must be one non-blank key/);
  for (const r of [blank, blankEnv, blankUp]) t.is(r.code, 2);
});
