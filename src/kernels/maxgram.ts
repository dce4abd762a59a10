/**
 * MaG, the Max-Gram statistical drafter of CS Drafting (SPEC §4.1).
 *
 * Given S = prompt ‖ generated, find the longest suffix of S that occurs earlier in S and propose
 * the tokens that followed its earliest occurrence. When that continuation reaches the end of S
 * before k tokens, S is extended with what was proposed and matched again ("continue from the
 * proposed tokens"); once nothing matches, the rest is filled from the training corpus's statistics:
 * a trigram table (each pair of tokens' most frequent successor, where it differs from the bigram's;
 * TrigramTable), then a bigram table (each token's most frequent successor). With a trigram table
 * MaG copies only from matches of at least 2 tokens: after a match under 2 tokens, MaG's first draft
 * was the target's next token 0.24-0.29 of the time with one-token copies and the bigram, 0.46-0.47
 * with the trigram table (tools/bench/mag-replay.ts, 32 tuning prompts). Without a trigram table
 * (and minMatch 1) MaG is the paper's.
 *
 * The index is a suffix automaton over token ids: appending a token is amortised O(1), and every
 * append is recorded in an undo log so that `truncate` rolls back to any earlier length, as a
 * model's KV cache does after a rejected draft. The earliest occurrence of a state's strings is its
 * `firstEnd`, which clones inherit.
 *
 * Variant `occurrence: 'recent'` copies from the most recent earlier occurrence instead, as
 * prompt-lookup decoding does. The automaton cannot give that in O(1), so a second index maps each
 * suffix of up to `maxRecentLength` tokens (a 52-bit rolling hash, every hit verified token by
 * token) to where it last ended: O(maxRecentLength) per token, and matches are capped at that length.
 */
/**
 * bigram[a] = most frequent successor of token a (without it, unmatched positions repeat the last
 * token); trigram: the most frequent successor of a pair, where it differs from the bigram's,
 * consulted first.
 */
export interface MaxGramOptions extends MagTables {
  /** Suffix matches shorter than this count as no match (default 2 with a trigram table, else 1). */
  readonly minMatch?: number;
  /** Which earlier occurrence of the longest repeated suffix to copy from (default 'earliest', as CS Drafting). */
  readonly occurrence?: 'earliest' | 'recent';
  /** Longest suffix the 'recent' variant matches (default 16). */
  readonly maxRecentLength?: number;
}

/** MaG's fill tables, as a family ships them (family.json `bigram` and `trigram`). */
export interface MagTables {
  readonly bigram?: Uint32Array;
  readonly trigram?: TrigramTable;
}

/** First bytes of a trigram table file: "MAG3". */
const TRIGRAM_MAGIC = 0x3347414d;

/**
 * MaG's trigram fill: for a pair of tokens (a, b), the most frequent token after them in the training
 * corpus, kept only where it differs from the bigram table's successor of b (tools/train/bigram.py).
 * Stored as compressed rows: for each a, its pairs' b in ascending order and their successors.
 *
 * File layout (little-endian uint32 throughout): the magic "MAG3", the vocabulary size V, the entry
 * count N, row offsets [V + 1] (entries of a are offsets[a]..offsets[a+1]), the b of each entry [N],
 * the successor of each entry [N].
 */
export class TrigramTable {
  private constructor(
    /** Tokens the table covers (ids 0..vocabSize-1). */
    readonly vocabSize: number,
    private readonly offsets: Uint32Array,
    private readonly seconds: Uint32Array,
    private readonly successors: Uint32Array,
  ) {}

  /** Entries: pairs whose successor the table gives. */
  get size(): number {
    return this.seconds.length;
  }

