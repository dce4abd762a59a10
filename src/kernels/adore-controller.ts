/**
 * The ADORE controller at run time (docs/adore.md; trained by tools/train/controller.py): a GRU
 * state per token, computed once when the token arrives, and a pairwise score of every token for
 * the current step,
 *   s_{t,i} = v . tanh(A z_i + a + B z_t + u log(1 + t - i)) + c.
 * The network is tiny (a 32-wide embedding, 64 hidden units), so it runs here in plain TypeScript:
 * a step costs a few microseconds per token, far below one message to a model worker. The same
 * weights are exported to ONNX for other runtimes; the tests check both against torch.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelLoadError } from '../errors.ts';
import { describeIssues } from '../issues.ts';

const Tensor = z.object({ offset: z.number().int().nonnegative(), shape: z.array(z.number().int().positive()) });
const Manifest = z.object({
  format: z.literal('adore-controller/1'),
  vocab_size: z.number().int().positive(),
  embedding: z.number().int().positive(),
  hidden: z.number().int().positive(),
  weights: z.object({ file: z.string(), dtype: z.literal('float32'), tensors: z.record(z.string(), Tensor) }),
});

const NAMES = ['embed', 'w_ih', 'w_hh', 'b_ih', 'b_hh', 'a_w', 'a_b', 'b_w', 'u', 'v_w', 'v_b'] as const;
type Weights = Record<(typeof NAMES)[number], Float32Array>;

export class AdoreController {
  private constructor(
    readonly dir: string,
    readonly vocabSize: number,
    readonly embedding: number,
    readonly hidden: number,
    private readonly w: Weights,
  ) {}

  /** Loads controller.json + controller.bin from `dir`, with clear errors for a bad directory. */
  static load(dir: string): AdoreController {
    const manifestPath = join(dir, 'controller.json');
    if (!existsSync(manifestPath)) throw new ModelLoadError(`no ADORE controller in ${dir} (controller.json missing): train one with tools/train/controller.py`);
    const parsed = Manifest.safeParse(JSON.parse(readFileSync(manifestPath, 'utf8')));
    if (!parsed.success) throw new ModelLoadError(`${manifestPath} is not an ADORE controller manifest: ${describeIssues(parsed.error)}`);
    const m = parsed.data;
    const buf = readFileSync(join(dir, m.weights.file));
    const all = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    const w = {} as Weights;
    for (const name of NAMES) {
      const t = m.weights.tensors[name];
      if (!t) throw new ModelLoadError(`${manifestPath} lacks the tensor ${name}`);
      const size = t.shape.reduce((a, b) => a * b, 1);
      if (t.offset + size > all.length) throw new ModelLoadError(`${m.weights.file} is too short for ${name}`);
      w[name] = all.slice(t.offset, t.offset + size);
    }
    const H = m.hidden;
    if (w.w_ih.length !== 3 * H * m.embedding || w.w_hh.length !== 3 * H * H || w.embed.length !== m.vocab_size * m.embedding) {
      throw new ModelLoadError(`${manifestPath}: tensor shapes do not match hidden ${H} and embedding ${m.embedding}`);
    }
    return new AdoreController(dir, m.vocab_size, m.embedding, H, w);
  }

  /** The next GRU state after `token` (torch.nn.GRU gate order r, z, n). */
  step(token: number, h: Float32Array): Float32Array {
    const { w, hidden: H, embedding: E } = this;
    const x = w.embed.subarray(token * E, (token + 1) * E);
    const gi = new Float32Array(3 * H);
    const gh = new Float32Array(3 * H);
    for (let r = 0; r < 3 * H; r++) {
      let a = w.b_ih[r]!;
      for (let c = 0; c < E; c++) a += w.w_ih[r * E + c]! * x[c]!;
      gi[r] = a;
      let b = w.b_hh[r]!;
      for (let c = 0; c < H; c++) b += w.w_hh[r * H + c]! * h[c]!;
      gh[r] = b;
    }
    const out = new Float32Array(H);
    for (let j = 0; j < H; j++) {
      const reset = sigmoid(gi[j]! + gh[j]!);
      const update = sigmoid(gi[H + j]! + gh[H + j]!);
      const cand = Math.tanh(gi[2 * H + j]! + reset * gh[2 * H + j]!);
      out[j] = (1 - update) * cand + update * h[j]!;
    }
    return out;
  }

  /** A z + a: the part of a token's score that does not depend on the step (cached per token). */
  key(state: Float32Array): Float32Array {
    return this.affine(this.w.a_w, state, this.w.a_b);
  }

  /** B z_t: the part that depends only on the step. */
  query(state: Float32Array): Float32Array {
    return this.affine(this.w.b_w, state, undefined);
  }

  /**
   * The scores s_{t,i} of `positions` at step t = `newest` with query `q` (B z_t): row p of `keys`
   * (width H) is token p's cached key A z_p + a, at distance newest - p. One loop, no allocation
   * per token.
   */
  scoreRows(keys: Float32Array, positions: readonly number[], q: Float32Array, newest: number): Float64Array {
    const { w, hidden: H } = this;
    const v = w.v_w;
    const u = w.u;
    const bias = w.v_b[0]!;
    if (this.logDistance.length <= newest) this.logDistance = Float64Array.from({ length: 2 * (newest + 1) }, (_, d) => Math.log1p(d));
    const logDistance = this.logDistance;
    const out = new Float64Array(positions.length);
    for (let n = 0; n < positions.length; n++) {
      const p = positions[n]!;
      const ld = logDistance[Math.max(0, newest - p)]!;
      const base = p * H;
      let s = bias;
      for (let j = 0; j < H; j++) s += v[j]! * tanh(keys[base + j]! + q[j]! + u[j]! * ld);
      out[n] = s;
    }
    return out;
  }

  /** log(1 + d) by distance d, grown as sequences get longer (shared by every sequence). */
  private logDistance = new Float64Array(0);

  private affine(m: Float32Array, x: Float32Array, bias: Float32Array | undefined): Float32Array {
    const H = this.hidden;
    const out = new Float32Array(H);
    for (let r = 0; r < H; r++) {
      let a = bias ? bias[r]! : 0;
      for (let c = 0; c < H; c++) a += m[r * H + c]! * x[c]!;
      out[r] = a;
    }
    return out;
  }
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/**
 * tanh within 1.2e-8 of Math.tanh, about 5x faster: the [7/6] Pade approximant near 0, exp beyond.
 * Scoring runs H tanh per cached token per step, which made it the largest cost of an ADORE step.
 */
