import { LinearCost, PRIOR_SLOPE } from '../kernels/cost-model.ts';
import { Rng } from '../kernels/rng.ts';
import type { ServiceLoad } from '../models/session.ts';

/**
 * The adaptive cascade schedule (`--k-matrix auto`, SPEC §4.4): before every round it picks the
 * K matrix that maximises expected tokens per millisecond under the expected-walltime model, from
 * what the request has measured so far:
 *
 * - acceptance: for each reviewer and each drafter below it, the probability that the token at
 *   block position j is accepted given that every earlier one was (decayed counts, shrunk towards
 *   the pair's mean and that towards what earlier requests measured: `ScheduleMemory`);
 * - cost: each level's review and proposal time as a line in the tokens of the call, measured around
 *   the call (so in a cluster it includes the network round trip and any wait for a batch), shared
 *   by all requests of the process because it is a property of the deployment, not of the text.
 *
 * A row is chosen bottom-up. With exact reviews (lenience 1) what a drafter emits is distributed as
 * its own model whatever drafted beneath it, so its acceptance above does not depend on its own row:
 * each drafter first picks the row that makes it the fastest producer of tokens (or drafts
 * autoregressively when no sub-cascade pays), and the level above then sees it as a producer of
 * tokens at that cost. For reviewer R and counts m_c of tokens taken from each drafter c below it
 * (largest first, block positions in that order),
 *
 *   E = 1 + Σ_j Π_{l ≤ j} α(R, src(l), l),     T = Σ_c produce_c(m_c) + review_R(k + 1),
 *
 * and the row maximising E / T wins, all-zero included (the target decodes alone: speculation off).
 * When the target's model reports its load (batched verification), one more token in a round costs
 * every session in the batch: the slope of the target's review cost is taken as at least occupancy ×
 * its per-token compute, which shrinks K and switches speculation off when the verifier is saturated.
 * Until every level has been timed past its warm-up (LinearCost.known), the starting K is used.
 *
 * **Draft contexts.** A drafter may say, before a round, which state it drafts from
 * (CascadeLevel.draftContext): MaG's match length, whose first draft the target accepted 0.46-0.47
 * of the time after a match under 2 tokens and 0.998 after 33 or more on this family's tuning text
 * (levels.ts, MAG_MATCH_CLASSES). Its acceptance is then counted per context (the pair
 * `target>mag#9` for a match of 9-32 tokens), so each round's K follows what the drafter has now,
 * as SpecDec++ (Huang et al. 2024) predicts acceptance to choose each candidate length; costs stay
 * per drafter.
 */
export interface ScheduleOptions {
  /** K for the first rounds over these drafters (the mode's default), until every level is timed. */
  readonly initial: (drafters: readonly string[]) => number[][];
  /** Most tokens the target's block may hold. */
  readonly maxDraft?: number;
  /** Most tokens a drafter's block may hold. */
  readonly maxSubDraft?: number;
  /** Costs and acceptance pooled over the process's earlier requests. */
  readonly memory?: ScheduleMemory;
  /** The target's load (batched verification), when its model reports one. */
  readonly load?: () => ServiceLoad | undefined;
  /**
   * Drafters that cannot review a block (a feature drafter, EagleLevel.proposesOnly): their rows of
   * K stay zero, the starting K's included, so they always propose autoregressively.
   */
  readonly proposers?: readonly string[];
  /** Count acceptance per draft context (default true); false: one table per drafter whatever its state. */
  readonly draftContexts?: boolean;
}

/**
 * The name a drafter's acceptance is counted under: `drafter#context`, or the drafter's own name
 * without a context. Costs are always counted under the drafter's own name.
 */
export function contextLabel(drafter: string, context: string | undefined): string {
  return context === undefined ? drafter : `${drafter}#${context}`;
}

/** Decayed counts of tokens reviewed and accepted. */
interface Counts {
  trials: number;
  accepted: number;
}

/** Acceptance prior for a pair nobody has measured yet. */
const PRIOR_ACCEPTANCE = 0.5;
/** Pseudo-counts pulling a position's rate towards its pair's, and a pair's towards the memory's. */
const POSITION_STRENGTH = 8;
const PAIR_STRENGTH = 16;
const MIN_PAIR_STRENGTH = 2;
/** Rounds over which a drafter's catch-up cost is spread when planning (it pays once, then stays in step). */
const CATCH_UP_ROUNDS = 2;
/** Calls feeding more tokens than this are prefills, not rounds. */
const PREFILL_TOKENS = 32;
/** Weight an observation keeps per later one: a request forgets over ~50 reviews, the process over ~1000. */
const REQUEST_DECAY = 0.98;
const MEMORY_DECAY = 0.999;