  /** The most frequent token after (a, b) where the table has one, else undefined (the bigram's). */
  next(a: number, b: number): number | undefined {
    if (a >= this.vocabSize) return undefined;
    let lo = this.offsets[a]!;
    let hi = this.offsets[a + 1]! - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const x = this.seconds[mid]!;
      if (x === b) return this.successors[mid]!;
      if (x < b) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /**
   * Reads a table from a file's bytes; `what` names it in errors. Throws RangeError when the bytes
   * are not a trigram table: another magic, a length that does not match its header, offsets that
   * are not ascending or run past the entries, or an id at or past its vocabulary.
   */
  static read(bytes: Uint8Array, what: string): TrigramTable {
    const words = Math.floor(bytes.byteLength / 4);
    if (bytes.byteLength % 4 || words < 3) throw new RangeError(`${what} is not a trigram table: ${bytes.byteLength} bytes`);
    const all = new Uint32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    const [magic, vocab, n] = [all[0]!, all[1]!, all[2]!];
    if (magic !== TRIGRAM_MAGIC) throw new RangeError(`${what} is not a trigram table (it does not start with "MAG3")`);
    if (words !== 3 + vocab + 1 + 2 * n) throw new RangeError(`${what} is truncated or padded: its header says ${vocab} tokens and ${n} entries, ${4 * (3 + vocab + 1 + 2 * n)} bytes, and it has ${bytes.byteLength}`);
    const offsets = all.subarray(3, 3 + vocab + 1);
    const seconds = all.subarray(4 + vocab, 4 + vocab + n);
    const successors = all.subarray(4 + vocab + n);
    if (offsets[0] !== 0 || offsets[vocab] !== n || offsets.some((o, i) => i > 0 && o < offsets[i - 1]!)) throw new RangeError(`${what} has row offsets that do not ascend from 0 to its ${n} entries`);
    // next() searches a row by bisection: its second tokens must strictly ascend
    for (let a = 0; a < vocab; a++) {
      for (let i = offsets[a]! + 1; i < offsets[a + 1]!; i++) {
        if (seconds[i]! <= seconds[i - 1]!) throw new RangeError(`${what} has the pairs of token ${a} out of order (their second tokens must strictly ascend)`);
      }
    }
    if (seconds.some((x) => x >= vocab) || successors.some((x) => x >= vocab)) throw new RangeError(`${what} names a token id at or past its vocabulary of ${vocab}`);
    return new TrigramTable(vocab, offsets, seconds, successors);
  }
}

const P1 = 67108859; // primes below 2^26: two hashes combine into one key below 2^52
const P2 = 67108837;

/**
 * For each appended position i, the longest suffix of S[0..i] (up to maxLength tokens) that also
 * ended earlier, and where it most recently ended; undoable like the automaton.
 */
class RecentIndex {
  private readonly maps: Map<number, number>[];
  readonly matchLength: number[] = [];
  readonly matchEnd: number[] = [];
  private readonly undo: [number, number, number][][] = [];

  constructor(private readonly maxLength: number) {
    this.maps = Array.from({ length: maxLength + 1 }, () => new Map());
  }

  append(tokens: readonly number[]): void {
    const i = tokens.length - 1;
    let h1 = 0;
    let h2 = 0;
    let best = 0;
    let bestEnd = -1;
    const entries: [number, number, number][] = [];
    for (let len = 1; len <= Math.min(this.maxLength, i + 1); len++) {
      const t = tokens[i - len + 1]! + 1;
      h1 = (h1 * 40503 + t) % P1;
      h2 = (h2 * 65599 + t) % P2;
      const key = h1 * P2 + h2;
      const prev = this.maps[len]!.get(key);
      if (prev !== undefined && best === len - 1 && same(tokens, prev, i, len)) {
        best = len;
        bestEnd = prev;
      }
      entries.push([len, key, prev ?? -1]);
      this.maps[len]!.set(key, i);
    }
    this.undo.push(entries);
    this.matchLength.push(best);
    this.matchEnd.push(bestEnd);
  }

  truncate(length: number): void {
    while (this.undo.length > length) {
      const entries = this.undo.pop()!;
      for (let j = entries.length - 1; j >= 0; j--) {
        const [len, key, old] = entries[j]!;
        if (old < 0) this.maps[len]!.delete(key);
        else this.maps[len]!.set(key, old);
      }
      this.matchLength.pop();
      this.matchEnd.pop();
    }
  }
}

/** tokens[a-len+1..a] equals tokens[b-len+1..b]. */
function same(tokens: readonly number[], a: number, b: number, len: number): boolean {
  for (let k = 0; k < len; k++) if (tokens[a - k] !== tokens[b - k]) return false;
  return true;
}

/** One reverted change: a transition (state, token) that held `old` (-1: absent), or a link. */
type Undo = { readonly kind: 'trans'; readonly state: number; readonly token: number; readonly old: number } | { readonly kind: 'link'; readonly state: number; readonly old: number };

interface Mark {
  readonly states: number;
  readonly last: number;
  readonly log: number;
}

/** The 'recent' variant's default cap on match length, in tokens. */
export const RECENT_MATCH_LIMIT = 16;

export class MaxGram {
  private readonly len: number[] = [0];
  private readonly link: number[] = [-1];
  private readonly firstEnd: number[] = [-1];
  private readonly next: Map<number, number>[] = [new Map()];
  private last = 0;
  private readonly tokens: number[] = [];
  private readonly log: Undo[] = [];
  /** marks[i] = automaton size before token i was appended. */
  private readonly marks: Mark[] = [];
  private readonly bigram: Uint32Array | undefined;
  private readonly trigram: TrigramTable | undefined;
  private readonly minMatch: number;
  private readonly recent: RecentIndex | undefined;

  constructor(options: MaxGramOptions = {}) {
    this.bigram = options.bigram;
    this.trigram = options.trigram;
    this.minMatch = Math.max(1, options.minMatch ?? (options.trigram ? 2 : 1));
    if (options.occurrence === 'recent') this.recent = new RecentIndex(options.maxRecentLength ?? RECENT_MATCH_LIMIT);
  }

  /** Tokens indexed so far (|S|). */
  get length(): number {
    return this.tokens.length;
  }

  /** Token i of S. */
  at(i: number): number | undefined {
    return this.tokens[i];
  }

