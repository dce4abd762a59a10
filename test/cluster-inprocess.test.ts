import test from 'ava';
import { ModelActor } from '../src/actors/model-actor.ts';
import { Coordinator, type JobData } from '../src/cluster/coordinator.ts';
import { MemoryRequestLog } from '../src/cluster/redis-store.ts';
import { RemoteFeatureLevel, RemoteLevel } from '../src/cluster/remote-level.ts';
import { Block } from '../src/engine/levels.ts';
import { ActorLiveness } from '../src/cluster/liveness.ts';
import { decode, encode } from '../src/cluster/messages.ts';
import { InProcessTransport, subjects, TransportError } from '../src/cluster/transport.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { distribution, GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { DECODE_STEPS } from '../src/models/session.ts';
import { paced } from './helpers/pacing.ts';
import { describeFits, misfits, positionalChiSquare } from './helpers/stats.ts';

/**
 * The cluster's protocol end to end in one process: actors over the in-process transport (frames
 * still encoded), the coordinator driving them, in-memory models. Proves the wire keeps the cascade
 * exact: greedy identity, and the target's distribution when sampling with q and p rows travelling.
 */
function cluster(vocabSize: number, sharpness = 4, pace = false) {
  const target = new MemoryModelSession({ name: 'target', vocabSize, order: 2, seed: 11, sharpness });
  const d1 = new MemoryModelSession({ name: 'd1', vocabSize, order: 2, seed: 12, resemble: { model: target, weight: 0.8 } });
  const d2 = new MemoryModelSession({ name: 'd2', vocabSize, order: 1, seed: 13, resemble: { model: target, weight: 0.5 } });
  const transport = new InProcessTransport();
  // paced: the target's passes take 8 event-loop turns and a drafter's steps 1, so drafts arrive while the target verifies (helpers/pacing.ts)
  const actors = [target, d1, d2].map((m) => new ModelActor(transport, pace ? paced(m, () => (m === target ? 8 : 1)) : m).start());
  const log = new MemoryRequestLog();
  const coordinator = new Coordinator({ transport, log, family: { target: 'target', eosIds: [] } });
  let n = 0;
  const run = (job: Omit<JobData, 'requestId' | 'enqueuedAt' | 'trace' | 'stopAtEos'>) =>
    coordinator.run({ ...job, requestId: `r${n++}`, enqueuedAt: Date.now(), stopAtEos: false }).then(async (o) => ({ outcome: o, tokens: await log.read(`r${n - 1}`) }));
  return { target, d1, d2, actors, run, transport, stop: () => Promise.all(actors.map((a) => a.stop())) };
}

test('cluster (in-process) - greedy output equals target-only decoding for several cascades', async (t) => {
  const c = cluster(24);
  const shapes: [string[], number[][]][] = [
    [['d1'], [[3]]],
    [['mag'], [[4]]],
    [['d1', 'd2', 'mag'], [[2, 4, 8], [0, 2, 6], [0, 0, 4]]],
    [['d1', 'd2'], [[1, 3], [0, 2]]],
  ];
  for (const prompt of [[1], [3, 5, 7], [2, 2, 2, 2, 9]]) {
    const want = await generateAutoregressive(c.target, { promptIds: prompt, maxTokens: 30, sampling: GREEDY, seed: 0, stopAtEos: false });
    for (const [drafters, kMatrix] of shapes) {
      const { tokens } = await c.run({ promptIds: prompt, maxTokens: 30, sampling: GREEDY, seed: 0, drafters, kMatrix, lenience: 1 });
      t.deepEqual(tokens, want.tokenIds, `${drafters.join('+')} on ${prompt}`);
    }
  }
  for (const a of c.actors) t.is(a.activeSessions, 0, `${a.model} freed every session`);
  for (const m of [c.target, c.d1, c.d2]) t.is(m.liveSequences(), 0);
  await c.stop();
});