/** What a process has learnt across requests: the models' call costs and pooled acceptance. */
export class ScheduleMemory {
  readonly costs = new Map<string, LinearCost>();
  readonly pairs = new Map<string, Counts>();

  cost(key: string): LinearCost {
    let c = this.costs.get(key);
    if (!c) this.costs.set(key, (c = new LinearCost(0.95, key.startsWith('propose:') ? 'autoregressive' : 'forward')));
    return c;
  }

  /** The pooled acceptance rate of tokens of `drafter` reviewed by `reviewer`, and its evidence (tokens reviewed, decayed). */
  rate(reviewer: string, drafter: string): { rate: number; evidence: number } {
    const c = this.pairs.get(`${reviewer}>${drafter}`);
    return c ? { rate: (c.accepted + PRIOR_ACCEPTANCE) / (c.trials + 1), evidence: c.trials } : { rate: PRIOR_ACCEPTANCE, evidence: 0 };
  }

  record(reviewer: string, drafter: string, accepted: boolean): void {
    const key = `${reviewer}>${drafter}`;
    const c = this.pairs.get(key) ?? { trials: 0, accepted: 0 };
    c.trials = c.trials * MEMORY_DECAY + 1;
    c.accepted = c.accepted * MEMORY_DECAY + (accepted ? 1 : 0);
    this.pairs.set(key, c);
  }
}

/** The memory shared by every request of this process unless one is given. */
export const processScheduleMemory = new ScheduleMemory();

/** A drafter as the level above sees it: ms to produce m tokens, and the row that achieves it. */
interface Producer {
  /** The name its acceptance is counted under (contextLabel). */
  readonly name: string;
  produce(m: number): number;
}

export interface RowChoice {
  readonly counts: number[];
  readonly tokensPerMs: number;
}

/** Most tokens the adaptive schedule drafts per round unless told otherwise (ScheduleOptions.maxDraft). */
export const DEFAULT_MAX_DRAFT = 12;

export class AdaptiveSchedule {
  private readonly memory: ScheduleMemory;
  private readonly maxDraft: number;
  private readonly maxSubDraft: number;
  /** `${reviewer}>${drafter}` → counts by block position. */
  private readonly byPosition = new Map<string, Counts[]>();
  private readonly pairTotals = new Map<string, Counts>();
  /** This request's acceptance outcomes, handed to the memory when it ends (`finish`): counting them
   * there meanwhile would make the request's own evidence look twice as strong. */
  private readonly unshared: [string, string, boolean][] = [];
  /** Draws for exploration (never the request's sampler: K does not change what is generated). */
  private readonly explore = new Rng(0x5eed);
  /** The matrices chosen, for stats: how often each was used. */
  readonly chosen = new Map<string, number>();

  constructor(private readonly options: ScheduleOptions) {
    this.memory = options.memory ?? processScheduleMemory;
    this.maxDraft = options.maxDraft ?? DEFAULT_MAX_DRAFT;
    this.maxSubDraft = options.maxSubDraft ?? 8;
  }

  /**
   * A reviewer looked at a block whose drafted tokens came from `sources` (by position) and accepted
   * a prefix; the call took `ms` and fed the model `tokens` tokens (drafts, plus any it had not seen).
   */
  reviewed(reviewer: string, sources: readonly string[], accepted: number, ms: number | undefined, tokens: number): void {
    this.timed(`review:${reviewer}`, tokens, ms);
    // evidence fades as new evidence about the same pair arrives; a pair left unused keeps what it had
    for (const key of new Set(sources.slice(0, accepted + 1).map((d) => `${reviewer}>${d}`))) {
      // (positions this drafter has not filled are holes)
      for (const c of [...(this.byPosition.get(key) ?? []), this.pairTotals.get(key)]) {
        if (!c) continue;
        c.trials *= REQUEST_DECAY;
        c.accepted *= REQUEST_DECAY;
      }
    }
    // conditional acceptance: positions up to the first rejection were tried, later ones were not
    for (let j = 0; j < sources.length && j <= accepted; j++) {
      const key = `${reviewer}>${sources[j]}`;
      const cells = this.byPosition.get(key) ?? [];
      this.byPosition.set(key, cells);
      const cell = (cells[j] ??= { trials: 0, accepted: 0 });
      const total = this.pairTotals.get(key) ?? { trials: 0, accepted: 0 };
      this.pairTotals.set(key, total);
      const ok = j < accepted;
      cell.trials++;
      total.trials++;
      if (ok) {
        cell.accepted++;
        total.accepted++;
      }
      this.unshared.push([reviewer, sources[j]!, ok]);
    }
  }

  /** The request ended: what it learnt about acceptance becomes the prior of later requests. */
  finish(): void {
    for (const [reviewer, drafter, ok] of this.unshared.splice(0)) this.memory.record(reviewer, drafter, ok);
  }

