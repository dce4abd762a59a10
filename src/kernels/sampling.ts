import type { Rng } from './rng.ts';

/**
 * How a distribution is derived from logits: the logits processors, then the sampling filters, in
 * the order transformers and vLLM apply them. temperature 0 is greedy (one-hot at the argmax of the
 * processed logits); topK 0, topP 1 and minP 0 switch those filters off, as do the processors'
 * neutral values. The same processed distribution, with each position's own prefix, is what every
 * level of a cascade drafts from and what speculative acceptance compares (SPEC §4.3), so the output
 * stays the target's with any of them on.
 */
export interface SamplingParams {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  /** min-p (0 = off): drop tokens whose probability is below minP times the most likely one's. */
  readonly minP?: number;
  /**
   * transformers' / vLLM's repetition penalty (1 = off): the logit of every token in the prefix
   * (prompt and output) is divided by it when positive, multiplied when negative (CTRL, Keskar 2019).
   */
  readonly repetitionPenalty?: number;
  /** OpenAI's presence penalty (0 = off): subtracted once from the logit of every token in the output so far. */
  readonly presencePenalty?: number;
  /** OpenAI's frequency penalty (0 = off): subtracted from a token's logit once per time it is in the output so far. */
  readonly frequencyPenalty?: number;
  /** OpenAI's logit_bias: token id → value added to its logit (-100 bans, 100 forces in practice). */
  readonly logitBias?: Readonly<Record<number, number>>;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1 };

/** The logits processors and min-p a request may set (each optional: unset is off). */
export type ProcessorSettings = Pick<SamplingParams, 'minP' | 'repetitionPenalty' | 'presencePenalty' | 'frequencyPenalty' | 'logitBias'>;

/** `base` with the processors that are set (undefined ones left out, so they stay off). */
export function withProcessors(base: SamplingParams, p: { readonly [K in keyof ProcessorSettings]?: ProcessorSettings[K] | undefined }): SamplingParams {
  return { ...base, ...Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)) };
}

/**
 * The tokens a position's distribution is conditioned on: tokens[0..length) (prompt, output, and any
 * drafts before the position), of which tokens[promptLength..length) are output (presence and
 * frequency penalties count only those, as OpenAI and vLLM do).
 */
export interface Prefix {
  readonly tokens: readonly number[];
  readonly length: number;
  readonly promptLength: number;
}

/** Whether any logits processor (one that looks at the prefix or the bias) is on. */
export function hasProcessors(p: SamplingParams): boolean {
  return (p.repetitionPenalty ?? 1) !== 1 || (p.presencePenalty ?? 0) !== 0 || (p.frequencyPenalty ?? 0) !== 0 || (p.logitBias !== undefined && Object.keys(p.logitBias).length > 0);
}

/**
 * The logits after the processors (logit_bias, then the repetition, presence and frequency
 * penalties over `prefix`), as a new array; `logits` itself when none is on. Throws RangeError when
 * a processor needs the prefix and none is given.
 */