test('cluster (in-process) - async drafting over the wire: the draft actor names its runner-ups, outcome branches are adopted, and greedy and seeded sampled output equal target-only decoding', async (t) => {
  const c = cluster(24, 4, true);
  let hits = 0;
  for (const [prompt, sampling] of [[[1], GREEDY], [[3, 5, 7], { temperature: 0.8, topK: 0, topP: 1 }], [[2, 2, 2, 2, 9], GREEDY]] as const) {
    const want = await generateAutoregressive(c.target, { promptIds: prompt, maxTokens: 40, sampling, seed: 5, stopAtEos: false, verification: 'invariant' });
    const { outcome, tokens } = await c.run({ promptIds: [...prompt], maxTokens: 40, sampling, seed: 5, drafters: ['d1'], kMatrix: 'auto', lenience: 1, drafting: 'async', outcomeBranches: true, verification: 'invariant' });
    t.deepEqual(tokens, want.tokenIds, `${prompt}, T ${sampling.temperature}`);
    hits += outcome.stats!.drafting!.outcomeHits;
  }
  t.log(`outcome branches adopted at ${hits} passes`);
  t.true(hits > 0, 'a branch drafted from a runner-up the actor named came true');
  // MaG below the draft actor (the pipeline): the actor reviews MaG's drafts on its speculation
  let pipelined = 0;
  for (const [prompt, sampling] of [[[1, 2, 3, 1, 2, 3, 1, 2], GREEDY], [[2, 2, 2, 2, 9], { temperature: 0.8, topK: 0, topP: 1 }]] as const) {
    const want = await generateAutoregressive(c.target, { promptIds: prompt, maxTokens: 40, sampling, seed: 5, stopAtEos: false, verification: 'invariant' });
    const { outcome, tokens } = await c.run({ promptIds: [...prompt], maxTokens: 40, sampling, seed: 5, drafters: ['d1', 'mag'], kMatrix: 'auto', lenience: 1, drafting: 'async', verification: 'invariant' });
    t.deepEqual(tokens, want.tokenIds, `${prompt}, T ${sampling.temperature}, MaG below d1`);
    pipelined += outcome.stats!.drafting!.pipelinedDrafts;
  }
  t.log(`the draft actor reviewed ${pipelined} of MaG's drafts`);
  t.true(pipelined > 0);
  // d2's actor as a level below d1's (cascade.level_below): d1's actor reviews d2's drafts
  let below = 0;
  for (const [prompt, sampling] of [[[1, 2, 3, 1, 2, 3, 1, 2], GREEDY], [[3, 5, 7], { temperature: 0.8, topK: 0, topP: 1 }], [[2, 2, 2, 2, 9], GREEDY]] as const) {
    const want = await generateAutoregressive(c.target, { promptIds: prompt, maxTokens: 40, sampling, seed: 5, stopAtEos: false, verification: 'invariant' });
    const { outcome, tokens } = await c.run({ promptIds: [...prompt], maxTokens: 40, sampling, seed: 5, drafters: ['d1', 'd2'], kMatrix: 'auto', lenience: 1, drafting: 'async', levelBelow: true, verification: 'invariant' });
    t.deepEqual(tokens, want.tokenIds, `${prompt}, T ${sampling.temperature}, d2 below d1`);
    below += outcome.stats!.drafting!.belowDrafts;
  }
  t.log(`the draft actor of d1 reviewed ${below} of d2's actor's drafts`);
  t.true(below > 0);
  for (const a of c.actors) t.is(a.activeSessions, 0, `${a.model} freed every session`);
  await c.stop();
});

test('cluster (in-process) - async drafting with MaG below the draft actor under rejection sampling: the actor passes its p up with what it accepted of MaG\'s drafts, and every position is drawn from the target (chi-square)', async (t) => {
  const c = cluster(4, 8, true);
  const start = [1, 3, 2];
  const prompt = [...start, ...(await generateAutoregressive(c.target, { promptIds: start, maxTokens: 9, sampling: GREEDY, seed: 0 })).tokenIds];
  const sampling: SamplingParams = { temperature: 1, topK: 0, topP: 1 };
  const samples: number[][] = [];
  let pipelined = 0;
  for (let seed = 0; seed < 6000; seed++) {
    const { tokens, outcome } = await c.run({ promptIds: prompt, maxTokens: 6, sampling, seed, drafters: ['d1', 'mag'], kMatrix: 'auto', lenience: 1, drafting: 'async', verification: 'rejection' });
    samples.push(tokens);
    pipelined += outcome.stats!.drafting!.pipelinedAccepted;
  }
  t.log(`the draft actor accepted ${pipelined} of MaG's drafts`);
  t.true(pipelined > 500);
  const fits = positionalChiSquare(samples, prompt, (context) => distribution(c.target.nextLogits(context), sampling));
  t.log(describeFits(fits));
  t.deepEqual(misfits(fits), [], describeFits(fits));
  await c.stop();
});

