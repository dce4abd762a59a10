/**
 * Automatic prefix caching (vLLM's APC, without its block table): a sequence whose first forward
 * starts with tokens another sequence of the same model already holds (a live one, or a released one
 * retained within RETAINED_TOKENS) copies that sequence's KV rows for them instead of computing them again (the `n` choices of one request, a chat's turns
 * sent as separate requests). Rows are matched by token ids only, so a source's rows must be
 * exactly its tokens at positions 0, 1, …: a sequence that evicted or inserted rows, or placed
 * tokens at explicit positions elsewhere, is never a source. Keys are stored after RoPE at those
 * same positions, so copied rows are what a fresh prefill would compute, up to the float rounding
 * of a pass of another shape.
 */
import { rowCount, type LogitsRows } from './session.ts';

/**
 * Fewest tokens worth reusing: below this a copy saves too little of a prefill to be worth looking
 * for (vLLM caches whole blocks of 16; llama.cpp's server reuses any common prefix of a slot).
 */
export const MIN_PREFIX = 32;

/**
 * Default tokens of released sequences' KV a model keeps as prefix sources (SessionOptions.prefixCacheTokens):
 * 24 KB a token for the bundled 6x512 target in float32 (48 MB in all), 57 KB for a 7B model with
 * grouped KV heads in float16.
 */
export const RETAINED_TOKENS = 2048;

/**
 * Released sequences kept as prefix sources within a budget of tokens in all, the least recently
 * released or used going first (`onDrop` frees what one holds). The runner keeps KV here; the
 * in-memory model, token histories.
 */
export class RetainedPrefixes<T> {
  private readonly kept: { value: T; tokens: readonly number[] }[] = [];

  constructor(
    readonly budget: number,
    private readonly onDrop: (value: T) => void = () => undefined,
  ) {}

  /** Whether a sequence of `length` tokens can be kept at all. */
  fits(length: number): boolean {
    return length > 0 && length <= this.budget;
  }

  /** Keeps `value`, whose rows hold `tokens` (it must fit), dropping the oldest over the budget. */
  keep(value: T, tokens: readonly number[]): void {
    this.kept.push({ value, tokens });
    let total = this.kept.reduce((a, k) => a + k.tokens.length, 0);
    while (total > this.budget) {
      const oldest = this.kept.shift()!;
      total -= oldest.tokens.length;
      this.onDrop(oldest.value);
    }
  }

  /** A source copied from: the last to go. */
  used(value: T): void {
    const at = this.kept.findIndex((k) => k.value === value);
    if (at >= 0) this.kept.push(...this.kept.splice(at, 1));
  }

  /** The kept sources with their tokens, for longestPrefix. */
  *sources(): Generator<readonly [T, readonly number[]]> {
    for (const k of this.kept) yield [k.value, k.tokens];
  }
}

/** What prefix reuse saved a session: forwards that started from another sequence's rows, and rows copied. */
export interface PrefixCacheStats {
  hits: number;
  reusedTokens: number;
}

/**
 * How many of `tokens` new tokens of a fresh sequence may come from a cache when a forward returns
 * `rows` logits rows: every row asked for must still be computed, and at least one token fed
 * ('all': none).
 */
export function reusableLimit(tokens: number, rows: LogitsRows): number {
  return tokens - Math.max(1, rowCount(rows, tokens));
}

/**
 * The source holding the longest common prefix with `inputIds`, capped at `limit` tokens, when it
 * is at least `min` tokens long (undefined otherwise). Ties go to the first source.
 */
export function longestPrefix<K>(inputIds: readonly number[], sources: Iterable<readonly [K, readonly number[]]>, limit: number, min = MIN_PREFIX): { source: K; length: number } | undefined {
  let best: { source: K; length: number } | undefined;
  if (limit < min) return undefined;
  for (const [source, tokens] of sources) {
    const end = Math.min(limit, tokens.length, inputIds.length);
    let n = 0;
    while (n < end && tokens[n] === inputIds[n]) n++;
    if (n >= min && n > (best?.length ?? 0)) best = { source, length: n };
  }
  return best;
}
