import { review, reviewGreedyLenient, reviewInvariant, type ReviewOutcome } from '../kernels/acceptance.ts';
import { runnerDraws, type PositionNoise } from '../kernels/noise.ts';
import { MaxGram, type MaxGramOptions } from '../kernels/maxgram.ts';
import type { Rng } from '../kernels/rng.ts';
import { argmax, distribution, logitsRow, logprobDistribution, processLogits, runnerUp, sample, tokenLogprob, type SamplingParams, type TokenLogprob } from '../kernels/sampling.ts';
import { LevelUnavailableError } from '../errors.ts';
import { DECODE_STEPS, type ModelSession, type ServiceLoad } from '../models/session.ts';
import { BoundedSequence, FULL_CACHE, type KvPolicyConfig } from './bounded-kv.ts';

/**
 * A drafter narrower than a model above it (a smaller padded vocabulary over one tokenizer) met an id
 * it has no embedding for: a padding id the wider model sampled. The drafter cannot read the request
 * from here on, so the cascade drops it (exact: the levels left draft, the target reviews).
 */
export class UnreadableTokenError extends LevelUnavailableError {
  constructor(level: string, token: number, vocabSize: number) {
    super(level, `${level} cannot read token ${token}: its vocabulary has ${vocabSize} ids (a padding id of a wider model above it); it drafts no more for this request`);
  }
}

/** Throws UnreadableTokenError when `tokens` hold an id at or past `vocabSize`. */
export function checkReadable(level: string, tokens: readonly number[], vocabSize: number): void {
  for (const t of tokens) if (t >= vocabSize) throw new UnreadableTokenError(level, t, vocabSize);
}

/**
 * The growing token block of one round: tokens[0..committed) are the target's output so far
 * (prompt included); every later token is a draft carrying q, the distribution it was drawn from
 * given everything before it (undefined = one-hot).
 */
export class Block {
  readonly q: (Float32Array | undefined)[] = [];
  constructor(
    readonly tokens: number[],
    readonly committed: number,
  ) {}

  get length(): number {
    return this.tokens.length;
  }

  push(token: number, q: Float32Array | undefined): void {
    this.tokens.push(token);
    this.q[this.tokens.length - 1 - this.committed] = q;
  }

  qAt(position: number): Float32Array | undefined {
    return this.q[position - this.committed];
  }

  /** Keeps tokens[0..length). */
  cut(length: number): void {
    this.tokens.length = length;
    this.q.length = Math.max(0, length - this.committed);
  }
}

/** Per-model counters for one request. */
export interface LevelStats {
  forwardPasses: number;
  tokensScored: number;
  reviews: number;
  proposals: number;
  /** Wall time spent in this model's forward calls, milliseconds. */
  forwardMs: number;
}

export const newStats = (): LevelStats => ({ forwardPasses: 0, tokensScored: 0, reviews: 0, proposals: 0, forwardMs: 0 });

/**
 * One level of the cascade, wherever it runs: a model in this process (ModelLevel), MaG (MagLevel),
 * or a model hosted by an actor across a transport (the cluster's RemoteLevel). `propose` appends up
 * to `want` drafted tokens after the whole block; `review` is the lossless (or lenient) review of
 * block.tokens[start..] that cuts the block after the reviewer's own token.
 */