const sampled: [string, string[], number[][], SamplingParams][] = [
  ['sd: a neural drafter\'s q travels with its drafts', ['d1'], [[3]], { temperature: 1, topK: 0, topP: 1 }],
  ['two neural levels: the middle reviewer passes its p up as q', ['d1', 'd2'], [[1, 3], [0, 2]], { temperature: 0.8, topK: 0, topP: 1 }],
  ['three levels with MaG', ['d1', 'd2', 'mag'], [[1, 2, 3], [0, 1, 2], [0, 0, 1]], { temperature: 0.7, topK: 0, topP: 1 }],
];

// Rounds draft at most 3 tokens and add the target's own: 8 tokens hold two whole rounds,
// so every position of a second round, the bonus included, is tested given the tokens before it.
for (const [name, drafters, kMatrix, sampling] of sampled) {
  test(`cluster (in-process) - sampling over the wire: ${name}; every position of two rounds, bonus included (chi-square)`, async (t) => {
    const c = cluster(4, 8);
    const start = [1, 3, 2];
    const prompt = [...start, ...(await generateAutoregressive(c.target, { promptIds: start, maxTokens: 9, sampling: GREEDY, seed: 0 })).tokenIds];
    const samples: number[][] = [];
    let fullBlocks = 0;
    let shortRuns = 0;
    for (let seed = 0; seed < 8000; seed++) {
      const { tokens, outcome } = await c.run({ promptIds: prompt, maxTokens: 8, sampling, seed, drafters, kMatrix, lenience: 1 });
      samples.push(tokens);
      if (outcome.stats!.rounds < 2) shortRuns++;
      fullBlocks += outcome.stats!.acceptedByPosition[2] ?? 0; // a whole 3-token block accepted: the target's bonus follows
    }
    t.is(shortRuns, 0, 'every sample spans two rounds or more');
    t.true(fullBlocks >= 400, `${fullBlocks} rounds accepted a whole block and drew the target's bonus`);
    t.true(samples.every((s) => s.length === 8));
    const fits = positionalChiSquare(samples, prompt, (context) => distribution(c.target.nextLogits(context), sampling));
    t.log(describeFits(fits));
    t.deepEqual(misfits(fits), [], describeFits(fits));
    await c.stop();
  });
}

test('cluster (in-process) - a drafter whose actors are gone is dropped; the request finishes exactly', async (t) => {
  const c = cluster(24);
  const want = await generateAutoregressive(c.target, { promptIds: [4, 2], maxTokens: 40, sampling: GREEDY, seed: 0, stopAtEos: false });
  await c.actors[1]!.stop(); // d1
  const { tokens, outcome } = await c.run({ promptIds: [4, 2], maxTokens: 40, sampling: GREEDY, seed: 0, drafters: ['d1', 'd2', 'mag'], kMatrix: [[2, 4, 8], [0, 2, 6], [0, 0, 4]], lenience: 1 });
  t.deepEqual(tokens, want.tokenIds);
  t.deepEqual(outcome.failovers, ['d1']);
  await c.stop();
});

