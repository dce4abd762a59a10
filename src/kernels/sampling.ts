import type { Rng } from './rng.ts';

/**
 * How a distribution is derived from logits. temperature 0 is greedy (one-hot at the argmax);
 * topK 0 and topP 1 switch those filters off. The same processed distribution is what speculative
 * acceptance compares (SPEC §4.3: p and q are the distributions after temperature/top-k/top-p).
 */
export interface SamplingParams {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1 };

/** Index of the largest value of `row`; the lowest index wins ties, as in torch.argmax. */
export function argmax(row: Float32Array): number {
  let best = 0;
  let bestVal = row[0]!;
  for (let i = 1; i < row.length; i++) {
    if (row[i]! > bestVal) {
      bestVal = row[i]!;
      best = i;
    }
  }
  return best;
}

/** A `vocab`-wide row of a row-major [rows, vocab] logits block (a view, not a copy). */
export const logitsRow = (logits: Float32Array, row: number, vocab: number): Float32Array => logits.subarray(row * vocab, (row + 1) * vocab);

/**
 * The processed distribution over the vocabulary: softmax(logits / T) restricted to the top-k
 * tokens and then to the smallest set whose mass reaches top-p, renormalised. Ties at the top-k
 * boundary keep every tied token; greedy returns one-hot. Returns a new Float32Array.
 */
export function distribution(logits: Float32Array, params: SamplingParams): Float32Array {
  const n = logits.length;
  const probs = new Float32Array(n);
  if (params.temperature === 0) {
    probs[argmax(logits)] = 1;
    return probs;
  }
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp((logits[i]! - max) / params.temperature);
    probs[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) probs[i] = probs[i]! / sum;
  const filterK = params.topK > 0 && params.topK < n;
  if (!filterK && params.topP >= 1) return probs;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => probs[b]! - probs[a]! || a - b);
  let keep = filterK ? params.topK : n;
  while (filterK && keep < n && probs[order[keep]!] === probs[order[keep - 1]!]) keep++;
  if (params.topP < 1) {
    let mass = 0;
    for (let i = 0; i < keep; i++) {
      mass += probs[order[i]!]!;
      if (mass >= params.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += probs[order[i]!]!;
  for (let i = keep; i < n; i++) probs[order[i]!] = 0;
  for (let i = 0; i < keep; i++) probs[order[i]!] = probs[order[i]!]! / kept;
  return probs;
}

/** Draws an index from a (normalised) distribution by inverse CDF with one uniform number. */
export function sample(probs: Float32Array, rng: Rng): number {
  const u = rng.uniform();
  let acc = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i]!;
    if (p <= 0) continue;
    acc += p;
    last = i;
    if (u < acc) return i;
  }
  return last;
}

/** The next token for one logits row: argmax when greedy, otherwise a draw from `distribution`. */
export function nextToken(logits: Float32Array, params: SamplingParams, rng: Rng): number {
  return params.temperature === 0 ? argmax(logits) : sample(distribution(logits, params), rng);
}

/** The reason sampling parameters are out of range, or undefined when they are valid. */
export function checkSampling(p: SamplingParams): string | undefined {
  if (!(Number.isFinite(p.temperature) && p.temperature >= 0)) return `temperature must be a finite number >= 0, got ${p.temperature}`;
  if (!(Number.isInteger(p.topK) && p.topK >= 0)) return `top-k must be an integer >= 0, got ${p.topK}`;
  if (!(p.topP > 0 && p.topP <= 1)) return `top-p must be in (0, 1], got ${p.topP}`;
  return undefined;
}
