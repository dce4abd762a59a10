import test from 'ava';
import { DRAFT_TOP_K, MAX_WANT, ModelActor } from '../src/actors/model-actor.ts';
import { Coordinator } from '../src/cluster/coordinator.ts';
import { startNats, type LocalServer } from '../src/cluster/local-servers.ts';
import { decode, encode, type ActorReply, type ActorRequest } from '../src/cluster/messages.ts';
import { NatsTransport } from '../src/cluster/nats-transport.ts';
import { InProcessTransport, LocalServingTransport, subjects, TransportError, type Transport } from '../src/cluster/transport.ts';
import { MemoryRequestLog } from '../src/cluster/redis-store.ts';
import { distribution } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { chiSquare, FALSE_FAILURE } from './helpers/stats.ts';

/**
 * Actors and transports at their limits, on both transports (the in-process one and NATS with a
 * real nats-server): a reply that cannot go out is never a crash, and the target's review is exact
 * whatever a coordinator asks.
 */
let nats: LocalServer;

test.before(async () => {
  nats = await startNats();
});

test.after.always(async () => {
  await nats?.stop();
});

const transports: [string, () => Promise<Transport>][] = [
  ['in-process', async () => new InProcessTransport()],
  ['NATS', () => NatsTransport.connect({ servers: nats.url })],
];

/** Waits until the server has seen the subscriptions made so far (NATS only). */
const flushed = async (t: Transport) => (t instanceof NatsTransport ? t.flush() : undefined);

test('transport - LocalServingTransport answers the subjects served in this process without NATS and sends everything else through it', async (t) => {
  const remote = await NatsTransport.connect({ servers: nats.url });
  const other = await NatsTransport.connect({ servers: nats.url });
  const local = new LocalServingTransport(remote);
  try {
    local.serve('t.local', async (d) => d);
    other.serve('t.remote', async () => new Uint8Array([9]));
    await other.flush();
    t.deepEqual([...(await local.request('t.local', new Uint8Array([1]), { timeoutMs: 1000 }))], [1], 'served here, answered here');
    const hidden = await t.throwsAsync(other.request('t.local', new Uint8Array([1]), { timeoutMs: 1000 }), { instanceOf: TransportError });
    t.not((hidden as TransportError).reason, 'closed', 'and not offered to NATS');
    t.deepEqual([...(await local.request('t.remote', new Uint8Array([1]), { timeoutMs: 1000 }))], [9], 'other subjects go through NATS');
    const published = new Promise<number>((resolve) => other.subscribe('t.pub', (d) => resolve(d[0]!)));
    await other.flush();
    local.publish('t.pub', new Uint8Array([5]));
    t.is(await published, 5, 'publish goes through NATS');
    await local.close();
    t.deepEqual([...(await remote.request('t.remote', new Uint8Array([1]), { timeoutMs: 1000 }))], [9], 'closing it leaves the NATS connection to its owner');
  } finally {
    await remote.close();
    await other.close();
  }
});

const call = async (t: Transport, subject: string, m: ActorRequest): Promise<ActorReply> => decode(await t.request(subject, encode(m), { timeoutMs: 10_000 })) as ActorReply;

const SAMPLED = { temperature: 1, topK: 0, topP: 1 };