  /** Suffix matches shorter than this count as no match (MaxGramOptions.minMatch). */
  get minMatchLength(): number {
    return this.minMatch;
  }

  /** The indexed sequence S (a copy). */
  sequence(): number[] {
    return [...this.tokens];
  }

  /**
   * Size of the index: automaton states and undo entries. Every loop iteration of an append writes
   * one undo entry, so `undoEntries` bounds the work done. Both stay linear in |S|: at most 2|S|
   * states; at most 3|S| transitions, one link change per clone and an amortised-linear number of
   * redirected transitions. That is what makes appends amortised O(1).
   */
  indexSize(): { states: number; undoEntries: number } {
    return { states: this.len.length, undoEntries: this.log.length };
  }

  append(tokens: readonly number[]): void {
    for (const t of tokens) this.extend(t);
  }

  /** Forgets every token at index >= length, restoring the index exactly as it was then. */
  truncate(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.tokens.length) {
      throw new RangeError(`cannot truncate MaG history of ${this.tokens.length} tokens to ${length}`);
    }
    if (length === this.tokens.length) return;
    const mark = this.marks[length]!;
    for (let i = this.log.length - 1; i >= mark.log; i--) {
      const u = this.log[i]!;
      if (u.kind === 'link') this.link[u.state] = u.old;
      else if (u.old < 0) this.next[u.state]!.delete(u.token);
      else this.next[u.state]!.set(u.token, u.old);
    }
    this.log.length = mark.log;
    this.len.length = this.link.length = this.firstEnd.length = this.next.length = mark.states;
    this.last = mark.last;
    this.tokens.length = length;
    this.marks.length = length;
    this.recent?.truncate(length);
  }

  /**
   * The longest suffix of S with an earlier occurrence: its length and the index in S where its
   * earliest (or, for 'recent', most recent) occurrence ends; length 0 and end -1 when none.
   */
  longestMatch(): { length: number; end: number } {
    if (this.recent) {
      const i = this.tokens.length - 1;
      return i < 0 ? { length: 0, end: -1 } : { length: this.recent.matchLength[i]!, end: this.recent.matchEnd[i]! };
    }
    const v = this.link[this.last] ?? -1;
    if (v <= 0) return { length: 0, end: -1 };
    return { length: this.len[v]!, end: this.firstEnd[v]! };
  }

  /**
   * Proposes k tokens to follow S: copied from matches, then filled from the trigram and bigram tables unless
   * `fill` is false (then fewer than k, or none, where nothing matches). S itself is unchanged afterwards.
   */
  propose(k: number, fill = true): number[] {
    const out: number[] = [];
    if (k <= 0) return out;
    const base = this.tokens.length;
    while (out.length < k) {
      const m = this.longestMatch();
      if (m.length < this.minMatch) break;
      const n = this.tokens.length;
      const copied = this.tokens.slice(m.end + 1, Math.min(n, m.end + 1 + (k - out.length)));
      out.push(...copied);
      this.append(copied);
    }
    this.truncate(base);
    const at = (i: number) => (i < base ? this.tokens[i] : out[i - base]);
    while (fill && out.length < k && base + out.length > 0) {
      const prev = at(base + out.length - 1)!;
      const before = at(base + out.length - 2);
      const fromPair = before === undefined ? undefined : this.trigram?.next(before, prev);
      out.push(fromPair ?? (this.bigram ? this.bigram[prev]! : prev));
    }
    return out;
  }

  private extend(c: number): void {
    const pos = this.tokens.length;
    this.marks.push({ states: this.len.length, last: this.last, log: this.log.length });
    this.tokens.push(c);
    const cur = this.newState(this.len[this.last]! + 1, pos, -1, new Map());
    let p = this.last;
    while (p !== -1 && !this.next[p]!.has(c)) {
      this.setNext(p, c, cur);
      p = this.link[p]!;
    }
    if (p === -1) {
      this.link[cur] = 0;
    } else {
      const q = this.next[p]!.get(c)!;
      if (this.len[p]! + 1 === this.len[q]!) {
        this.link[cur] = q;
      } else {
        const clone = this.newState(this.len[p]! + 1, this.firstEnd[q]!, this.link[q]!, new Map(this.next[q]!));
        while (p !== -1 && this.next[p]!.get(c) === q) {
          this.setNext(p, c, clone);
          p = this.link[p]!;
        }
        this.log.push({ kind: 'link', state: q, old: this.link[q]! });
        this.link[q] = clone;
        this.link[cur] = clone;
      }
    }
    this.last = cur;
    this.recent?.append(this.tokens);
  }

  private newState(len: number, firstEnd: number, link: number, next: Map<number, number>): number {
    this.len.push(len);
    this.firstEnd.push(firstEnd);
    this.link.push(link);
    this.next.push(next);
    return this.len.length - 1;
  }

  private setNext(state: number, token: number, to: number): void {
    const map = this.next[state]!;
    this.log.push({ kind: 'trans', state, token, old: map.get(token) ?? -1 });
    map.set(token, to);
  }
}
