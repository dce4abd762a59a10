import test from 'ava';
import OpenAI from 'openai';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { startGatewayRole, type Role } from '../src/cluster/roles.ts';
import { ModelActor } from '../src/actors/model-actor.ts';
import { RemoteFeatureLevel, RemoteLevel } from '../src/cluster/remote-level.ts';
import { InProcessTransport } from '../src/cluster/transport.ts';
import { Block } from '../src/engine/levels.ts';
import { LevelUnavailableError } from '../src/errors.ts';
import { Rng } from '../src/kernels/rng.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY, type SamplingParams } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { spawnRole, type RoleProcess } from './helpers/cluster.ts';
import { family, MODELS_DIR } from './helpers/family.ts';

/**
 * The EAGLE feature drafter in the cluster (issue 24): it runs in the verify actor beside the target
 * (models/family.json names it), where the target's reviews keep their hidden_states, and the
 * coordinator asks it for drafts with token ids only. Real nats-server, redis-server, a verify actor
 * and a coordinator process, driven with the official openai client; no draft actor (the feature
 * drafter and MaG are the cascade). The oracle is target-only decoding in this process.
 */
const API_KEY = 'eagle-cluster-key';
const PROMPT = 'def read_config(path):\n    """Read the configuration file."""\n    with open(path) as f:\n';

let nats: LocalServer;
let redis: LocalServer;
const roles: RoleProcess[] = [];
let gateway: (Role & { url: string }) | undefined;
let client: OpenAI;
const oracle = new FamilySessions(family, {});
const tokenizer = TextTokenizer.forModel({ dir: `${MODELS_DIR}/${family.target}`, tokenizerPath: `${MODELS_DIR}/tokenizer.json` });

test.before(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const common = ['--models', MODELS_DIR, '--nats', nats.url];
  await Promise.all([
    spawnRole(['actor', 'verify', ...common, '--instance', 'verify-eagle', '--idle-ms', '20000']).then((r) => roles.push(r)),
    spawnRole(['coordinator', ...common, '--redis', redis.url]).then((r) => roles.push(r)),
  ]);
  gateway = await startGatewayRole({ models: MODELS_DIR, nats: nats.url, redis: [redis.url], port: 0, apiKeys: [API_KEY] });
  client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
});

test.after.always(async () => {
  await gateway?.stop().catch(() => undefined);
  await Promise.all(roles.map((r) => r.stop()));
  await Promise.all([nats?.stop(), redis?.stop()]);
  await oracle.close();
});

async function targetOnly(maxTokens: number, sampling: SamplingParams, seed: number): Promise<string> {
  const r = await generateAutoregressive(await oracle.get(family.target), { promptIds: tokenizer.encodePrompt(PROMPT), maxTokens, sampling, seed, verification: 'invariant' });
  return tokenizer.decode(r.tokenIds);
}

type Completion = OpenAI.Completions.Completion & { usage: { cascade: { drafted_tokens: number; accepted_tokens: number } } };
const complete = (body: object) => client.completions.create({ model: family.target, prompt: PROMPT, ...body } as never) as unknown as Promise<Completion>;

test.serial('eagle cluster - the feature drafter beside the verifier: greedy, alone and above MaG, gives target-only decoding\'s text, and its drafts are accepted', async (t) => {
  const want = await targetOnly(40, GREEDY, 0);
  const alone = await complete({ max_tokens: 40, temperature: 0, cascade: { drafters: [family.eagle], k_matrix: [[4]] } });
  t.is(alone.choices[0]!.text, want);
  t.true(alone.usage.cascade.accepted_tokens > 0, `the feature drafter's drafts were accepted (${alone.usage.cascade.accepted_tokens} of ${alone.usage.cascade.drafted_tokens})`);
  const withMag = await complete({ max_tokens: 40, temperature: 0, cascade: { drafters: [family.eagle, 'mag'] } });
  t.is(withMag.choices[0]!.text, want);
});

test.serial('eagle cluster - sampling: a seeded request under drafter-invariant verification gives target-only decoding\'s text for the seed; under rejection sampling drafts are reviewed and accepted', async (t) => {
  for (const seed of [3, 17]) {
    const r = await complete({ max_tokens: 24, temperature: 1, top_k: 50, seed, cascade: { drafters: [family.eagle, 'mag'], verification: 'invariant' } });
    t.is(r.choices[0]!.text, await targetOnly(24, { temperature: 1, topK: 50, topP: 1 }, seed), `seed ${seed}`);
  }
  // rejection sampling's exactness is shown in distribution embedded (test/eagle-level.test.ts, the same
  // EagleLevel and review run in the actor); here its q rows travel and its drafts are accepted
  const r = await complete({ max_tokens: 24, temperature: 0.7, seed: 5, cascade: { drafters: [family.eagle], k_matrix: [[3]], verification: 'rejection' } });
  t.true(r.usage.cascade.accepted_tokens > 0, `${r.usage.cascade.accepted_tokens} accepted`);
});

test.serial('eagle cluster - bad requests are 400s that name the reason: the feature drafter below another drafter, or under async drafting', async (t) => {
  const refused = (cascadeField: object) => t.throwsAsync(complete({ max_tokens: 4, temperature: 0, cascade: cascadeField }), { instanceOf: OpenAI.BadRequestError });
  t.regex((await refused({ drafters: ['draft-l2', family.eagle] }))!.message, /can only be the first drafter/);
  t.regex((await refused({ drafters: [family.eagle], drafting: 'async' }))!.message, /not with async drafting/);
});

test.serial('eagle cluster - the feature level follows its target: a session placed again (here on the same instance) starts its context over; an actor without a feature drafter opens the target alone and the level is dropped', async (t) => {
  const target = await oracle.get(family.target);
  const eagle = await oracle.get(family.eagle!);
  const ids = tokenizer.encodePrompt(PROMPT);
  for (const withDrafter of [true, false]) {
    const transport = new InProcessTransport();
    const actor = new ModelActor(transport, target, { instance: 'v0', target: true, ...(withDrafter ? { featureDrafter: eagle } : {}) }).start();
    try {
      const top = new RemoteLevel(transport, family.target, `req-${withDrafter}`, { sampling: GREEDY, seed: 1, verification: 'invariant', target: true, promptLength: ids.length, eagle: true });
      const feature = new RemoteFeatureLevel(transport, family.eagle!, top);
      const rng = new Rng(1);
      const round = async () => {
        const block = new Block([...(tokens ?? ids)], (tokens ?? ids).length);
        await feature.propose(block, 3);
        const drafted = block.length - block.committed;
        await top.review(block, block.committed, rng, 1, false);
        tokens = block.tokens;
        return drafted;
      };
      let tokens: number[] | undefined;
      if (!withDrafter) {
        t.is(await round(), 0, 'nothing to draft from before the target read the prompt');
        await t.throwsAsync(round(), { instanceOf: LevelUnavailableError, message: /hosts no feature drafter/ });
        continue;
      }
      t.is(await round(), 0);
      t.true((await round()) > 0, 'drafts once the target has features');
      // the target's session is placed again, on the one instance there is (its call failed)
      (top as unknown as { instance: string | undefined }).instance = undefined;
      const block = new Block([...tokens!], tokens!.length);
      await top.review(block, block.committed, rng, 1, false);
      tokens = block.tokens;
      t.is(top.placements, 2);
      t.true((await round()) > 0, 'the feature level drafts on the new session');
    } finally {
      await actor.stop();
    }
  }
});
