import test from 'ava';
import fc from 'fast-check';
import { MAX_WANT } from '../src/actors/model-actor.ts';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { decode, encode } from '../src/cluster/messages.ts';
import { NatsTransport } from '../src/cluster/nats-transport.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { subjects } from '../src/cluster/transport.ts';
import { MODES } from '../src/engine/presets.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';
import { family, MODELS_DIR } from './helpers/family.ts';

/**
 * The request's `cascade` options as a hostile or careless client sends them, against the cluster
 * with real parts (nats-server, redis-server, every actor and the coordinator its own process on the
 * bundled ONNX models, the gateway in this process): each request gets a 2xx or a clean 4xx JSON
 * error, and every process is still running afterwards.
 */
let nats: LocalServer;
let redis: LocalServer;
let gateway: Role & { url: string };
const roles = new Map<string, RoleProcess>();

test.before(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const actor = (kind: 'draft' | 'verify', model: string) => spawnRole(['actor', kind, '--model', model, '--models', MODELS_DIR, '--nats', nats.url, '--instance', `${model}-0`]);
  const started = await Promise.all([
    actor('verify', family.target),
    ...family.drafters.map((d) => actor('draft', d)),
    spawnRole(['coordinator', '--models', MODELS_DIR, '--nats', nats.url, '--redis', redis.url, '--call-timeout-ms', '5000']),
  ]);
  [family.target, ...family.drafters, 'coordinator'].forEach((name, i) => roles.set(name, started[i]!));
  gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0 });
});

test.after.always(async () => {
  await stopCluster({ gateways: [gateway], roles: roles.values(), servers: [nats, redis] });
});

const PROMPT = 'def parse_args(argv):\n    ';