test('cluster (in-process) - the target decoding alone asks its actor for several tokens a call (target-only decoding, and after its only drafter was dropped); greedy and seeded sampled tokens equal target-only decoding\'s', async (t) => {
  const c = cluster(24);
  const targetCalls = { n: 0 };
  const request = c.transport.request.bind(c.transport);
  c.transport.request = (subject, data, options) => {
    if (subject.startsWith('cascade.actor.target.') && !subject.endsWith('.open')) targetCalls.n++;
    return request(subject, data, options);
  };
  const sampled: SamplingParams = { temperature: 0.8, topK: 0, topP: 1 };
  for (const sampling of [GREEDY, sampled]) {
    const want = await generateAutoregressive(c.target, { promptIds: [4, 2], maxTokens: 40, sampling, seed: 3, stopAtEos: false, verification: 'invariant' });
    targetCalls.n = 0;
    const alone = await c.run({ promptIds: [4, 2], maxTokens: 40, sampling, seed: 3, drafters: [], kMatrix: [], lenience: 1, verification: 'invariant' });
    t.deepEqual(alone.tokens, want.tokenIds, `target-only, T ${sampling.temperature}`);
    // the first token alone (it streams as soon as the prompt is read), then DECODE_STEPS a call, and the close
    t.true(targetCalls.n <= 1 + Math.ceil(39 / DECODE_STEPS) + 1, `${targetCalls.n} target calls for 40 tokens`);
    await c.actors[1]!.stop(); // d1: dropped at its first call, then the target decodes alone
    targetCalls.n = 0;
    const dropped = await c.run({ promptIds: [4, 2], maxTokens: 40, sampling, seed: 3, drafters: ['d1'], kMatrix: [[3]], lenience: 1, verification: 'invariant' });
    t.deepEqual(dropped.tokens, want.tokenIds, `d1 dropped, T ${sampling.temperature}`);
    t.deepEqual(dropped.outcome.failovers, ['d1']);
    t.true(targetCalls.n <= 2 + Math.ceil(39 / DECODE_STEPS) + 1, `${targetCalls.n} target calls for 40 tokens after the drafter was dropped`);
    c.actors[1]!.start();
  }
  // where the actor's runner cannot decode several tokens in one call (rejection sampling, log
  // probabilities), one token a call: a longer call would run every pass unbounded
  for (const extra of [{ sampling: sampled, verification: 'rejection' as const }, { sampling: GREEDY, verification: 'invariant' as const, logprobs: 2 }]) {
    targetCalls.n = 0;
    await c.run({ promptIds: [4, 2], maxTokens: 40, seed: 3, drafters: [], kMatrix: [], lenience: 1, ...extra });
    t.true(targetCalls.n >= 40, `${targetCalls.n} target calls for 40 tokens, ${JSON.stringify(extra)}`);
  }
  await c.stop();
});

test('cluster (in-process) - a verify actor gone mid-request: the session is placed again on the other, the coordinator says so in one line, and the tokens are target-only decoding\'s', async (t) => {
  const c = cluster(24);
  const want = await generateAutoregressive(c.target, { promptIds: [6, 1], maxTokens: 30, sampling: GREEDY, seed: 0, stopAtEos: false });
  const transport = new InProcessTransport();
  const verifiers = [new ModelActor(transport, c.target, { instance: 'v0' }).start(), new ModelActor(transport, c.target, { instance: 'v1' }).start()];
  const drafter = new ModelActor(transport, c.d1).start();
  const events: string[] = [];
  const failed: string[] = [];
  const log = new MemoryRequestLog();
  const coordinator = new Coordinator({ transport, log, family: { target: 'target', eosIds: [] }, onEvent: (l) => events.push(l), onCallFailed: (kind, reason) => failed.push(`${kind} ${reason}`) });
  // the fourth call to a verify actor's own subject finds it gone
  let calls = 0;
  const request = transport.request.bind(transport);
  transport.request = async (subject, data, options) => {
    const v = verifiers.find((a) => subject === `cascade.actor.target.${a.instance}`);
    if (v && ++calls === 4) await v.stop();
    return request(subject, data, options);
  };
  await coordinator.run({ requestId: 'moved', promptIds: [6, 1], maxTokens: 30, sampling: GREEDY, seed: 0, drafters: ['d1'], kMatrix: [[3]], lenience: 1, enqueuedAt: Date.now(), stopAtEos: false });
  t.deepEqual(await log.read('moved'), want.tokenIds);
  t.deepEqual(failed, ['verify no-responders']);
  t.is(events.length, 1, events.join('\n'));
  t.regex(events[0]!, /^request moved: a call to the target actor failed \(no responders on cascade\.actor\.target\.v[01]\); placing its session again$/);
  await Promise.all([...verifiers, drafter].map((a) => a.stop()));
  await c.stop();
});