  /**
   * A drafter proposed `want` tokens autoregressively in `ms`, feeding `tokens` tokens; `ms`
   * undefined: the call is no sample of the drafter's cost (its session was placed again meanwhile).
   */
  proposed(drafter: string, want: number, ms: number | undefined, tokens: number): void {
    // a feature drafter that fed nothing drafted nothing (no target features yet): not a cost sample
    if (tokens === 0 && this.options.proposers?.includes(drafter)) return;
    if (ms !== undefined && tokens <= want + PREFILL_TOKENS) this.memory.cost(`propose:${drafter}`).add(want, ms);
  }

  /**
   * Calls that prefill (a prompt, a long catch-up) say nothing about the cost of a round: skipped; so
   * are calls during which the level's session was placed again (`ms` undefined: a failover's wait,
   * seconds long, would price every draft out for the rest of the process, since rounds without
   * drafts are no new samples of the review cost).
   */
  private timed(key: string, tokens: number, ms: number | undefined): void {
    if (ms !== undefined && tokens <= PREFILL_TOKENS) this.memory.cost(key).add(Math.max(1, tokens), ms);
  }

  /** α(reviewer, drafter, position): acceptance of that position given every earlier one was accepted. */
  acceptance(reviewer: string, drafter: string, position: number): number {
    return this.atPosition(reviewer, drafter, position, this.pairRate(reviewer, drafter).mean);
  }

  /** The pair's acceptance rate (over positions) and the evidence behind it, in reviewed tokens. */
  private pairRate(reviewer: string, drafter: string): { mean: number; evidence: number } {
    const total = this.pairTotals.get(`${reviewer}>${drafter}`) ?? { trials: 0, accepted: 0 };
    const prior = this.memory.rate(reviewer, drafter);
    // the process's experience counts for up to PAIR_STRENGTH of this request's own reviews
    const strength = Math.max(MIN_PAIR_STRENGTH, Math.min(PAIR_STRENGTH, prior.evidence));
    return { mean: (total.accepted + strength * prior.rate) / (total.trials + strength), evidence: total.trials + strength };
  }

  private atPosition(reviewer: string, drafter: string, position: number, pair: number): number {
    const cell = this.byPosition.get(`${reviewer}>${drafter}`)?.[position] ?? { trials: 0, accepted: 0 };
    return (cell.accepted + POSITION_STRENGTH * pair) / (cell.trials + POSITION_STRENGTH);
  }

  /**
   * A plausible pair rate drawn from its posterior (normal approximation; Thompson sampling): a
   * drafter that had a few unlucky rounds is tried again, one with much evidence against it is not.
   */
  private sampledRate(reviewer: string, drafter: string): number {
    const { mean, evidence } = this.pairRate(reviewer, drafter);
    const sd = Math.sqrt((mean * (1 - mean)) / (evidence + 1));
    return Math.min(1, Math.max(0, mean + sd * gaussian(this.explore)));
  }

  /**
   * ms for a model to feed `lag` tokens it missed, charged to the round that uses it again, spread
   * over the rounds that are likely to use it next (a model left in use pays this once).
   */
  private catchUpMs(level: string, lag: number): number {
    if (lag <= 1) return 0;
    const r = this.reviewCost(level);
    const perToken = r ? r.coefficients().perToken : (this.proposeMs(level, 1) ?? 0) * PRIOR_SLOPE;
    return (perToken * lag) / CATCH_UP_ROUNDS;
  }

  private reviewCost(level: string): LinearCost | undefined {
    const c = this.memory.costs.get(`review:${level}`);
    return c?.known ? c : undefined;
  }

  /** ms for `drafter` to propose m tokens itself (a timed proposal, else m one-token reviews). */
  private proposeMs(drafter: string, m: number): number | undefined {
    const p = this.memory.costs.get(`propose:${drafter}`);
    if (p?.known) return p.predict(m);
    const r = this.reviewCost(drafter);
    return r ? m * r.predict(1) : undefined;
  }