export function processLogits(logits: Float32Array, params: SamplingParams, prefix?: Prefix): Float32Array {
  if (!hasProcessors(params)) return logits;
  const out = logits.slice();
  for (const [id, bias] of Object.entries(params.logitBias ?? {})) {
    const t = Number(id);
    if (t < out.length) out[t] = out[t]! + bias;
  }
  const repetition = params.repetitionPenalty ?? 1;
  const presence = params.presencePenalty ?? 0;
  const frequency = params.frequencyPenalty ?? 0;
  if (repetition === 1 && presence === 0 && frequency === 0) return out;
  if (!prefix) throw new RangeError('repetition, presence and frequency penalties need the prefix of the position');
  const seen = new Set<number>();
  const counts = new Map<number, number>();
  for (let i = 0; i < prefix.length; i++) {
    const t = prefix.tokens[i]!;
    seen.add(t);
    if (i >= prefix.promptLength) counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  if (repetition !== 1) {
    for (const t of seen) if (t < out.length) out[t] = out[t]! > 0 ? out[t]! / repetition : out[t]! * repetition;
  }
  for (const [t, n] of counts) if (t < out.length) out[t] = out[t]! - presence - frequency * n;
  return out;
}

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

/**
 * The index of the largest of `scores` (float32 [vocab]: processed logits, or a distribution) other
 * than `token`'s, the lowest index on ties; undefined when none is above `floor` (-Infinity for
 * logits, 0 for probabilities: outside the support).
 */
export function runnerUp(scores: Float32Array, token: number, floor: number): number | undefined {
  let best: number | undefined;
  let bestScore = floor;
  for (let i = 0; i < scores.length; i++) {
    if (i !== token && scores[i]! > bestScore) {
      bestScore = scores[i]!;
      best = i;
    }
  }
  return best;
}

/** A `vocab`-wide row of a row-major [rows, vocab] logits block (a view, not a copy). */
export const logitsRow = (logits: Float32Array, row: number, vocab: number): Float32Array => logits.subarray(row * vocab, (row + 1) * vocab);

/**
 * The processed distribution over the vocabulary: the logits processors (processLogits, with the
 * position's prefix), then softmax(logits / T) restricted to the top-k tokens, renormalised, then to
 * the smallest set whose mass reaches top-p, then to the tokens of at least min-p times the top
 * probability, renormalised: transformers' order (and vLLM v0's; v1 applies min-p before top-k/top-p). Ties at the top-k boundary keep every
 * tied token; greedy returns one-hot at the processed argmax. Returns a new Float32Array.
 */
export function distribution(logits: Float32Array, params: SamplingParams, prefix?: Prefix): Float32Array {
  const n = logits.length;
  const x = processLogits(logits, params, prefix);
  const probs = new Float32Array(n);
  if (params.temperature === 0) {
    probs[argmax(x)] = 1;
    return probs;
  }
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i]! > max) max = x[i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp((x[i]! - max) / params.temperature);
    probs[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) probs[i] = probs[i]! / sum;
  const filterK = params.topK > 0 && params.topK < n;
  const minP = params.minP ?? 0;
  if (!filterK && params.topP >= 1 && minP <= 0) return probs;
  // Candidates in order (most probable first, lower id first among equals): with top-k, only the
  // tokens at or above the k-th largest probability (ties at the boundary kept), found in O(n), so a
  // 152k vocabulary sorts a few hundred entries, not all of them.
  const candidates = filterK ? atLeast(probs, kthLargest(probs, params.topK)) : minP > 0 && params.topP >= 1 ? atLeast(probs, minP * probs[argmax(probs)]!) : Array.from({ length: n }, (_, i) => i);
  const order = candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
  let keep = order.length;
  if (params.topP < 1) {
    // top-p over the top-k distribution renormalised
    let total = 0;
    for (let i = 0; i < keep; i++) total += probs[order[i]!]!;
    let mass = 0;
    for (let i = 0; i < keep; i++) {
      mass += probs[order[i]!]!;
      if (mass >= params.topP * total) {
        keep = i + 1;
        break;
      }
    }
  }
  if (minP > 0) {
    const floor = minP * probs[order[0]!]!;
    while (keep > 1 && probs[order[keep - 1]!]! < floor) keep--;
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

/**
 * Most alternatives a token's log probability may list: OpenAI's top_logprobs limit (chat 0..20;
 * completions' `logprobs` is 0..5 there, vLLM takes up to 20 on both).
 */
export const MAX_TOP_LOGPROBS = 20;

/**
 * The log probability (natural log) of an emitted token under the target's processed distribution
 * at its position, and the `top` most likely tokens there, most likely first (lower id first among
 * equals). A token of probability 0 (outside a top-k/top-p/min-p filter) reads LOGPROB_FLOOR, as vLLM
 * writes -inf, since JSON has no infinity.
 */
export interface TokenLogprob {
  readonly token: number;
  readonly logprob: number;
  readonly top: readonly { readonly token: number; readonly logprob: number }[];
}

/** The log probability reported for a probability of 0 (vLLM's -9999.0). */
export const LOGPROB_FLOOR = -9999;

const logOf = (p: number): number => (p > 0 ? Math.log(p) : LOGPROB_FLOOR);

/**
 * The distribution log probabilities are read from: the request's processed distribution
 * (`distribution`, all processors and filters), at temperature 1 when the request is greedy (a
 * greedy distribution is one-hot, which would report 0 for the emitted token and nothing else).
 */
export function logprobDistribution(logits: Float32Array, params: SamplingParams, prefix?: Prefix): Float32Array {
  return distribution(logits, params.temperature === 0 ? { ...params, temperature: 1 } : params, prefix);
}

/** `token`'s log probability under `probs` and the `top` most likely entries (0..MAX_TOP_LOGPROBS). */
export function tokenLogprob(probs: Float32Array, token: number, top: number): TokenLogprob {
  if (!(Number.isInteger(top) && top >= 0 && top <= MAX_TOP_LOGPROBS)) throw new RangeError(`top log probabilities must be 0..${MAX_TOP_LOGPROBS}, got ${top}`);
  const entries: { token: number; logprob: number }[] = [];
  if (top > 0) {
    // a threshold of 0 (fewer than `top` tokens left by the filters) would sort the whole vocabulary:
    // the non-zero ones are sorted, the slots left go to the lowest ids of probability 0
    const kth = kthLargest(probs, Math.min(top, probs.length));
    const order = atLeast(probs, kth > 0 ? kth : Number.MIN_VALUE).sort((a, b) => probs[b]! - probs[a]! || a - b);
    for (let t = 0; order.length < top && t < probs.length; t++) if (!(probs[t]! > 0)) order.push(t);
    for (const t of order.slice(0, top)) entries.push({ token: t, logprob: logOf(probs[t]!) });
  }
  return { token, logprob: logOf(probs[token] ?? 0), top: entries };
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

/** The next token for one logits row: the processed argmax when greedy, otherwise a draw from `distribution`. */
export function nextToken(logits: Float32Array, params: SamplingParams, rng: Rng, prefix?: Prefix): number {
  return params.temperature === 0 ? argmax(processLogits(logits, params, prefix)) : sample(distribution(logits, params, prefix), rng);
}

/** The reason sampling parameters are out of range, or undefined when they are valid. */
export function checkSampling(p: SamplingParams): string | undefined {
  if (!(Number.isFinite(p.temperature) && p.temperature >= 0)) return `temperature must be a finite number >= 0, got ${p.temperature}`;
  if (!(Number.isInteger(p.topK) && p.topK >= 0)) return `top-k must be an integer >= 0, got ${p.topK}`;
  if (!(p.topP > 0 && p.topP <= 1)) return `top-p must be in (0, 1], got ${p.topP}`;
  if (p.minP !== undefined && !(p.minP >= 0 && p.minP <= 1)) return `min-p must be in [0, 1], got ${p.minP}`;
  if (p.repetitionPenalty !== undefined && !(Number.isFinite(p.repetitionPenalty) && p.repetitionPenalty > 0)) return `repetition penalty must be a finite number > 0, got ${p.repetitionPenalty}`;
  for (const [name, v] of [['presence', p.presencePenalty], ['frequency', p.frequencyPenalty]] as const) {
    if (v !== undefined && !(v >= -2 && v <= 2)) return `${name} penalty must be in [-2, 2], got ${v}`;
  }
  for (const [id, v] of Object.entries(p.logitBias ?? {})) {
    if (!/^\d+$/.test(id) || !(Number(id) <= 0xffffffff) || !(v >= -100 && v <= 100)) return `logit_bias must map token ids (below 2^32) to values in [-100, 100], got ${id}: ${v}`;
  }
  return undefined;
}
