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
  // Candidates in order (most probable first, lower id first among equals): with top-k, only the
  // tokens at or above the k-th largest probability (ties at the boundary kept), found in O(n), so a
  // 152k vocabulary sorts a few hundred entries, not all of them.
  const candidates = filterK ? atLeast(probs, kthLargest(probs, params.topK)) : Array.from({ length: n }, (_, i) => i);
  const order = candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
  let keep = order.length;
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
  const out = new Float32Array(n);
  for (let i = 0; i < keep; i++) out[order[i]!] = probs[order[i]!]! / kept;
  return out;
}

/** Ids whose value is at least `threshold`. */
function atLeast(values: Float32Array, threshold: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < values.length; i++) if (values[i]! >= threshold) ids.push(i);
  return ids;
}

/** The k-th largest of `values` (1-based), by quickselect on a copy: O(n) on average. */
function kthLargest(values: Float32Array, k: number): number {
  const a = values.slice();
  let lo = 0;
  let hi = a.length - 1;
  const want = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! > pivot) i++;
      while (a[j]! < pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i++] = a[j]!;
        a[j--] = t;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return pivot;
  }
  return a[want]!;
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