  /**
   * The K matrix for the next round over `drafters` (largest first, MaG last if any), whose models
   * lack `lags[c]` tokens of the context (a drafter left unused for a while, or not yet used at
   * all, must first feed what it missed, the prompt included), and whose draft contexts are
   * `contexts[c]` (CascadeLevel.draftContext; the round's drafts are then reviewed under
   * `labels(drafters, contexts)`). Row 0 all zero means the target decodes this round alone.
   */
  plan(target: string, drafters: readonly string[], lags: readonly number[] = [], contexts: readonly (string | undefined)[] = []): number[][] {
    const n = drafters.length;
    const K = Array.from({ length: n }, () => new Array<number>(n).fill(0));
    if (n === 0) return K;
    const ready = this.reviewCost(target) && drafters.every((d) => this.proposeMs(d, 1) !== undefined);
    if (!ready) return this.withoutProposerRows(this.options.initial(drafters), drafters);
    // bottom-up: the last drafter proposes; each one above picks its fastest way to produce tokens
    const producers: Producer[] = new Array(n);
    const label = this.labels(drafters, contexts);
    const last = drafters[n - 1]!;
    producers[n - 1] = { name: label[n - 1]!, produce: (m) => (this.proposeMs(last, m) ?? Infinity) + this.catchUpMs(last, lags[n - 1] ?? 0) };
    for (let c = n - 2; c >= 0; c--) {
      const name = drafters[c]!;
      const reviews = this.options.proposers?.includes(name) ? undefined : this.reviewCost(name);
      const ar = (m: number) => this.proposeMs(name, m) ?? Infinity;
      const row = reviews ? this.bestRow(name, producers.slice(c + 1), this.maxSubDraft, (x) => reviews.predict(x)) : undefined;
      const catchUp = this.catchUpMs(name, lags[c] ?? 0);
      if (row && row.tokensPerMs > 4 / ar(4) && row.counts.some((x) => x > 0)) {
        let acc = 0;
        row.counts.forEach((m, i) => (K[c + 1]![c + 1 + i] = acc += m));
        producers[c] = { name: label[c]!, produce: (m) => m / row.tokensPerMs + catchUp };
      } else {
        producers[c] = { name: label[c]!, produce: (m) => ar(m) + catchUp };
      }
    }
    const load = this.options.load?.();
    const fit = this.reviewCost(target)!.coefficients();
    const slope = load ? Math.max(fit.perToken, load.occupancy * load.tokenMs) : fit.perToken;
    const top = this.bestRow(target, producers, this.maxDraft, (x) => fit.fixed + slope * x);
    let acc = 0;
    top.counts.forEach((m, i) => (K[0]![i] = acc += m));
    // a drafter that drafts for no one needs no row (stats show only the schedule that ran)
    const used = new Set<number>([0]);
    for (let r = 0; r < n; r++) {
      if (!used.has(r)) K[r]!.fill(0);
      else K[r]!.forEach((k, c) => c >= r && k > (c > r ? K[r]![c - 1]! : 0) && used.add(c + 1));
    }
    const key = JSON.stringify(K);
    this.chosen.set(key, (this.chosen.get(key) ?? 0) + 1);
    return K;
  }

  /**
   * The names the round's drafts are counted under (contextLabel): each drafter's name with its
   * context, or the bare names when the schedule does not count by context.
   */
  labels(drafters: readonly string[], contexts: readonly (string | undefined)[]): string[] {
    return drafters.map((d, c) => (this.options.draftContexts === false ? d : contextLabel(d, contexts[c])));
  }

  /** K with the rows of drafters that only propose (ScheduleOptions.proposers) zeroed. */
  private withoutProposerRows(K: number[][], drafters: readonly string[]): number[][] {
    drafters.forEach((d, c) => {
      if (this.options.proposers?.includes(d) && K[c + 1]) K[c + 1]!.fill(0);
    });
    return K;
  }

  /**
   * The counts (tokens from each producer, in order) that maximise expected tokens per ms of a
   * round reviewed by `reviewer` at `reviewMs(tokens scored)`; all zero = the reviewer alone.
   */
  bestRow(reviewer: string, producers: readonly Producer[], maxDraft: number, reviewMs: (x: number) => number): RowChoice {
    const alphas = producers.map((p) => {
      const pair = this.sampledRate(reviewer, p.name);
      return Array.from({ length: maxDraft }, (_, j) => this.atPosition(reviewer, p.name, j, pair));
    });
    const counts = new Array<number>(producers.length).fill(0);
    let best: RowChoice = { counts: [...counts], tokensPerMs: 1 / reviewMs(1) };
    const visit = (c: number, used: number, drafting: number, survive: number, expected: number): void => {
      if (c === producers.length) {
        if (used === 0) return;
        const rate = expected / (drafting + reviewMs(used + 1));
        if (rate > best.tokensPerMs) best = { counts: [...counts], tokensPerMs: rate };
        return;
      }
      let s = survive;
      let e = expected;
      for (let m = 0; used + m <= maxDraft; m++) {
        if (m > 0) {
          s *= alphas[c]![used + m - 1]!;
          e += s;
        }
        counts[c] = m;
        visit(c + 1, used + m, drafting + (m > 0 ? producers[c]!.produce(m) : 0), s, e);
      }
      counts[c] = 0;
    };
    visit(0, 0, 0, 1, 1);
    return best;
  }
}

/** A standard normal draw (Box–Muller). */
function gaussian(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(1 - rng.uniform())) * Math.cos(2 * Math.PI * rng.uniform());
}