test('cluster (in-process) - a verify actor frozen mid-call (no answer, no heartbeat): the call is given up as silent long before its timeout, the session placed on the other, and the tokens are target-only decoding\'s', async (t) => {
  const c = cluster(24);
  const want = await generateAutoregressive(c.target, { promptIds: [5, 2], maxTokens: 30, sampling: GREEDY, seed: 0, stopAtEos: false });
  const transport = new InProcessTransport();
  const verifiers = ['v0', 'v1'].map((instance) => new ModelActor(transport, c.target, { instance, heartbeatMs: 50 }).start());
  const drafter = new ModelActor(transport, c.d1, { heartbeatMs: 50 }).start();
  const liveness = new ActorLiveness(transport, 400, 50);
  const events: string[] = [];
  const failed: string[] = [];
  const log = new MemoryRequestLog();
  const coordinator = new Coordinator({ transport, log, family: { target: 'target', eosIds: [] }, callTimeoutMs: 10_000, liveness, onEvent: (l) => events.push(l), onCallFailed: (kind, reason) => failed.push(`${kind} ${reason}`) });
  // the fourth call to a verify actor's own subject freezes it: that call and any later one get no answer, and its heartbeats stop
  let frozen: string | undefined;
  let calls = 0;
  const timers: NodeJS.Timeout[] = [];
  const request = transport.request.bind(transport);
  let opensAfter = 0;
  transport.request = async (subject, data, options) => {
    if (frozen && subject === subjects.open('target')) opensAfter++;
    const v = verifiers.find((a) => subject === `cascade.actor.target.${a.instance}`);
    if (v && (frozen === v.instance || ++calls === 4)) {
      frozen = v.instance;
      return new Promise<never>((_, reject) => timers.push(setTimeout(() => reject(new TransportError(`request on ${subject} timed out`, 'timeout')), options.timeoutMs)));
    }
    return request(subject, data, options);
  };
  const publish = transport.publish.bind(transport);
  transport.publish = (subject, data, headers) => {
    const m = subject === subjects.alive ? decode(data) : undefined;
    if (m?.type !== 'alive' || m.instance !== frozen) publish(subject, data, headers);
  };
  await new Promise((r) => setTimeout(r, 100)); // every actor heard from once
  const t0 = Date.now();
  await coordinator.run({ requestId: 'frozen', promptIds: [5, 2], maxTokens: 30, sampling: GREEDY, seed: 0, drafters: ['d1'], kMatrix: [[3]], lenience: 1, enqueuedAt: Date.now(), stopAtEos: false });
  const ms = Date.now() - t0;
  t.deepEqual(await log.read('frozen'), want.tokenIds);
  t.deepEqual(failed, ['verify silent']);
  t.is(opensAfter, 0, 'the session was placed again on the live instance directly, not through the queue group, which over NATS may still hold the frozen one');
  t.true(ms < 5000, `the request took ${ms} ms: the frozen call waited for its 10 s timeout`);
  t.regex(events.join('\n'), /^request frozen: a call to the target actor failed \(actor target\/v[01] has sent no heartbeat for \d+ ms while others did\); placing its session again$/);
  t.deepEqual(Object.keys(liveness.live()).sort(), ['d1', 'target']);
  t.deepEqual(Object.keys(liveness.live().target!), verifiers.map((v) => v.instance).filter((i) => i !== frozen), 'the frozen instance is not live');
  timers.forEach(clearTimeout);
  await liveness.close();
  await Promise.all([...verifiers, drafter].map((a) => a.stop()));
  await c.stop();
});

