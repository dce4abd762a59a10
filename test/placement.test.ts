import test from 'ava';
import { ModelLoadError } from '../src/errors.ts';
import { MemoryModelSession } from '../src/models/memory-session.ts';
import { passCost, placeByCost } from '../src/models/placement.ts';
import type { ModelSession } from '../src/models/session.ts';
import { fails } from './helpers/cli.ts';

// Placement by measured cost (issue 22, src/models/placement.ts): the logic over in-memory models
// whose passes take a known time; the WebGPU EP against the CPU EP is measured in test/webgpu.test.ts.

/** An in-memory model whose every forward takes `ms` (a stand-in for an execution provider's pass cost). */
function slowModel(ms: number, closed: string[], name: string): ModelSession {
  const inner = new MemoryModelSession({ name, vocabSize: 64, order: 2, seed: 1 });
  return new Proxy(inner, {
    get(target, key, receiver) {
      if (key === 'forward') return async (...args: Parameters<ModelSession['forward']>) => (await new Promise((r) => setTimeout(r, ms)), target.forward(...args));
      if (key === 'close') return async () => (closed.push(name), target.close());
      return Reflect.get(target, key, receiver);
    },
  }) as ModelSession;
}

test('placement - the cheapest placement is kept and the others closed; one that cannot open is recorded and skipped', async (t) => {
  const closed: string[] = [];
  const costs: Record<string, number> = { webgpu: 25, cpu: 2 };
  const trials: string[] = [];
  const placed = await placeByCost(
    async ([ep]) => {
      if (ep === 'cuda') throw new Error('the CUDA EP is not in this build\nstack');
      return slowModel(costs[ep!]!, closed, ep!);
    },
    'draft',
    [['cuda'], ['webgpu'], ['cpu']],
    (tr) => trials.push(tr.executionProviders[0]!),
  );
  t.deepEqual(placed.executionProviders, ['cpu']);
  t.deepEqual(trials, ['cuda', 'webgpu', 'cpu']);
  t.is(placed.trials[0]!.error, 'the CUDA EP is not in this build');
  t.true(placed.trials[1]!.ms! > placed.trials[2]!.ms!);
  t.deepEqual(closed, ['webgpu'], 'the slower session closed, the kept one open');
  await placed.session.close();
});

test('placement - a target is timed on its verify pass, a drafter on its decode pass; no placement that runs is a ModelLoadError', async (t) => {
  const fed: number[] = [];
  const model = new MemoryModelSession({ name: 'm', vocabSize: 64, order: 2, seed: 1 });
  const spy = new Proxy(model, {
    get: (target, key, receiver) => (key === 'forward' ? (item: { inputIds: readonly number[] }, rows?: never) => (fed.push(item.inputIds.length), target.forward(item as never, rows)) : Reflect.get(target, key, receiver)),
  }) as ModelSession;
  await passCost(spy, 'target', 3);
  t.deepEqual(fed, [64, 8, 8, 8, 8, 8], 'a 64-token cache, then verify(8) passes rolled back to it (two warm-up)');
  fed.length = 0;
  await passCost(spy, 'draft', 3);
  t.deepEqual(fed, [64, 1, 1, 1, 1, 1]);
  await t.throwsAsync(placeByCost(async () => Promise.reject(new Error('no device')), 'target', [['webgpu']]), { instanceOf: ModelLoadError, message: /no placement could run the model: webgpu: no device/ });
});

test('placement - the CLI refuses a --placement that names no model of the cascade, or an unknown execution provider', async (t) => {
  const unknown = await fails(['generate', '--placement', 'nosuch=cpu', '--max-tokens', '1', 'x']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /--placement takes MODEL=EPS for a model of this cascade \(target, draft-l2, draft-l1\)/);
  const ep = await fails(['generate', '--placement', 'draft-l1=gpu', '--max-tokens', '1', 'x']);
  t.regex(ep.stderr, /--placement takes auto or a comma-separated list of cpu, webgpu/);
});
