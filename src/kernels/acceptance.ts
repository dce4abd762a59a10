import type { PositionNoise } from './noise.ts';
import type { Rng } from './rng.ts';
import { argmax } from './sampling.ts';

/**
 * Speculative review of one drafted block (SPEC §4.3).
 *
 * The drafted tokens x_0..x_{k-1} each come with q_i, the distribution x_i was actually drawn from
 * (undefined = one-hot at x_i: any deterministic drafter, and the safe choice whenever the true q
 * is unknown). The reviewer's processed distributions p_0..p_k are computed lazily, so positions
 * after the first rejection cost nothing. x_i is accepted with probability min(1, l·p_i(x_i)/q_i(x_i));
 * at the first rejection a token is drawn from norm(max(0, p_i − q_i/l)); when every draft is
 * accepted, a bonus token is drawn from p_k.
 *
 * With lenience l = 1 every emitted token is distributed exactly as the reviewer's p (so the output
 * equals sampling from the reviewer alone, and p_i may serve as q_i for the level above). l > 1
 * accepts more and is lossy; it is for reviews between drafters only, never at the target, and a
 * lenient level must pass its tokens up as one-hot.
 *
 * A q row may be narrower than p (a drafter whose embedding is padded less than the reviewer's, over
 * one tokenizer): it is 0 past its width. The proof of exactness needs only that x_i was drawn from
 * q_i; the residual's normaliser 1 − Σ min(p, q) holds over the union of the supports.
 */
export interface ReviewOutcome {
  /** Drafted tokens accepted (a prefix of the block): 0..k. */
  readonly accepted: number;
  /** The reviewer's own token: the correction at position `accepted`, or the bonus when accepted = k. */
  readonly token: number;
}

export function review(
  drafts: readonly number[],
  q: readonly (Float32Array | undefined)[],
  p: (position: number) => Float32Array,
  rng: Rng,
  lenience = 1,
): ReviewOutcome {
  if (!(lenience >= 1)) throw new RangeError(`lenience must be >= 1, got ${lenience}`);
  for (let i = 0; i < drafts.length; i++) {
    const x = drafts[i]!;
    const pi = p(i);
    const qi = q[i];
    const px = pi[x]!;
    const qx = qi ? (qi[x] ?? 0) : 1;
    const ratio = qx > 0 ? (lenience * px) / qx : 1;
    if (ratio >= 1 || rng.uniform() < ratio) continue;
    return { accepted: i, token: drawResidual(pi, qi, x, lenience, rng) };
  }
  return { accepted: drafts.length, token: drawFrom(p(drafts.length), rng) };
}

/**
 * Drafter-invariant review (Daliri, Musco & Suresh 2024; see Verification): the reviewer draws its own
 * token at each draft position with the request's position-keyed noise, and accepts x_i while it
 * equals that draw; the first mismatch is corrected with the draw, and a full acceptance earns the
 * draw after the last draft as bonus. `start` is the absolute position of drafts[0]. The output is
 * the reviewer's own noise-keyed sampling token for token, so neither q nor an RNG is involved; a
 * one-hot p (greedy) makes it the greedy review.
 */
export function reviewInvariant(drafts: readonly number[], p: (position: number) => Float32Array, noise: PositionNoise, start: number): ReviewOutcome {
  for (let i = 0; i < drafts.length; i++) {
    const own = noise.draw(p(i), start + i);
    if (own !== drafts[i]) return { accepted: i, token: own };
  }
  return { accepted: drafts.length, token: noise.draw(p(drafts.length), start + drafts.length) };
}

/**
 * Greedy lenient review between drafters, as in the CS Drafting code: x_i is accepted when it is
 * the reviewer's argmax or when softmax(logits)(x_i) >= 1/l (the draft treated as one-hot); the
 * first rejection is corrected with the argmax, and a full acceptance earns the argmax as bonus.
 * Deterministic; lossy by design, so never used at the target.
 */
export function reviewGreedyLenient(drafts: readonly number[], logits: (position: number) => Float32Array, lenience: number): ReviewOutcome {
  for (let i = 0; i < drafts.length; i++) {
    const row = logits(i);
    const best = argmax(row);
    if (best === drafts[i] || softmaxAt(row, drafts[i]!) * lenience >= 1) continue;
    return { accepted: i, token: best };
  }
  return { accepted: drafts.length, token: argmax(logits(drafts.length)) };
}

function softmaxAt(row: Float32Array, x: number): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return Math.exp(row[x]! - max) / sum;
}

/** A draw from norm(max(0, p − q/l)), with q one-hot at x when undefined. */
function drawResidual(p: Float32Array, q: Float32Array | undefined, x: number, lenience: number, rng: Rng): number {
  const r = new Float64Array(p.length);
  let sum = 0;
  for (let t = 0; t < p.length; t++) {
    const qt = q ? (q[t] ?? 0) : t === x ? 1 : 0;
    const v = p[t]! - qt / lenience;
    if (v > 0) {
      r[t] = v;
      sum += v;
    }
  }
  // A rejection implies p(x) < q(x)/l, hence positive residual mass; guard against rounding only.
  return sum > 0 ? drawWeighted(r, sum, rng) : drawFrom(p, rng);
}

/** A draw from a normalised distribution; one-hot rows return their token without using the RNG. */
export function drawFrom(p: Float32Array, rng: Rng): number {
  let nonzero = -1;
  let count = 0;
  for (let t = 0; t < p.length && count < 2; t++) {
    if (p[t]! > 0) {
      nonzero = t;
      count++;
    }
  }
  if (count === 1) return nonzero;
  return drawWeighted(p, 1, rng);
}

function drawWeighted(w: ArrayLike<number>, total: number, rng: Rng): number {
  const u = rng.uniform() * total;
  let acc = 0;
  let last = 0;
  for (let t = 0; t < w.length; t++) {
    if (w[t]! <= 0) continue;
    acc += w[t]!;
    last = t;
    if (u < acc) return t;
  }
  return last;
}