export interface CascadeLevel {
  readonly name: string;
  readonly stats: LevelStats;
  propose(block: Block, want: number, rng: Rng): Promise<void>;
  review(block: Block, start: number, rng: Rng, lenience: number, passUp: boolean): Promise<ReviewOutcome>;
  /** Frees whatever the level holds for this request (KV); never throws. */
  release(): Promise<void>;
  /** The load of the model behind the level, when it batches requests (see BatchingSession). */
  load?(): ServiceLoad | undefined;
  /** Proposes only, never reviews (a feature drafter, eagle-level.ts): its row of K stays zero. */
  readonly proposesOnly?: boolean;
  /** Times the level's session was placed on an actor (RemoteLevel); a call during which it changed timed a failover, not a round. */
  readonly placements?: number;
  /**
   * How many tokens one `propose` call may usefully be asked for when the level decodes alone
   * (target-only decoding): more than 1 where its runner decodes several in one call
   * (ModelSession.decode). Absent = 1.
   */
  readonly decodeSteps?: number;
  /**
   * Drafts one token after the whole block, as `propose(block, 1, rng)` does (the same token, q and
   * Rng draw), and returns the token the level ranks next at that position: the likeliest other one
   * under its processed distribution (undefined when none is left in its support). Asynchronous
   * drafting pre-drafts the outcome where the target rejects the draft and emits that token instead
   * (SSD, Kumar, Dao, May, ICLR 2026: a speculation keyed by accepted length and correction token).
   * Absent: the level offers no runner-up (a feature drafter, MaG), and no such outcome is
   * pre-drafted.
   */
  draftWithRunnerUp?(block: Block, rng: Rng): Promise<number | undefined>;
  /** Tokens of `tokens` the level's model has not seen yet (it feeds them on its next call). */
  lag?(tokens: readonly number[]): number;
  /**
   * The state the level would draft from after `tokens`, as a short label whose drafts the target
   * accepts at a rate of their own (MaG: its match-length class, MAG_MATCH_CLASSES); the adaptive
   * schedule counts acceptance per label. Absent = one state.
   */
  draftContext?(tokens: readonly number[]): string | undefined;
  /**
   * The log probabilities of the tokens this level added to the block since the last call (its
   * accepted drafts and its own token after a review, its proposals), in order, and forgets them;
   * only a level asked for them (the target of a request with logprobs) has any.
   */
  takeLogprobs?(): TokenLogprob[];
}

/** Length of the common prefix of two token sequences. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** How a ModelLevel samples and what it records, beyond its sampling parameters. */
export interface ModelLevelOptions {
  /** Bounds this level's cache (drafters only: the target always keeps its full cache). */
  readonly kv?: KvPolicyConfig;
  /**
   * Where the request's output begins in its tokens (presence and frequency penalties count only
   * the output; a resumed request's context holds earlier output too). Default 0.
   */
  readonly promptLength?: number;
  /**
   * 0..MAX_TOP_LOGPROBS (undefined = none): record each added token's log probability under this
   * model's processed distribution (logprobDistribution) with that many alternatives.
   */
  readonly topLogprobs?: number;
  /**
   * Drafter-invariant verification (Verification `invariant`): at temperature > 0 the level draws
   * every token (proposals, corrections, bonus tokens) with this noise at the token's absolute
   * position, reviews by reviewInvariant, and passes tokens up one-hot (no q is needed). Every level
   * of a request, and target-only decoding, must hold noise of the same seed. Undefined = rejection
   * sampling with the round's Rng.
   */
  readonly noise?: PositionNoise;
  /**
   * Token ids after which a multi-step proposal stops (the target's end-of-sequence ids, when the
   * request stops there): the runner then computes no token the request will not keep. Default none.
   */
  readonly stopIds?: readonly number[];
}

/**
 * A neural level (a drafter or the target) working on one sequence of its ModelSession. Its KV is
 * synchronised lazily: before each forward it is truncated to the longest prefix it shares with the
 * block, so rejected drafts are rolled back in every model.
 */
export class ModelLevel implements CascadeLevel {
  readonly stats = newStats();
  /** Tokens whose KV the session holds for this sequence, mirrored here. */
  private heldTokens: number[] = [];

  private readonly seq: BoundedSequence;
  /** Log probabilities of the tokens added since takeLogprobs last ran (with `topLogprobs` only). */
  private logprobs: TokenLogprob[] = [];

  private readonly promptLength: number;
  private readonly topLogprobs: number | undefined;
  private readonly noise: PositionNoise | undefined;
  private readonly stopIds: readonly number[];

  constructor(
    readonly name: string,
    readonly session: ModelSession,
    readonly seqId: string,
    private readonly sampling: SamplingParams,
    options: ModelLevelOptions = {},
  ) {
    this.seq = new BoundedSequence(session, seqId, options.kv ?? FULL_CACHE);
    this.promptLength = options.promptLength ?? 0;
    this.topLogprobs = options.topLogprobs;
    this.noise = options.noise;
    this.stopIds = options.stopIds ?? [];
  }

