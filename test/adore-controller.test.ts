import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { BoundedSequence } from '../src/engine/bounded-kv.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { AdoreController, ControllerTrack, tanh } from '../src/kernels/adore-controller.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { loadController } from '../src/models/family.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { dirOf, family } from './helpers/family.ts';

const controller = loadController(family);
const ref = JSON.parse(readFileSync(join(controller.dir, 'reference.json'), 'utf8')) as { token_ids: number[]; scores: number[] };
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test('adore controller - the TypeScript runtime matches the training framework (torch reference)', async (t) => {
  const track = new ControllerTrack(controller);
  const ids = ref.token_ids;
  const got = await track.score(ids.map((_, i) => i), ids, ids.length - 1);
  t.true(maxDiff(got, ref.scores) < 1e-4, `max abs diff ${maxDiff(got, ref.scores)}`);
  // Rolled back and re-scored, the track gives the same answer.
  await track.score([0], ids, 3);
  t.true(maxDiff(await track.score(ids.map((_, i) => i), ids, ids.length - 1), ref.scores) < 1e-4);
});

test('adore controller - the exported ONNX matches the training framework, whole or incremental', async (t) => {
  const s = await ort.InferenceSession.create(join(controller.dir, 'controller.onnx'));
  const H = controller.hidden;
  const ids = ref.token_ids;
  const i64 = (v: number[]) => new ort.Tensor('int64', BigInt64Array.from(v, BigInt), [v.length]);
  const f32 = (v: Float32Array, dims: number[]) => new ort.Tensor('float32', v, dims);
  const whole = await s.run({ token_ids: i64(ids), h0: f32(new Float32Array(H), [1, H]), past_states: f32(new Float32Array(0), [0, H]), past_distance: f32(new Float32Array(0), [0]) });
  t.true(maxDiff(whole.scores!.data as Float32Array, ref.scores) < 1e-4);
  const first = await s.run({ token_ids: i64(ids.slice(0, 6)), h0: f32(new Float32Array(H), [1, H]), past_states: f32(new Float32Array(0), [0, H]), past_distance: f32(new Float32Array(0), [0]) });
  const states = first.states!.data as Float32Array;
  const rest = await s.run({
    token_ids: i64(ids.slice(6)),
    h0: f32(states.slice(5 * H, 6 * H), [1, H]),
    past_states: f32(states, [6, H]),
    past_distance: f32(Float32Array.from([5, 4, 3, 2, 1, 0]), [6]),
  });
  t.true(maxDiff(rest.scores!.data as Float32Array, ref.scores) < 1e-4);
});

test('adore controller - generation under an ADORE cache stays within budget and rebuilds from the store', async (t) => {
  const target = await OrtModelSession.open(dirOf(family.target));
  try {
    const prompt = Array.from({ length: 120 }, (_, i) => ref.token_ids[i % ref.token_ids.length]!);
    const r = await generateAutoregressive(target, { promptIds: prompt, maxTokens: 16, sampling: GREEDY, seed: 0, stopAtEos: false, kv: { policy: 'adore', budget: { budget: 48, sinks: 0, recent: 4, rebuild: 2 }, controller } });
    t.is(r.tokenIds.length, 16);
    t.true(r.stats.kv!.peakResident <= 48);
    t.is(r.stats.kv!.misses, 0, 'the in-memory store never misses');
  } finally {
    await target.close();
  }
  t.throws(() => new BoundedSequence(target, 'x', { policy: 'adore', budget: { budget: 8, sinks: 0, recent: 0, rebuild: 0 } }), { message: /needs the ADORE controller/ });
  t.throws(() => AdoreController.load(dirOf(family.target)), { message: /no ADORE controller/ });
});

test('adore controller - the fast tanh stays within 1.2e-8 of Math.tanh', (t) => {
  let worst = 0;
  for (let x = -12; x <= 12; x += 1e-3) worst = Math.max(worst, Math.abs(tanh(x) - Math.tanh(x)));
  t.true(worst < 1.2e-8, `max abs error ${worst}`);
  t.is(tanh(0), 0);
  t.is(tanh(1e6), 1);
  t.is(tanh(-1e6), -1);
});