for (const [name, connect] of transports) {
  test(`actor - a sampled proposal too large for one frame is answered with every token, its last q rows one-hot (${name})`, async (t) => {
    const transport = await connect();
    // a uniform drafter (sharpness 0): its top DRAFT_TOP_K ties keep all 8192 entries, so every q
    // row is dense, 32 KiB, and MAX_WANT rows are twice NATS's 1 MiB default
    const model = new MemoryModelSession({ name: 'wide', vocabSize: 8192, order: 2, seed: 5, sharpness: 0 });
    const actor = new ModelActor(transport, model, { instance: 'a0' }).start();
    try {
      await flushed(transport);
      t.is((await call(transport, subjects.open('wide'), { type: 'open', session: 's1', sampling: SAMPLED, seed: 1n, target: false, promptLength: 0, verification: 'rejection' })).type, 'opened');
      const reply = await call(transport, subjects.instance('wide', 'a0'), { type: 'propose', session: 's1', base: 0, suffix: [1, 2, 3], want: MAX_WANT });
      if (reply.type !== 'proposed') return t.fail(`answered ${JSON.stringify(reply)}`);
      t.is(reply.tokens.length, MAX_WANT, 'every drafted token is proposed');
      const kept = reply.q.findIndex((r) => r === undefined);
      t.true(kept > 0, `the first ${kept} q rows travel`);
      t.true(reply.q.slice(kept).every((r) => r === undefined), 'the rows that did not fit are one-hot, from the first that did not on');
      t.true(encode(reply).length <= transport.maxPayload);
      t.is(actor.counters.oneHot, 1);
      t.is(transport.unanswered, 0);
      const next = await call(transport, subjects.instance('wide', 'a0'), { type: 'propose', session: 's1', base: 3 + MAX_WANT, suffix: [], want: 2 });
      t.is(next.type, 'proposed', 'the actor keeps serving the session');
    } finally {
      await actor.stop();
      await transport.close();
    }
  });

  test(`transport - a request that gets no answer (handler threw, reply over the payload limit) is logged and counted; the caller times out (${name})`, async (t) => {
    const transport = await connect();
    const subs = [
      transport.serve('t.throws', async () => {
        throw new Error('a handler bug');
      }),
      transport.serve('t.big', async () => new Uint8Array(transport.maxPayload + 1)),
      transport.serve('t.echo', async (data) => data),
    ];
    try {
      await flushed(transport);
      for (const subject of ['t.throws', 't.big']) {
        const err = await t.throwsAsync(transport.request(subject, new Uint8Array([1]), { timeoutMs: 300 }), { instanceOf: TransportError });
        t.is((err as TransportError).reason, 'timeout', subject);
      }
      // counted when the handler gives up, which under load may come after the caller's timeout
      for (const until = Date.now() + 10_000; transport.unanswered < 2 && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
      t.is(transport.unanswered, 2);
      await t.throwsAsync(transport.request('t.echo', new Uint8Array(transport.maxPayload + 1), { timeoutMs: 1000 }), { instanceOf: TransportError }, 'an oversized request is refused');
      t.deepEqual([...(await transport.request('t.echo', new Uint8Array([7]), { timeoutMs: 1000 }))], [7], 'the transport keeps serving');
    } finally {
      await Promise.all(subs.map((s) => s.close()));
      await transport.close();
    }
  });
}

test('actor - the target\'s actor refuses a review with lenience other than 1 (a drafter\'s actor takes it) and a logit bias outside the vocabulary', async (t) => {
  const transport = new InProcessTransport();
  const target = new ModelActor(transport, new MemoryModelSession({ name: 'tgt', vocabSize: 16, order: 2, seed: 1 }), { instance: 'v0', target: true }).start();
  const drafter = new ModelActor(transport, new MemoryModelSession({ name: 'drf', vocabSize: 16, order: 2, seed: 2 }), { instance: 'd0' }).start();
  const review = (model: string, instance: string, lenience: number) =>
    call(transport, subjects.instance(model, instance), { type: 'review', session: 's', base: 0, suffix: [1, 2, 3, 4], start: 2, lenience, passUp: false, q: [] });
  try {
    for (const model of ['tgt', 'drf']) t.is((await call(transport, subjects.open(model), { type: 'open', session: 's', sampling: SAMPLED, seed: 3n, target: false, promptLength: 0, verification: 'rejection' })).type, 'opened');
    for (const lenience of [2, 1.5, 1e9]) {
      const refused = await review('tgt', 'v0', lenience);
      t.is(refused.type === 'error' ? refused.code : refused.type, 'invalid', `lenience ${lenience} at the target`);
      t.regex(refused.type === 'error' ? refused.message : '', /target.*lenience 1/);
    }
    t.is((await review('tgt', 'v0', 1)).type, 'reviewed', 'an exact review is served');
    // a logit bias on an id outside the vocabulary is refused as the gateway refuses it, not dropped
    const biased = await call(transport, subjects.open('tgt'), { type: 'open', session: 'b', sampling: { ...SAMPLED, logitBias: { 99: 5 } }, seed: 3n, target: false, promptLength: 0, verification: 'rejection' });
    t.is(biased.type === 'error' ? biased.code : biased.type, 'invalid');
    t.regex(biased.type === 'error' ? biased.message : '', /logit bias on token id 99, outside the vocabulary \(16\)/);
    t.is((await review('drf', 'd0', 2)).type, 'reviewed', 'between drafters lenience is allowed');
    // a draft actor that the queue group hands a request's target session (the same model drafting
    // elsewhere) serves it as the target: exact reviews only, and no top-k truncation
    t.is((await call(transport, subjects.open('drf'), { type: 'open', session: 's', sampling: SAMPLED, seed: 3n, target: true, promptLength: 0, verification: 'rejection' })).type, 'opened');
    const refused = await review('drf', 'd0', 2);
    t.is(refused.type === 'error' ? refused.code : refused.type, 'invalid', 'a target session refuses lenience on a draft actor too');
  } finally {
    await Promise.all([target.stop(), drafter.stop()]);
  }
});

test('actor - proposals cut to the payload limit (their last q rows one-hot) keep the sampled cascade exact (chi-square)', async (t) => {
  // 5 tokens: a q row is 25 bytes of a frame's rows (dense: marker, width, 5 float32); 150 bytes
  // leave the rows 75, so of a drafter's 3 proposed tokens 2 travel with their q (4 + 2 x 25 bytes)
  // and the third one-hot, and the review sends on the 2; the first two tokens of each request are counted
  const transport = new InProcessTransport({ maxPayload: 150 });
  const target = new MemoryModelSession({ name: 'target', vocabSize: 5, order: 2, seed: 11, sharpness: 4 });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize: 5, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  const actors = [new ModelActor(transport, target, { target: true }).start(), new ModelActor(transport, d1).start()];
  const log = new MemoryRequestLog();
  const coordinator = new Coordinator({ transport, log, family: { target: 'target', eosIds: [] } });
  const sampling = { temperature: 1, topK: 0, topP: 1 };
  const prompt = [1, 3, 2];
  const counts = new Array(25).fill(0);
  const N = 8000;
  try {
    for (let seed = 0; seed < N; seed++) {
      await coordinator.run({ requestId: `r${seed}`, promptIds: prompt, maxTokens: 4, sampling, seed, drafters: ['d1'], kMatrix: [[3]], lenience: 1, stopAtEos: false, enqueuedAt: Date.now() });
      const [a, b] = await log.read(`r${seed}`);
      counts[a! * 5 + b!]++;
    }
  } finally {
    await Promise.all(actors.map((a) => a.stop()));
  }
  t.true(actors[1]!.counters.oneHot >= N, `each request's first proposal went partly one-hot (${actors[1]!.counters.oneHot} did)`);
  t.is(transport.unanswered, 0);
  const p0 = distribution(target.nextLogits(prompt), sampling);
  const joint = Array.from({ length: 25 }, (_, i) => p0[Math.floor(i / 5)]! * distribution(target.nextLogits([...prompt, Math.floor(i / 5)]), sampling)[i % 5]!);
  const { chi2, df, pValue, impossible } = chiSquare(counts, joint);
  t.is(impossible, 0);
  t.true(pValue > FALSE_FAILURE, `chi2 ${chi2.toFixed(1)} on ${df} df, p = ${pValue.toExponential(2)}`);
});

test.serial('actor - at a 152k vocabulary a sampled proposal of MAX_WANT tokens travels whole over NATS: each q the drafter\'s top DRAFT_TOP_K, sparse; the target\'s review takes them', async (t) => {
  const transport = await NatsTransport.connect({ servers: nats.url });
  const vocabSize = 152_064;
  const target = new MemoryModelSession({ name: 'big', vocabSize, order: 1, seed: 3 });
  const drafter = new MemoryModelSession({ name: 'big-draft', vocabSize, order: 1, seed: 4, resemble: { model: target, weight: 0.9 } });
  const actors = [new ModelActor(transport, target, { instance: 't0', target: true }).start(), new ModelActor(transport, drafter, { instance: 'd0' }).start()];
  try {
    await transport.flush();
    for (const m of ['big', 'big-draft']) t.is((await call(transport, subjects.open(m), { type: 'open', session: 's', sampling: SAMPLED, seed: 9n, target: false, promptLength: 0, verification: 'rejection' })).type, 'opened');
    const proposed = await call(transport, subjects.instance('big-draft', 'd0'), { type: 'propose', session: 's', base: 0, suffix: [1, 2, 3], want: MAX_WANT });
    if (proposed.type !== 'proposed') return t.fail(JSON.stringify(proposed));
    t.is(proposed.tokens.length, MAX_WANT);
    t.is(actors[1]!.counters.oneHot, 0, 'no row went one-hot');
    for (const [i, q] of proposed.q.entries()) {
      if (!q) return t.fail(`q row ${i} is missing`);
      const support = q.reduce((n, v) => n + (v > 0 ? 1 : 0), 0);
      t.true(support >= DRAFT_TOP_K && support <= DRAFT_TOP_K + 4, `row ${i}: ${support} entries (ties at the boundary are kept)`);
      t.true(q[proposed.tokens[i]!]! > 0, 'each token was drawn from its row');
      t.true(Math.abs(q.reduce((a, v) => a + v, 0) - 1) < 1e-5, 'each row is renormalised');
    }
    t.true(encode(proposed).length < 200_000, `${encode(proposed).length} bytes for ${MAX_WANT} rows`);
    const reviewed = await call(transport, subjects.instance('big', 't0'), { type: 'review', session: 's', base: 0, suffix: [1, 2, 3, ...proposed.tokens], start: 3, lenience: 1, passUp: false, q: proposed.q });
    t.is(reviewed.type, 'reviewed');
  } finally {
    await Promise.all(actors.map((a) => a.stop()));
    await transport.close();
  }
});

test('actor - a draft actor samples a drafter\'s session from its top DRAFT_TOP_K, and a session opened as the target from the whole distribution', async (t) => {
  const transport = new InProcessTransport();
  const actor = new ModelActor(transport, new MemoryModelSession({ name: 'mid', vocabSize: 1000, order: 1, seed: 7 }), { instance: 'm0' }).start();
  try {
    const support = async (session: string, target: boolean) => {
      t.is((await call(transport, subjects.open('mid'), { type: 'open', session, sampling: SAMPLED, seed: 1n, target, promptLength: 0, verification: 'rejection' })).type, 'opened');
      const r = await call(transport, subjects.instance('mid', 'm0'), { type: 'propose', session, base: 0, suffix: [1, 2, 3], want: 1 });
      return r.type === 'proposed' ? r.q[0]!.filter((v) => v > 0).length : -1;
    };
    t.is(await support('drafting', false), DRAFT_TOP_K);
    t.is(await support('as-target', true), 1000);
  } finally {
    await actor.stop();
  }
});

test('actor - a draft actor asked for its runner-up names the token it ranks next (outcome branches), for one drafted token only', async (t) => {
  const transport = new InProcessTransport();
  const model = new MemoryModelSession({ name: 'ranked', vocabSize: 32, order: 2, seed: 9, sharpness: 3 });
  const actor = new ModelActor(transport, model, { instance: 'r0' }).start();
  try {
    t.is((await call(transport, subjects.open('ranked'), { type: 'open', session: 's', sampling: { temperature: 0, topK: 0, topP: 1 }, seed: 1n, target: false, promptLength: 0, verification: 'invariant' })).type, 'opened');
    const reply = await call(transport, subjects.instance('ranked', 'r0'), { type: 'propose', session: 's', base: 0, suffix: [1, 2, 3], want: 1, runnerUp: true });
    if (reply.type !== 'proposed') return t.fail(`answered ${JSON.stringify(reply)}`);
    const ranked = [...model.nextLogits([1, 2, 3])].map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    t.deepEqual([reply.tokens[0], reply.runnerUp], [ranked[0]![1], ranked[1]![1]], 'the greedy draft, then the second-largest logit');
    const plain = await call(transport, subjects.instance('ranked', 'r0'), { type: 'propose', session: 's', base: 4, suffix: [], want: 2 });
    t.true(plain.type === 'proposed' && plain.runnerUp === undefined, 'named only when asked');
    const refused = await call(transport, subjects.instance('ranked', 'r0'), { type: 'propose', session: 's', base: 6, suffix: [], want: 2, runnerUp: true });
    t.true(refused.type === 'error' && /want must be 1/.test(refused.message), JSON.stringify(refused));
  } finally {
    await actor.stop();
    await transport.close();
  }
});