/** Posts a body; resolves with the status and, for SSE, whether the stream ended cleanly. */
async function post(path: string, body: unknown): Promise<{ status: number; json?: { error?: { message?: string; param?: string | null } }; text: string }> {
  const res = await fetch(`${gateway.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    // SSE
  }
  return { status: res.status, json, text };
}

/** Every process of the cluster still runs. */
function alive(t: { is: (a: unknown, b: unknown, m: string) => void }): void {
  for (const [name, r] of roles) t.is(r.child.exitCode ?? r.child.signalCode, null, `${name} is still running:\n${r.output().slice(-2000)}`);
}

test('gateway - without a coordinator on its queue or a verify actor on its NATS, its ready line and /health warn (still 200: requests wait in the queue, as through a coordinator restart)', async (t) => {
  const [empty, bare] = await Promise.all([startRedis(), startNats()]);
  const lone = await startGatewayRole({ models: MODELS_DIR, nats: bare.url, redis: [empty.url], port: 0 });
  try {
    t.regex(lone.describe, /warning: no coordinator takes requests from the queue yet/);
    const health = await fetch(`${lone.url}/health`);
    t.is(health.status, 200);
    const body = (await health.json()) as { status: string; workers: number; actors: object; warning: string };
    t.like(body, { status: 'ok', workers: 0 });
    t.deepEqual(body.actors, {}, 'no actor heard');
    t.regex(body.warning, /no coordinator takes requests from the queue yet/);
    t.regex(body.warning, new RegExp(`no verify actor of ${family.target} has sent a heartbeat in the last 3 s`));
    t.is((await fetch(`${lone.url}/live`)).status, 200);
  } finally {
    await lone.stop();
    await Promise.all([empty.stop(), bare.stop()]);
  }
});

test.serial(`gateway - a K entry above ${MAX_WANT} is refused with 400 naming the limit`, async (t) => {
  const cases: [string[], number[][]][] = [
    [['mag'], [[MAX_WANT + 1]]],
    [[family.drafters[0]!, 'mag'], [[2, MAX_WANT + 1], [0, 3]]],
    [[...family.drafters.slice(0, 2), 'mag'], [[1, 2, 2 ** 31], [0, 1, 2], [0, 0, 1]]],
    [[], [[100]]], // no drafters given: the default mode's cascade, a matrix of the wrong shape, still named by the limit
  ];
  for (const [drafters, k_matrix] of cases) {
    const r = await post('/v1/completions', { prompt: PROMPT, max_tokens: 2, cascade: drafters.length ? { drafters, k_matrix } : { k_matrix } });
    t.is(r.status, 400, JSON.stringify(k_matrix));
    t.regex(r.json?.error?.message ?? '', new RegExp(`at most ${MAX_WANT}`));
    t.is(r.json?.error?.param, 'cascade.k_matrix');
  }
});

test.serial('gateway - a refused cascade names its field in param (k_matrix, mag_first, drafters)', async (t) => {
  const cases: [object, string, RegExp][] = [
    [{ drafters: ['mag'], k_matrix: [[2], [1]] }, 'cascade.k_matrix', /needs 1 row for 1 drafter, got 2/],
    [{ drafters: [family.drafters[0]!, 'mag'], k_matrix: [[4, 2], [0, 3]] }, 'cascade.k_matrix', /non-decreasing/],
    [{ drafters: ['mag'], mag_first: 3 }, 'cascade.mag_first', /MaG first needs MaG last below at least one other drafter/],
    [{ drafters: ['mag', family.drafters[0]!] }, 'cascade.drafters', /mag can only be the last drafter/],
  ];
  for (const [cascade, param, message] of cases) {
    const r = await post('/v1/completions', { prompt: PROMPT, max_tokens: 2, cascade });
    t.is(r.status, 400, JSON.stringify(cascade));
    t.is(r.json?.error?.param, param, JSON.stringify(cascade));
    t.regex(r.json?.error?.message ?? '', message);
  }
});

test.serial(`gateway - sampled requests with K entries of ${MAX_WANT} complete (the drafters' q rows pass the payload limit) and every actor survives`, async (t) => {
  for (const drafter of family.drafters) {
    for (const path of ['/v1/completions', '/v1/chat/completions']) {
      const input = path === '/v1/completions' ? { prompt: PROMPT } : { messages: [{ role: 'user', content: PROMPT }] };
      const r = await post(path, { ...input, max_tokens: 4, temperature: 1, cascade: { drafters: [drafter], k_matrix: [[MAX_WANT]] } });
      t.is(r.status, 200, `${drafter} ${path}: ${r.text.slice(0, 500)}`);
    }
  }
  alive(t);
});

/** A cascade option set: mostly well-formed (so the cluster runs it), some malformed. */
const drafterName = fc.constantFrom(...family.drafters, 'mag', 'no-such-model', '');
const kEntry = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 8 }) }, { weight: 2, arbitrary: fc.constantFrom(MAX_WANT - 1, MAX_WANT, MAX_WANT + 1) }, fc.constantFrom(-1, 1.5, 1000, 2 ** 31, 2 ** 53));
/** An n×n cumulative upper-triangular K whose entries reach up to `top`. */
const wellFormedK = (n: number) =>
  fc.array(fc.array(fc.integer({ min: 0, max: MAX_WANT }), { minLength: n, maxLength: n }), { minLength: n, maxLength: n }).map((rows) =>
    rows.map((row, r) => {
      const sorted = row.slice(r).sort((a, b) => a - b);
      const out = [...new Array<number>(r).fill(0), ...sorted];
      if (r === 0) out[n - 1] = Math.max(1, out[n - 1]!);
      return out;
    }),
  );
const wellFormed = fc
  .constantFrom([family.drafters[0]!], [family.drafters[1] ?? 'mag'], ['mag'], [...family.drafters, 'mag'], [family.drafters[0]!, 'mag'])
  .chain((drafters) => fc.record({ drafters: fc.constant(drafters), k_matrix: wellFormedK(drafters.length), lenience: fc.constantFrom(1, 1.5, 4) }));