test('cluster (in-process) - actors\' silence is judged on the others\' heartbeats: while no one is heard (a stalled or cut-off coordinator, a lone actor) no call is given up', async (t) => {
  const transport = new InProcessTransport();
  const liveness = new ActorLiveness(transport, 100, 100);
  const deaf = new ActorLiveness(transport, 0, 100); // --actor-silence-ms 0
  const alive = (instance: string) => transport.publish(subjects.alive, encode({ type: 'alive', model: 'target', instance, sessions: 1 }));
  alive('v0');
  alive('v1');
  await new Promise((r) => setTimeout(r, 10));
  t.deepEqual(liveness.placeable('target'), [], 'none before two heartbeat periods of listening: one instance heard and another not yet would get every session');
  const judged = deaf.watch('target', 'v0');
  let judgedWith0 = '';
  judged.silent.catch((err: Error) => (judgedWith0 = err.message));
  const lone = liveness.watch('target', 'v0');
  let given = '';
  lone.silent.catch((err: Error) => (given = err.message));
  await new Promise((r) => setTimeout(r, 400)); // four silences with no heartbeat from anyone
  t.is(given, '', 'no one was heard, so no one is judged');
  for (let i = 0; i < 6; i++) {
    alive('v1'); // the other instance beats on
    await new Promise((r) => setTimeout(r, 40));
  }
  t.regex(given, /^actor target\/v0 has sent no heartbeat for \d+ ms while others did$/);
  t.deepEqual(Object.keys(liveness.live().target ?? {}), ['v1']);
  // a coordinator's in-process verifier and a stopping actor are listed, but no session is placed on them directly
  transport.publish(subjects.alive, encode({ type: 'alive', model: 'target', instance: 'local', sessions: 0, local: true }));
  transport.publish(subjects.alive, encode({ type: 'alive', model: 'target', instance: 'leaving', sessions: 0, leaving: true }));
  await new Promise((r) => setTimeout(r, 10));
  t.deepEqual(Object.keys(liveness.live().target ?? {}).sort(), ['leaving', 'local', 'v1']);
  t.deepEqual(liveness.placeable('target'), ['v1']);
  t.is(judgedWith0, '', 'with a silence of 0 no call is given up');
  t.deepEqual(deaf.placeable('target'), ['v1'], 'but sessions are still placed on the instances heard');
  lone.stop();
  judged.stop();
  await Promise.all([liveness.close(), deaf.close()]);
});

test('cluster (in-process) - a feature drafter\'s call that finds the verify actor gone makes the target place its session again at once, instead of dropping the level', async (t) => {
  const c = cluster(24);
  const transport = new InProcessTransport();
  const verifiers = ['v0', 'v1'].map((instance) => new ModelActor(transport, c.target, { instance }).start());
  const failed: string[] = [];
  const top = new RemoteLevel(transport, 'target', 'lost', { sampling: GREEDY, seed: 1, verification: 'invariant', target: true });
  const feature = new RemoteFeatureLevel(transport, 'eagle', top, { onCallFailed: (reason, _message, next) => failed.push(`${reason}: ${next}`) });
  const block = new Block([5, 2], 2);
  await top.propose(block, 1);
  const first = top.placedOn!;
  await verifiers.find((v) => v.instance === first)!.stop();
  await feature.propose(block, 3); // no throw: the level stays, and proposes nothing this round
  t.deepEqual(failed, ['no-responders: placing its session again']);
  t.is(top.placedOn, undefined, 'the target\'s session is to be placed again');
  await top.propose(block, 1);
  t.not(top.placedOn, undefined);
  t.not(top.placedOn, first, 'on the instance still there');
  await Promise.all(verifiers.map((v) => v.stop()));
  await c.stop();
});

test('cluster (in-process) - a retried request resumes after the recorded tokens', async (t) => {
  const c = cluster(24);
  const want = await generateAutoregressive(c.target, { promptIds: [7], maxTokens: 30, sampling: GREEDY, seed: 0, stopAtEos: false });
  const log = new MemoryRequestLog();
  await log.append('again', await log.claim('again'), 0, want.tokenIds.slice(0, 11));
  const transport = new InProcessTransport();
  const actors = [c.target, c.d1].map((m) => new ModelActor(transport, m).start());
  const coordinator = new Coordinator({ transport, log, family: { target: 'target', eosIds: [] } });
  const outcome = await coordinator.run({ requestId: 'again', promptIds: [7], maxTokens: 30, sampling: GREEDY, seed: 0, drafters: ['d1'], kMatrix: [[3]], lenience: 1, enqueuedAt: Date.now() });
  t.is(outcome.resumedFrom, 11);
  t.deepEqual(await log.read('again'), want.tokenIds);
  await Promise.all(actors.map((a) => a.stop()));
  await c.stop();
});

test('cluster (in-process) - malformed jobs are refused with the reason', async (t) => {
  const c = cluster(8);
  await t.throwsAsync(c.run({ promptIds: [], maxTokens: 3, sampling: GREEDY, seed: 0, drafters: [], kMatrix: [], lenience: 1 }), { message: /promptIds/ });
  await c.stop();
});