  /**
   * Whether `propose` lets the runner choose its tokens (ModelSession.decode: one call for the whole
   * proposal, not one per token): a full cache over a session that decodes, greedy or with
   * position noise (no Rng, no q to pass up), and no log probabilities to record.
   */
  private get decodes(): boolean {
    return this.seq.decodes && runnerDraws(this.sampling.temperature, this.noise !== undefined, this.topLogprobs);
  }

  /** Tokens one `propose` call may usefully ask for alone (target-only decoding): DECODE_STEPS where the runner decodes, else 1. */
  get decodeSteps(): number {
    return this.decodes ? DECODE_STEPS : 1;
  }

  /** Whether this level samples with position-keyed noise (drafter-invariant verification) at temperature > 0. */
  private get invariant(): boolean {
    return this.noise !== undefined && this.sampling.temperature > 0;
  }

  /** Records `token`'s log probability at the position after tokens[0..length), from `row` (or the sampled `p` itself). */
  private recordLogprob(row: Float32Array, tokens: readonly number[], length: number, token: number, p: Float32Array | undefined): void {
    if (this.topLogprobs === undefined) return;
    const probs = this.sampling.temperature > 0 && p ? p : logprobDistribution(row, this.sampling, { tokens, length, promptLength: this.promptLength });
    this.logprobs.push(tokenLogprob(probs, token, this.topLogprobs));
  }

  takeLogprobs(): TokenLogprob[] {
    const taken = this.logprobs;
    this.logprobs = [];
    return taken;
  }

  /** How many first tokens of `tokens` the model already holds, of those it needs to predict position `from` (it feeds the rest). */
  private heldPrefix(tokens: readonly number[], from: number): number {
    let lcp = 0;
    const limit = Math.min(this.heldTokens.length, from - 1);
    while (lcp < limit && this.heldTokens[lcp] === tokens[lcp]) lcp++;
    return lcp;
  }

  /** Logits rows predicting positions from..to-1, i.e. after tokens[from-1..to-2] (from >= 1). */
  private async rows(tokens: readonly number[], from: number, to: number): Promise<Float32Array> {
    const lcp = this.heldPrefix(tokens, from);
    const feed = tokens.slice(lcp, to - 1);
    checkReadable(this.name, feed, this.session.spec.vocabSize);
    // until the call succeeds, only the rows it keeps are known to be held
    this.heldTokens = tokens.slice(0, lcp);
    const t0 = performance.now();
    // Only rows from..to-1 are read: a prefill (the prompt fed with the first block) asks for those
    // alone. Decoding steps ask for all, so concurrent requests' steps batch together (BatchingSession
    // batches calls that ask for the same rows).
    const needed = to - from;
    const logits = await this.seq.feed(feed, feed.length > needed + 8 ? needed : 'all', lcp); // rolls back rejected tokens in the same call
    this.stats.forwardMs += performance.now() - t0;
    this.heldTokens = tokens.slice(0, to - 1);
    this.stats.forwardPasses++;
    this.stats.tokensScored += feed.length;
    const vocab = this.session.spec.vocabSize;
    return logits.subarray(logits.length - needed * vocab);
  }

  /** The processed distribution of one logits row (one-hot when greedy), the position after tokens[0..length). */
  dist(row: Float32Array, tokens: readonly number[], length: number): Float32Array {
    return distribution(row, this.sampling, { tokens, length, promptLength: this.promptLength });
  }

  /**
   * Drafts `want` tokens autoregressively, one forward each (the base case for a neural drafter):
   * each token's q is this model's p.
   */
  async propose(block: Block, want: number, rng: Rng): Promise<void> {
    if (this.decodes && want > 0) return this.proposeInRunner(block, want);
    for (let i = 0; i < want; i++) await this.draftOne(block, rng);
  }

  async draftWithRunnerUp(block: Block, rng: Rng): Promise<number | undefined> {
    const { scores, floor } = await this.draftOne(block, rng);
    return runnerUp(scores, block.tokens[block.length - 1]!, floor);
  }