const anyCascade = fc.record(
  {
    mode: fc.oneof(fc.constantFrom(...MODES), fc.constant('turbo')),
    drafters: fc.array(drafterName, { maxLength: 4 }),
    k_matrix: fc.oneof(fc.constant('auto'), fc.array(fc.array(kEntry, { maxLength: 4 }), { maxLength: 4 }), fc.constant([]), fc.constant('fixed')),
    lenience: fc.oneof(fc.constantFrom(1, 0.5, 0, -1, 1e308), fc.double({ min: 1, max: 100, noNaN: true })),
    extra: fc.constant(true),
  },
  { requiredKeys: [] },
);
const request = fc.record({
  chat: fc.boolean(),
  stream: fc.boolean(),
  temperature: fc.constantFrom(0, 0.7, 1),
  max_tokens: fc.integer({ min: 1, max: 6 }),
  cascade: fc.oneof({ weight: 3, arbitrary: wellFormed }, { weight: 2, arbitrary: anyCascade }, fc.constantFrom(null, 'csd', [], {})),
});

test.serial('gateway - 120 requests with random cascade options (mode, drafters, K shapes and sizes, lenience) get a 2xx or a clean 4xx; actors and coordinator survive', async (t) => {
  const statuses = new Map<number, number>();
  for (const r of fc.sample(request, { numRuns: 120, seed: 20 })) {
    const body = { ...(r.chat ? { messages: [{ role: 'user', content: PROMPT }] } : { prompt: PROMPT }), max_tokens: r.max_tokens, temperature: r.temperature, stream: r.stream, cascade: r.cascade };
    const res = await post(r.chat ? '/v1/chat/completions' : '/v1/completions', body);
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    const what = `${res.status} for ${JSON.stringify(body.cascade)} (stream ${r.stream}, temperature ${r.temperature}): ${res.text.slice(0, 400)}`;
    if (res.status >= 500) t.fail(what);
    else if (res.status >= 400 && !res.json?.error?.message) t.fail(`no JSON error: ${what}`);
    else if (res.status < 300 && r.stream && (res.text.includes('"error"') || !res.text.trimEnd().endsWith('data: [DONE]'))) t.fail(`the stream failed: ${what}`);
  }
  t.log(JSON.stringify([...statuses]));
  t.true((statuses.get(200) ?? 0) >= 40, `many requests ran: ${JSON.stringify([...statuses])}`);
  t.true((statuses.get(400) ?? 0) >= 20, `many were refused: ${JSON.stringify([...statuses])}`);
  alive(t);
  const after = await post('/v1/completions', { prompt: PROMPT, max_tokens: 4, temperature: 0 });
  t.is(after.status, 200, 'the cluster still serves');
});

test.serial('verify actor - a review with lenience above 1 is refused: the target\'s review is exact whatever the coordinator asks', async (t) => {
  const nc = await NatsTransport.connect({ servers: nats.url });
  try {
    const ask = async (m: Parameters<typeof encode>[0], subject: string) => decode(await nc.request(subject, encode(m), { timeoutMs: 10_000 }));
    const opened = await ask({ type: 'open', session: 'lenient-1', sampling: { temperature: 1, topK: 0, topP: 1 }, seed: 1n, target: false, promptLength: 0, verification: 'rejection' }, subjects.open(family.target));
    const instance = opened.type === 'opened' ? opened.instance : '';
    const review = (lenience: number) => ask({ type: 'review', session: 'lenient-1', base: 0, suffix: [5, 6, 7, 8], start: 2, lenience, passUp: false, q: [] }, subjects.instance(family.target, instance));
    const refused = await review(3);
    t.is(refused.type === 'error' ? refused.code : refused.type, 'invalid');
    t.regex(refused.type === 'error' ? refused.message : '', /lenience/);
    t.is((await review(1)).type, 'reviewed');
    await ask({ type: 'close', session: 'lenient-1' }, subjects.instance(family.target, instance));
  } finally {
    await nc.close();
  }
});