export function tanh(x: number): number {
  if (x < 2 && x > -2) {
    const x2 = x * x;
    return (x * (135135 + x2 * (17325 + x2 * (378 + x2)))) / (135135 + x2 * (62370 + x2 * (3150 + 28 * x2)));
  }
  const e = Math.exp(-2 * Math.abs(x));
  const r = (1 - e) / (1 + e);
  return x < 0 ? -r : r;
}

/**
 * The controller following one sequence: a state per position and its cached key A z + a, the keys
 * in one growing row-major block so a step scores every token in one tight loop. A state depends on
 * every token up to its position, so states are kept only up to the first position whose token
 * changed (a rollback, re-fed with other tokens, however many) and recomputed from there.
 */
export class ControllerTrack {
  private readonly states: Float32Array[] = [];
  /** The token each state was computed after. */
  private readonly ids: number[] = [];
  private keys = new Float32Array(0);

  constructor(private readonly controller: AdoreController) {}

  /** Scores `positions` at step `newest`, after bringing the states up to `tokens[0..newest]`. */
  async score(positions: readonly number[], tokens: readonly number[], newest: number): Promise<Float64Array> {
    const c = this.controller;
    const H = c.hidden;
    const known = Math.min(this.states.length, newest + 1);
    let valid = 0;
    while (valid < known && this.ids[valid] === tokens[valid]) valid++;
    this.states.length = valid;
    this.ids.length = valid;
    if (this.keys.length < (newest + 1) * H) {
      const grown = new Float32Array(Math.max((newest + 1) * H, 2 * this.keys.length));
      grown.set(this.keys);
      this.keys = grown;
    }
    let h = this.states.at(-1) ?? new Float32Array(H);
    for (let i = this.states.length; i <= newest; i++) {
      const token = tokens[i]!;
      if (token < 0 || token >= c.vocabSize) throw new RangeError(`token ${token} outside the controller's vocabulary`);
      h = c.step(token, h);
      this.states.push(h);
      this.ids.push(token);
      this.keys.set(c.key(h), i * H);
    }
    return c.scoreRows(this.keys, positions, c.query(this.states[newest]!), newest);
  }
}
