import test from 'ava';
import { ModelActor } from '../src/actors/model-actor.ts';
import { RemoteFeatureLevel, RemoteLevel } from '../src/cluster/remote-level.ts';
import { InProcessTransport } from '../src/cluster/transport.ts';
import { Block } from '../src/engine/levels.ts';
import { LevelUnavailableError } from '../src/errors.ts';
import { Rng } from '../src/kernels/rng.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { FamilySessions } from '../src/models/family-sessions.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { family, MODELS_DIR } from './helpers/family.ts';

/**
 * The EAGLE feature drafter's cluster protocol (issue 24): it runs in the verify actor beside the
 * target, and the coordinator's RemoteFeatureLevel asks that actor for drafts (frames v8). Real ONNX
 * models over the in-process transport; the same through real nats-server, redis-server and role
 * processes with the openai client is in test/cluster.test.ts.
 */
const PROMPT = 'def read_config(path):\n    """Read the configuration file."""\n    with open(path) as f:\n';
const oracle = new FamilySessions(family, {});
const tokenizer = TextTokenizer.forModel({ dir: `${MODELS_DIR}/${family.target}`, tokenizerPath: `${MODELS_DIR}/tokenizer.json` });

test.after.always(async () => {
  await oracle.close();
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