  /**
   * One autoregressive draft after the block (one forward): pushes the token with its q and returns
   * the scores it was chosen by (the processed logits when greedy, else the processed distribution)
   * with the score that marks a token outside the support.
   */
  private async draftOne(block: Block, rng: Rng): Promise<{ scores: Float32Array; floor: number }> {
    this.stats.proposals++;
    const row = await this.rows(block.tokens, block.length, block.length + 1);
    if (this.sampling.temperature === 0) {
      // drawToken's greedy choice, keeping the processed row
      const processed = processLogits(row, this.sampling, { tokens: block.tokens, length: block.length, promptLength: this.promptLength });
      const token = argmax(processed);
      this.recordLogprob(row, block.tokens, block.length, token, undefined);
      block.push(token, undefined);
      return { scores: processed, floor: -Infinity };
    }
    const p = this.dist(row, block.tokens, block.length);
    const token = this.noise ? this.noise.draw(p, block.length) : sample(p, rng);
    this.recordLogprob(row, block.tokens, block.length, token, p);
    block.push(token, this.noise ? undefined : p);
    return { scores: p, floor: 0 };
  }

  /**
   * `propose` in one runner call (ModelSession.decode): the same passes and the same draws
   * (drawToken), so the same tokens; stops early after a stop id.
   */
  private async proposeInRunner(block: Block, want: number): Promise<void> {
    const lcp = this.heldPrefix(block.tokens, block.length);
    const feed = block.tokens.slice(lcp);
    checkReadable(this.name, feed, this.session.spec.vocabSize);
    // a failed call leaves the sequence at lcp (ModelSession.decode)
    this.heldTokens = block.tokens.slice(0, lcp);
    const t0 = performance.now();
    const plan = {
      steps: want,
      sampling: this.sampling,
      ...(this.sampling.temperature > 0 ? { noiseSeed: this.noise!.seed } : {}),
      tokens: block.tokens.slice(0, block.length),
      promptLength: this.promptLength,
      stopIds: this.stopIds,
    };
    const chosen = await this.seq.decode(feed, plan, lcp);
    this.stats.forwardMs += performance.now() - t0;
    this.stats.forwardPasses += chosen.length;
    this.stats.tokensScored += feed.length + chosen.length - 1;
    this.stats.proposals += chosen.length;
    this.heldTokens = [...plan.tokens, ...chosen.slice(0, -1)];
    for (const token of chosen) block.push(token, undefined);
  }

  /**
   * Reviews block.tokens[start..] in one forward: accepts a prefix, adds its own token, cuts the
   * block after it. With `passUp` and lenience 1, the emitted tokens carry this model's p as their q
   * (an exact review's output is distributed as p); otherwise they are passed up one-hot (lenient
   * reviews, and the target, whose output is final).
   */
  async review(block: Block, start: number, rng: Rng, lenience: number, passUp: boolean): Promise<ReviewOutcome> {
    this.stats.reviews++;
    const drafts = block.tokens.slice(start);
    const tokens = block.tokens.slice(); // each position's prefix: tokens[0..start + i)
    const vocab = this.session.spec.vocabSize;
    const logits = await this.rows(block.tokens, start, block.length + 1);
    const row = (i: number) => logitsRow(logits, i, vocab);
    const ps: Float32Array[] = [];
    const p = (i: number) => (ps[i] ??= this.dist(row(i), tokens, start + i));
    const greedyLenient = lenience > 1 && this.sampling.temperature === 0;
    const processed = (i: number) => processLogits(row(i), this.sampling, { tokens, length: start + i, promptLength: this.promptLength });
    const outcome = greedyLenient
      ? reviewGreedyLenient(drafts, processed, lenience)
      : this.invariant
        ? reviewInvariant(drafts, p, this.noise!, start)
        : review(drafts, drafts.map((_, i) => block.qAt(start + i)), p, rng, lenience);
    // invariant reviews pass tokens up one-hot: the level above draws its own token and needs no q
    const exact = passUp && !greedyLenient && lenience === 1 && !this.invariant;
    for (let i = 0; this.topLogprobs !== undefined && i <= outcome.accepted; i++) {
      const emitted = i < outcome.accepted ? drafts[i]! : outcome.token;
      this.recordLogprob(row(i), tokens, start + i, emitted, greedyLenient || this.sampling.temperature === 0 ? undefined : p(i));
    }
    block.cut(start + outcome.accepted);
    for (let i = 0; i < outcome.accepted; i++) block.q[start + i - block.committed] = exact ? p(i) : undefined;
    block.push(outcome.token, exact ? p(outcome.accepted) : undefined);
    return outcome;
  }

  load(): ServiceLoad | undefined {
    return this.session.load?.();
  }

  lag(tokens: readonly number[]): number {
    return tokens.length - commonPrefix(this.heldTokens, tokens);
  }

  /** Tokens the bounded cache released (0 with the full cache). */
  get releases(): number {
    return this.seq.releases;
  }

  async release(): Promise<void> {
    this.heldTokens = [];
    await this.seq.close().catch(() => undefined);
  }
}

/**
 * Lower edges of MaG's match-length classes, its draft contexts. Replaying the f32 target's greedy
 * output on 32 tuning prompts (tools/bench/mag-replay.ts), MaG's first draft was accepted 0.46-0.47
 * of the time after a match under 2 tokens (its trigram fill), 0.48-0.52 after 2, 0.77-0.81 after
 * 3-8, 0.95-0.97 after 9-32 and 0.998 after 33 or more; its first four drafts 0.07, 0.22-0.28,
 * 0.40-0.56, 0.85-0.89 and 0.99-1.00. Under 2 MaG fills, from 2 it copies (with a trigram table);
 * coarse classes keep each one's evidence large.
 */
export const MAG_MATCH_CLASSES = [0, 2, 3, 9, 33] as const;

/** MaG's draft context for a longest repeated suffix of `length` tokens: the lower edge of its class. */
export function magMatchClass(length: number): string {
  let edge: number = MAG_MATCH_CLASSES[0];
  for (const e of MAG_MATCH_CLASSES) if (length >= e) edge = e;
  return String(edge);
}

/** MaG as a cascade level: deterministic proposals (q one-hot) from the block's own history. */
export class MagLevel implements CascadeLevel {
  readonly name = 'mag';
  readonly stats = newStats();
  private readonly index: MaxGram;

  constructor(options: MaxGramOptions = {}) {
    this.index = new MaxGram(options);
  }

  /** Appends up to k tokens proposed after the whole block. */
  async propose(block: Block, k: number): Promise<void> {
    this.stats.proposals++;
    this.sync(block);
    for (const t of this.index.propose(k)) block.push(t, undefined);
  }

  /**
   * Appends up to k tokens copied from earlier in the block, only when the block's longest suffix
   * seen before is at least `minLength` tokens long and at least MaG's own minimum (no fill);
   * appends nothing otherwise.
   */
  proposeMatched(block: Block, k: number, minLength: number): void {
    this.sync(block);
    // MaG never copies a match shorter than its own minimum (2 with a trigram table): L = 1 acts as 2 then
    if (this.index.longestMatch().length < Math.max(minLength, this.index.minMatchLength)) return;
    this.stats.proposals++;
    for (const t of this.index.propose(k, false)) block.push(t, undefined);
  }

  /** The match-length class (magMatchClass) of the longest suffix of `tokens` seen earlier in them. */
  draftContext(tokens: readonly number[]): string {
    this.sync(tokens);
    return magMatchClass(this.index.longestMatch().length);
  }

  /** Brings the index to `tokens` (a block's), keeping what they share. */
  private sync(block: Block | readonly number[]): void {
    const tokens = block instanceof Block ? block.tokens : block;
    const n = this.index.length;
    let lcp = 0;
    while (lcp < n && lcp < tokens.length && this.index.at(lcp) === tokens[lcp]) lcp++;
    this.index.truncate(lcp);
    this.index.append(tokens.slice(lcp));
  }

  async review(): Promise<ReviewOutcome> {
    throw new Error('MaG drafts only: it is always the last level and never reviews');
  }

  async release(): Promise<void> {}
}
