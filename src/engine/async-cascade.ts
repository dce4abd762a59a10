import { LevelUnavailableError } from '../errors.ts';
import { LinearCost } from '../kernels/cost-model.ts';
import { contextLabel, DEFAULT_MAX_DRAFT } from './schedule.ts';
import { deriveSeed, Rng } from '../kernels/rng.ts';
import type { TokenLogprob } from '../kernels/sampling.ts';
import type { CascadeResult, RunOptions } from './cascade.ts';
import { cascadeResult, committable, draftRoom } from './cascade.ts';
import type { FinishReason, GenerateRequest } from './generate.ts';
import { Block, commonPrefix, type CascadeLevel } from './levels.ts';
import { Probation } from './probation.ts';

/**
 * How the drafters' work is placed against the target's:
 * - `serial`: CS Drafting's rounds: the cascade drafts a block, then the target reviews it.
 * - `async`: the drafter runs ahead while the target verifies (AMUSD, McDanel 2024; PEARL's
 *   post-verify, Liu et al., ICLR 2025): see runCascadeAsync.
 */
export type Drafting = 'async' | 'serial';
export const DRAFTINGS: readonly Drafting[] = ['async', 'serial'];
export const DEFAULT_DRAFTING: Drafting = 'serial';

/** Run-ahead bounds, in drafted tokens (the cap itself follows measured pass times). */
const MIN_RUN_AHEAD = 2;
const MAX_RUN_AHEAD = 12;
/** Longest a finished request waits for the drafter's call in flight (or 4 of its steps, if longer), ms. */
const END_GRACE_MS = 50;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/**
 * The drafter pauses while it does not pay: after PROBE_PASSES target passes with it running
 * (counted from its first draft, after its prefill) whose blocks of its own had fewer than
 * MIN_DRAFT_GAIN of its drafts accepted per pass, it rests for a pause of target passes
 * (FIRST_PAUSE, doubling on each probe that fails again, up to MAX_PAUSE; back to FIRST_PAUSE once
 * one pays). A drafter running beside the target takes cores, memory
 * bandwidth and round trips from it, so drafts that are rarely accepted make async drafting slower
 * than target-only decoding (docs/cascade.md); paused, the target goes on with MaG or alone.
 */
const PROBE_PASSES = 8;
const MIN_DRAFT_GAIN = 0.2;
/**
 * Outcome branches pause the same way: after BRANCH_PROBE_DRAFTS tokens drafted on them, fewer than
 * MIN_BRANCH_YIELD of them accepted (once their branch was adopted). Measured with draft-l2 on
 * held-out prompts: 0.01-0.04 (bench/results/outcome-branches).
 */
const BRANCH_PROBE_DRAFTS = 32;
const MIN_BRANCH_YIELD = 0.1;

/** Most drafts a target pass reviews (the adaptive schedule's bound; worthReviewing picks within it). */
const MAX_BLOCK = DEFAULT_MAX_DRAFT;
/** Passes in a row that may leave available drafts unreviewed before one reviews them anyway (keeps the pass-cost fit tested). */
const EXPLORE_AFTER = 4;

/**
 * A line of drafted tokens after the committed prefix, each with the q it was drawn from and the
 * drafter's runner-up at its position (CascadeLevel.draftWithRunnerUp; undefined where unknown).
 */
interface Line {
  tokens: number[];
  q: (Float32Array | undefined)[];
  alt: (number | undefined)[];
}

/**
 * Asynchronous drafting (issue 27), embedded or across actors: the first drafter (`drafter`, a
 * neural model on its own worker thread or actor) drafts continuously while the target verifies;
 * the target never waits for it. When the block under review is its own (perhaps extended by MaG) it
 * drafts after that block as if all of it will be accepted; when it is MaG's, it goes on from the
 * committed prefix, which pre-drafts the target's own token for the likeliest outcome, a rejection of
 * MaG's first draft (SSD's pre-drafted outcome). Each target pass reviews whatever the drafter has drafted for the committed
 * prefix (at most `room`), extended by MaG's proposals (`mag`, free), or MaG's own proposal when
 * that starts otherwise and MaG's first drafts have been accepted at least as often (measured
 * moving average); with nothing drafted it is a plain decode step. After a pass the
 * drafter's speculation is kept where it extends the new committed prefix (its draft for the
 * target's own token, the correction or bonus, matched it: SSD's pre-drafted outcome for the likely
 * verification result) and dropped otherwise: an epoch counter makes a call in flight on a dead
 * prefix land nowhere, and the drafter's KV is truncated to the accepted prefix on its next call.
 * The run-ahead is capped at about one verify pass of drafter steps (measured), within
 * [MIN_RUN_AHEAD, MAX_RUN_AHEAD]. A drafter whose drafts are rarely accepted is paused, and probed
 * again after a pause that doubles while it still does not pay (PROBE_PASSES, MIN_DRAFT_GAIN).
 *
 * Outcome branches (SSD's speculation cache, Kumar, Dao, May, ICLR 2026, keyed there by accepted
 * length and correction token): a drafter that names its runner-up (CascadeLevel.draftWithRunnerUp)
 * also pre-drafts the outcome where the target rejects its draft at position j of its speculation
 * and emits that runner-up instead. Each drafter step goes to the line whose next token is likeliest
 * to be used: the speculation's n-th token, survived with probability a^n, or branch j's m-th,
 * a^j·(1 − a)·b·a^m, with a the drafter's measured acceptance and b how often the target's correction
 * was its runner-up (measured, shrunk towards 1/2); each line within the run-ahead cap. After a pass
 * the speculation is kept when it extends the new prefix; otherwise the branch that does (at most
 * one can) becomes the speculation. Branches rest while they do not pay (MIN_BRANCH_YIELD), and
 * they are drafted only under `options.outcomeBranches` (off by default: on this project's 2-core CPU
 * they did not pay, bench/results/outcome-branches).
 *
 * Exactness is the target's review's: every reviewed token was drafted from the distribution it
 * carries (q), given its prefix, so rejection sampling stays exact, and under drafter-invariant
 * verification the output is target-only decoding's for the seed token for token, whatever
 * arrived in time. Greedy output equals target-only greedy decoding. The drafter and the target
 * draw from their own RNG streams (seed-derived) under rejection sampling.
 *
 * The pipeline (PipeSpec, McDanel et al., ACL Findings 2025: CS Drafting's vertical cascade made
 * concurrent), with MaG as the level below the drafter (`options.pipeline`, on by default): on its
 * speculation the drafter reviews MaG's drafts after it in one pass (as many as pay by its own
 * measured pass cost and its acceptance of MaG's drafts by MaG's draft context, within the
 * run-ahead cap) and forwards what it accepted, then its own token, each carrying the drafter's p as
 * q (an exact review's output is distributed as p, as in serial rounds). Measured on a 2-core CPU it
 * gained 0-9% over one token a pass (bench/results/async-pipeline). With `options.levelBelow` (off by
 * default: 6-16% slower on a 2-core CPU, bench/results/async-below) the second neural drafter
 * (`initialBelow`) is a level below the drafter too, on its own worker (belowLoop, levelBelow). Other levels are not used
 * in this mode. Every level is released at the end; a drafter that fails with
 * LevelUnavailableError is dropped when `options.onLevelFailure` agrees (the target goes on with MaG
 * or alone), otherwise the request fails.
 */
export async function runCascadeAsync(
  top: CascadeLevel,
  initialDrafter: CascadeLevel | undefined,
  mag: CascadeLevel | undefined,
  req: GenerateRequest,
  options: RunOptions,
  initialBelow?: CascadeLevel,
): Promise<CascadeResult> {
  const targetRng = new Rng(deriveSeed(req.seed, 0));
  const drafterRng = new Rng(deriveSeed(req.seed, 1));
  const belowRng = new Rng(deriveSeed(req.seed, 2));
  const everyLevel = [top, ...(initialDrafter ? [initialDrafter] : []), ...(initialBelow ? [initialBelow] : []), ...(mag ? [mag] : [])];
  let drafter = initialDrafter;
  let below = initialDrafter ? initialBelow : undefined;
  const eos = new Set(req.stopAtEos === false ? [] : options.eosIds);
  const tokens = [...req.promptIds];
  const out: number[] = [];
  const logprobs: TokenLogprob[] = [];
  const accepted: number[] = [];
  const drafted: number[] = [];
  const start = performance.now();
  let firstToken = 0;
  let rounds = 0;
  let finishReason: FinishReason = 'length';

  // the drafter's speculative continuation of `tokens`, with each token's q
  let spec: number[] = [];
  let specQ: (Float32Array | undefined)[] = [];
  /** The drafter's runner-up at each position of `spec` (undefined where unknown). */
  let specAlt: (number | undefined)[] = [];
  /** Outcome branches by the position j (after the committed prefix) where they leave `spec`: spec[0..j), its runner-up, then their drafts. */
  const branches = new Map<number, Line>();
  const branching = options.outcomeBranches === true;
  /** Rejections of the speculation where its runner-up was known (trials), and those where the target emitted it (hits). */
  const runnerUps = { trials: 0, hits: 0 };
  let outcomeDrafts = 0;
  let outcomeHits = 0;
  /** Adopted branches' own drafts that the target then accepted (what the branches gained). */
  let outcomeAccepted = 0;
  /** How many first tokens of `spec` an adopted outcome branch drafted (0: none, or reviewed since). */
  let fromBranch = 0;
  /** outcomeDrafts when the branches' probation last counted them. */
  let branchTrials = 0;
  /** MaG's drafts the drafter reviewed on its speculation (the pipeline), and those it accepted. */
  let pipelinedDrafts = 0;
  let pipelinedAccepted = 0;
  /** Of those, the level below's (a second neural drafter), and those accepted. */
  let belowDrafts = 0;
  let belowAccepted = 0;
  const pipelining = options.pipeline !== false && (mag !== undefined || below !== undefined);
  /**
   * The level below the drafter (a second neural drafter on its own worker): its line, which extends
   * the drafter's line (the committed tokens and \`spec\`) when it is of use, from which position on
   * the tokens are its own drafts, and their q.
   */
  let belowLine: number[] = [];
  let belowFrom = 0;
  let belowQ: (Float32Array | undefined)[] = [];
  let belowError: unknown;
  let belowWake: (() => void) | undefined;
  /** The level below's probation: its trials are the drafter's steps that could feed its drafts, its gain their drafts accepted. */
  const belowRest = new Probation(PROBE_PASSES, MIN_DRAFT_GAIN);
  /** Drafter steps in a row that fed none of the level below's drafts while there were some. */
  let unfedBelow = 0;
  let epoch = 0;
  let stopped = false;
  let drafterError: unknown;
  let wake: (() => void) | undefined;
  let verifyMs = 0;
  let stepMs = 0;
  let wasted = 0;
  /** Passes whose block began with drafts the drafter made during the pass before, past that pass's outcome (SSD's pre-drafted hit). */
  let preDrafted = 0;
  let carried = false;
  /** The drafter's probation (its trials: target passes with it running) and its outcome branches' (tokens drafted on them). */
  const drafterRest = new Probation(options.drafterRest === false ? Infinity : PROBE_PASSES, MIN_DRAFT_GAIN);
  const branchRest = new Probation(BRANCH_PROBE_DRAFTS, MIN_BRANCH_YIELD);
  let pausedPasses = 0;
  /** Whether the drafter has drafted since it started or last rested: a probe starts then (its first call prefills, or catches up on, the tokens it has not seen). */
  let drafterReady = false;
  /** Target passes' time by tokens fed (drafts + 1). */
  const passCost = new LinearCost();
  /**
   * By where a block came from (`drafter`, or MaG with its draft context, `mag#9`: schedule.ts,
   * contextLabel): how often its draft i was reached (every earlier one accepted) and accepted.
   */
  const bySource = new Map<string, { reached: number[]; accepted: number[] }>();
  type Tally = { reached: number[]; accepted: number[] };
  const tallyIn = (map: Map<string, Tally>, key: string) => map.get(key) ?? map.set(key, { reached: [], accepted: [] }).get(key)!;
  const tally = (key: string) => tallyIn(bySource, key);
  /** Counts a review of k drafts that accepted `accepted` of them: draft i was reached when every earlier one was accepted. */
  const countReview = (counts: Tally, k: number, accepted: number) => {
    for (let i = 0; i < k; i++) {
      if (i < accepted) counts.accepted[i] = (counts.accepted[i] ?? 0) + 1;
      if (i <= accepted) counts.reached[i] = (counts.reached[i] ?? 0) + 1;
    }
  };
  /**
   * How many of `n` available drafts from `key` to review: the k maximising expected tokens per
   * pass time, (1 + Σ_{j<k} Π_{l≤j} α_l) / cost(k + 1), with α_l the measured rate at which that
   * source's draft l is accepted once reached (shrunk towards 1/2) and cost the fitted pass time (the
   * adaptive schedule's objective, schedule.ts, with drafting free because it overlaps). All of them
   * until passes are timed.
   */
  const worthReviewing = (n: number, key: string, cost = passCost, counts = tally(key)): number => {
    if (n === 0 || !cost.known) return n;
    const { reached, accepted: hits } = counts;
    let best = 0;
    let bestRate = 1 / cost.predict(1);
    let survive = 1;
    let expected = 1;
    for (let k = 1; k <= n; k++) {
      survive *= ((hits[k - 1] ?? 0) + 1) / ((reached[k - 1] ?? 0) + 2);
      expected += survive;
      const rate = expected / cost.predict(k + 1);
      if (rate > bestRate) [best, bestRate] = [k, rate];
    }
    return best;
  };
  /** Passes in a row that reviewed nothing while drafts were there (worthReviewing priced them out). */
  let unreviewed = 0;
  /** The drafter's passes' time by tokens fed (MaG's drafts + 1), and its acceptance of MaG's drafts by MaG's draft context (the pipeline). */
  const drafterCost = new LinearCost();
  const drafterTally = new Map<string, Tally>();
  /** Drafter steps in a row that fed none of MaG's drafts while there were some (worthReviewing priced them out). */
  let unfed = 0;
  /** Drafts of the block under review still in `spec` (the drafter runs ahead of them). */
  let reviewing = 0;
  /** How often the first draft of a block was accepted, by where the block came from (moving average). */
  const firstAccepted = { drafter: 0.5, mag: 0.5 };
  const ema = (old: number, x: number) => (old === 0 ? x : 0.8 * old + 0.2 * x);
  const runAhead = () => (verifyMs && stepMs ? Math.min(MAX_RUN_AHEAD, Math.max(MIN_RUN_AHEAD, Math.ceil(verifyMs / stepMs))) : MIN_RUN_AHEAD);
  const nudge = () => {
    const w = wake;
    wake = undefined;
    w?.();
    nudgeBelow();
  };
  function nudgeBelow(): void {
    const w = belowWake;
    belowWake = undefined;
    w?.();
  }

  /** Whether a line of n drafted tokens may grow by one (within the models' positions and the request's tokens left). */
  const fits = (n: number) => tokens.length + n + 1 < (options.maxPositions ?? Infinity) && n < req.maxTokens - out.length;

  /**
   * Which line the drafter's next step extends: 'spec', or the outcome branch leaving it at position
   * j (created on its first step), by the likelihood that the step's token is used (see
   * runCascadeAsync); undefined when every line is at its cap (or the drafter rests).
   */
  function nextLine(): 'spec' | number | undefined {
    if (drafterRest.resting(rounds)) return undefined;
    const cap = runAhead();
    let best: 'spec' | number | undefined;
    let bestValue = 0;
    const a = Math.min(0.95, Math.max(0.05, firstAccepted.drafter));
    if (spec.length - reviewing < cap && fits(spec.length)) [best, bestValue] = ['spec', a ** spec.length];
    if (!branching || branchRest.resting(rounds)) return best;
    const b = (runnerUps.hits + 1) / (runnerUps.trials + 2);
    for (let j = 0; j <= reviewing && j < spec.length; j++) {
      if (specAlt[j] === undefined) continue;
      const length = branches.get(j)?.tokens.length ?? j + 1;
      const value = a ** j * (1 - a) * b * a ** (length - j - 1);
      if (length - j - 1 < cap && fits(length) && value > bestValue) [best, bestValue] = [j, value];
    }
    return best;
  }

  /** One drafter step after the whole block; its runner-up where the level names one and branches are drafting. */
  async function draftStep(level: CascadeLevel, block: Block): Promise<number | undefined> {
    if (branching && !branchRest.resting(rounds) && level.draftWithRunnerUp) return level.draftWithRunnerUp(block, drafterRng);
    await level.propose(block, 1, drafterRng);
    return undefined;
  }

  /**
   * MaG's drafts after the speculation (block: the committed tokens and `spec`) for the drafter to
   * review in its next pass, as many as pay by the drafter's own measured cost and acceptance
   * (worthReviewing over its pass-cost fit and its acceptance of MaG's drafts by MaG's draft
   * context), within the run-ahead cap; appended to the block. Returns the tally they count in.
   */
  async function magBelow(block: Block): Promise<{ fed: number; counts?: Tally }> {
    let room = Math.min(MAX_BLOCK, runAhead() - (spec.length - reviewing) - 1);
    while (room > 0 && !fits(spec.length + room)) room--;
    if (!mag || room <= 0) return { fed: 0 };
    const key = options.draftContexts !== false ? contextLabel('mag', mag.draftContext?.(block.tokens)) : 'mag';
    const counts = tallyIn(drafterTally, key);
    const base = block.length;
    await mag.propose(block, room, drafterRng);
    const available = block.length - base;
    let worth = worthReviewing(available, key, drafterCost, counts);
    unfed = worth === 0 && available > 0 ? unfed + 1 : 0;
    if (unfed > EXPLORE_AFTER) [worth, unfed] = [available, 0];
    block.cut(base + worth);
    return { fed: worth, counts };
  }

  /**
   * The level below's drafts after the speculation (block: the committed tokens and \`spec\`), while its
   * line extends the block, for the drafter to review in its next pass: as many as pay by the
   * drafter's measured cost and acceptance of them (as magBelow), within the run-ahead cap.
   */
  function levelBelow(block: Block): { fed: number; counts?: Tally } {
    const base = block.length;
    let room = Math.min(MAX_BLOCK, runAhead() - (spec.length - reviewing) - 1, belowLine.length - base);
    while (room > 0 && !fits(spec.length + room)) room--;
    if (!below || belowRest.resting(rounds) || room <= 0 || base < belowFrom || commonPrefix(belowLine, block.tokens) < base) return { fed: 0 };
    const counts = tallyIn(drafterTally, 'below');
    let worth = worthReviewing(room, 'below', drafterCost, counts);
    unfedBelow = worth === 0 ? unfedBelow + 1 : 0;
    if (unfedBelow > EXPLORE_AFTER) [worth, unfedBelow] = [room, 0];
    for (let i = base; i < base + worth; i++) block.push(belowLine[i]!, belowQ[i - belowFrom]);
    return { fed: worth, counts };
  }

  /**
   * The level below the drafter (PipeSpec's chain with a neural level under the drafter): one token
   * a step on its own line, which it restarts from the drafter's line (the committed tokens and
   * \`spec\`) whenever it no longer extends it, at most the run-ahead cap past it; it waits while the
   * drafter rests or it does. Its drafts reach the target only through the drafter's review (levelBelow).
   */
  async function belowLoop(level: CascadeLevel): Promise<void> {
    while (!stopped && below === level) {
      const line = [...tokens, ...spec];
      if (belowLine.length < line.length || commonPrefix(belowLine, line) < line.length) {
        belowLine = line;
        belowQ = [];
        belowFrom = line.length;
      }
      const ahead = belowLine.length - line.length;
      if (!drafter || drafterRest.resting(rounds) || belowRest.resting(rounds) || ahead >= Math.min(MAX_BLOCK, runAhead()) || !fits(belowLine.length - tokens.length)) {
        await new Promise<void>((resolve) => (belowWake = resolve));
        continue;
      }
      const block = new Block([...belowLine], belowLine.length);
      await level.propose(block, 1, belowRng);
      if (block.length > belowLine.length) {
        belowLine = block.tokens;
        belowQ.push(...block.q);
      } else if (!stopped && below === level) await new Promise<void>((resolve) => (belowWake = resolve));
    }
  }

  async function drafterLoop(level: CascadeLevel): Promise<void> {
    while (!stopped && drafter === level) {
      const which = nextLine();
      if (which === undefined) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const root = which === 'spec' ? undefined : which;
      let branch: Line | undefined;
      if (root !== undefined) {
        branch = branches.get(root) ?? { tokens: [...spec.slice(0, root), specAlt[root]!], q: [...specQ.slice(0, root), undefined], alt: [...specAlt.slice(0, root), undefined] };
        branches.set(root, branch);
      }
      const e = epoch;
      const committed = tokens.length;
      const after = branch ? branch.tokens : spec;
      const base = committed + after.length;
      const block = new Block([...tokens, ...after], base);
      // PipeSpec's pipeline (McDanel et al., 2025), with MaG as the level below: on the speculation
      // the drafter reviews MaG's drafts in one pass and forwards what it accepted, then its own token
      const fromBelow = !branch && pipelining ? levelBelow(block) : { fed: 0 };
      const { fed, counts } = fromBelow.fed > 0 ? fromBelow : !branch && pipelining ? await magBelow(block) : { fed: 0 };
      const t0 = performance.now();
      let alt: number | undefined;
      if (fed > 0) {
        const outcome = await level.review(block, base, drafterRng, 1, true);
        pipelinedDrafts += fed;
        pipelinedAccepted += outcome.accepted;
        countReview(counts!, fed, outcome.accepted);
        if (fromBelow.fed > 0) {
          belowRest.record(1, outcome.accepted, rounds);
          belowDrafts += fed;
          belowAccepted += outcome.accepted;
        }
      } else alt = await draftStep(level, block);
      const ms = performance.now() - t0;
      drafterCost.add(fed + 1, ms);
      stepMs = ema(stepMs, ms / Math.max(1, block.length - base));
      // The speculation's draft lands while its prefix is still the committed tokens and `spec` (a pass
      // that kept the speculation moved tokens from one to the other); a branch's, while the branch is
      // still there unchanged (they are dropped at every pass's end).
      const live = branch ? tokens.length === committed && branches.get(root!) === branch && committed + branch.tokens.length === base : tokens.length + spec.length === base;
      if (e !== epoch || stopped || !live) {
        wasted += block.length - base;
        continue;
      }
      if (block.length === base) {
        // nothing to propose (a drafter that only copies): wait for the target's next commit
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const line = branch ?? { tokens: spec, q: specQ, alt: specAlt };
      line.tokens.push(...block.tokens.slice(base));
      line.q.push(...block.q);
      // a review names no runner-up: only a plain step's token has one
      for (let i = base; i < block.length - 1; i++) line.alt.push(undefined);
      line.alt.push(alt);
      if (branch) outcomeDrafts++;
      drafterReady = true;
      nudgeBelow();
    }
  }

  /**
   * The block the target reviews next: the drafter's speculation extended by MaG, or, when MaG's own
   * proposal after the committed tokens starts otherwise and its first drafts have been accepted at
   * least as often (measured, `firstAccepted`), MaG's. With no speculation it is MaG's (or nothing).
   */
  async function chooseBlock(committed: number, room: number): Promise<{ block: Block; source: 'drafter' | 'mag' }> {
    const block = new Block([...tokens], committed);
    const fromDrafter = Math.min(room, spec.length);
    for (let i = 0; i < fromDrafter; i++) block.push(spec[i]!, specQ[i]);
    if (mag && block.length - committed < room) await mag.propose(block, room - (block.length - committed), targetRng);
    if (fromDrafter === 0) return { block, source: 'mag' };
    if (!mag || firstAccepted.mag < firstAccepted.drafter) return { block, source: 'drafter' };
    const own = new Block([...tokens], committed);
    await mag.propose(own, room, targetRng);
    if (own.length > committed && own.tokens[committed] !== spec[0]) return { block: own, source: 'mag' };
    // The drafter's block was kept because its first draft equals MaG's: which q that draft carries now
    // depends on the draw itself, so rejection sampling against the drafter's q would be biased
    // (P(x) = min(q, p) + (1 − q)·p). Reviewed one-hot it is exact whatever drew it (SPEC §4.3).
    block.q[0] = undefined;
    return { block, source: 'drafter' };
  }

  /** Forgets the outcome branches (their drafts counted wasted, but for `kept`'s). */
  function dropBranches(kept?: Line): void {
    for (const [j, line] of branches) if (line !== kept) wasted += line.tokens.length - j - 1;
    branches.clear();
  }

  let loop = drafter ? startLoop(drafter) : undefined;
  let belowLoopDone = below ? belowLoop(below).catch((err: unknown) => {
    belowError = err;
  }) : undefined;
  function startLoop(level: CascadeLevel): Promise<void> {
    return drafterLoop(level).catch((err: unknown) => {
      drafterError = err;
    });
  }

  try {
    while (out.length < req.maxTokens) {
      if (options.cancelled?.()) {
        finishReason = 'cancelled';
        break;
      }
      if (drafterError !== undefined) {
        const err = drafterError;
        drafterError = undefined;
        if (!(err instanceof LevelUnavailableError && drafter && options.onLevelFailure?.(drafter, err))) throw err;
        drafter = undefined;
        spec = [];
        specQ = [];
        specAlt = [];
        branches.clear();
        epoch++;
        below = undefined;
        nudgeBelow();
      }
      if (belowError !== undefined) {
        const err = belowError;
        belowError = undefined;
        // (a level below dropped with its drafter has nothing left to fail)
        if (below && !(err instanceof LevelUnavailableError && options.onLevelFailure?.(below, err))) throw err;
        below = undefined;
      }
      const committed = tokens.length;
      const room = Math.min(MAX_BLOCK, draftRoom(committed, req.maxTokens - out.length, options.maxPositions));
      const { block, source } = await chooseBlock(committed, room);
      // MaG's acceptance depends on how long a match it copies from (its draft context), the drafter's does not
      const key = source === 'mag' && options.draftContexts !== false ? contextLabel('mag', mag?.draftContext?.(tokens)) : source;
      const available = block.length - committed;
      let worth = worthReviewing(available, key);
      // A fit that prices every draft out is never tested again (passes of one token are all it
      // would see), so after EXPLORE_AFTER such passes in a row a pass reviews what is there.
      unreviewed = worth === 0 && available > 0 ? unreviewed + 1 : 0;
      if (unreviewed > EXPLORE_AFTER) [worth, unreviewed] = [available, 0];
      block.cut(committed + worth);
      const k = block.length - committed;
      // the drafter goes on after its own block under review, as if all of it will be accepted; under
      // MaG's block it keeps drafting from the committed prefix (the likely outcome: MaG's first draft rejected)
      const drafts = block.tokens.slice(committed);
      let agree = 0;
      while (agree < k && agree < spec.length && spec[agree] === drafts[agree]) agree++;
      if (carried && agree > 0) preDrafted++;
      // the branch's own drafts at the head of the block (the drafter may have drafted more after adoption)
      const branchHead = Math.min(fromBranch, agree);
      carried = false;
      fromBranch = 0;
      if (agree < k && source === 'drafter') {
        wasted += spec.length - agree;
        spec = drafts;
        specQ = drafts.map((_, i) => block.q[i]);
        specAlt = drafts.map((_, i) => (i < agree ? specAlt[i] : undefined));
        dropBranches();
        epoch++;
      }
      // the drafter runs ahead of its own block under review (extended by MaG or not)
      reviewing = source === 'drafter' || agree === k ? k : 0;
      nudge();
      let acceptedNow = 0;
      // with nothing to review and no drafter at work or MaG to ask before the next token, the target
      // decodes several tokens in one call (multi-step decoding, as target-only decoding does)
      const resting = !mag && (!drafter || drafterRest.resting(rounds));
      const steps = k === 0 && resting ? Math.max(1, Math.min(top.decodeSteps ?? 1, room + 1, drafter ? drafterRest.until - rounds : Infinity)) : 1;
      const round = async () => {
        const t0 = performance.now();
        if (k === 0) await top.propose(block, steps, targetRng);
        else {
          const outcome = await top.review(block, committed, targetRng, 1, false);
          acceptedNow = outcome.accepted;
          for (let i = 0; i < k; i++) {
            drafted[i] = (drafted[i] ?? 0) + 1;
            if (i < outcome.accepted) accepted[i] = (accepted[i] ?? 0) + 1;
          }
          countReview(tally(key), k, outcome.accepted);
          firstAccepted[source] = 0.9 * firstAccepted[source] + 0.1 * (outcome.accepted > 0 ? 1 : 0);
          verifyMs = ema(verifyMs, performance.now() - t0);
        }
        // one pass is a sample of the target's pass cost; several in one call (multi-step) are not
        if (steps === 1) passCost.add(k + 1, performance.now() - t0);
      };
      if (options.inRound) await options.inRound(rounds, round);
      else await round();
      // the drafter's own drafts at the head of its block (MaG may have extended it)
      const probing = drafter !== undefined && drafterReady && !drafterRest.resting(rounds);
      const gain = source === 'drafter' ? Math.min(acceptedNow, agree) : 0;
      const branchGain = Math.min(acceptedNow, branchHead);
      outcomeAccepted += branchGain;
      // a multi-step call made one target pass per token it proposed
      const passes = steps > 1 ? Math.max(1, block.length - committed) : 1;
      if (drafter && drafterRest.resting(rounds)) pausedPasses += passes;
      rounds += passes;
      reviewing = 0;
      // the next probe starts once it has drafted again (it first catches up on what it missed)
      if (probing && drafterRest.record(1, gain, rounds)) drafterReady = false;
      branchRest.record(outcomeDrafts - branchTrials, branchGain, rounds);
      branchTrials = outcomeDrafts;
      const emitted = block.tokens.slice(committed);
      const { fresh, freshLogprobs, stopped: eosSeen } = committable(emitted, req.maxTokens - out.length, eos, top, req.logprobs !== undefined);
      if (eosSeen) finishReason = 'stop';
      tokens.push(...fresh);
      out.push(...fresh);
      if (freshLogprobs) logprobs.push(...freshLogprobs);
      // keep the drafter's speculation where it extends the new prefix (it drafted the target's own
      // token too), or else the outcome branch that does
      const keep = commonPrefix(spec, emitted);
      if (keep < emitted.length && keep < spec.length && specAlt[keep] !== undefined) {
        runnerUps.trials++;
        if (emitted[keep] === specAlt[keep]) runnerUps.hits++;
      }
      const branch = keep < emitted.length ? branches.get(keep) : undefined;
      const adopted = branch && branch.tokens.length > emitted.length && commonPrefix(branch.tokens, emitted) === emitted.length ? branch : undefined;
      if (keep === emitted.length) {
        spec = spec.slice(keep);
        specQ = specQ.slice(keep);
        specAlt = specAlt.slice(keep);
        carried = spec.length > 0;
      } else if (adopted) {
        wasted += spec.length - keep;
        spec = adopted.tokens.slice(emitted.length);
        specQ = adopted.q.slice(emitted.length);
        specAlt = adopted.alt.slice(emitted.length);
        carried = true;
        fromBranch = spec.length;
        outcomeHits++;
        epoch++;
      } else {
        wasted += spec.length - keep;
        spec = [];
        specQ = [];
        specAlt = [];
        epoch++;
      }
      dropBranches(adopted);
      nudge();
      if (out.length > 0 && firstToken === 0) firstToken = performance.now() - start;
      if (fresh.length) await options.onTokens?.(fresh, freshLogprobs);
      if (finishReason === 'stop') break;
    }
  } finally {
    stopped = true;
    epoch++;
    nudge();
    // The drafter's call in flight is one step, unless its actor hangs (a paused or partitioned node
    // answers only at the call's timeout): the request does not wait past a short grace for it. Its
    // level is released when the call ends, and a failure after the last pass changes no output.
    const loops = Promise.all([loop, belowLoopDone]);
    const settled = loop || belowLoopDone ? await Promise.race([loops.then(() => true), sleep(Math.max(END_GRACE_MS, 4 * stepMs)).then(() => false)]) : true;
    if (settled && drafterError !== undefined && drafter) options.onLevelFailure?.(drafter, drafterError);
    if (settled && belowError !== undefined && below) options.onLevelFailure?.(below, belowError);
    const pending = settled ? [] : everyLevel.filter((l) => l === initialDrafter || l === initialBelow);
    void loops.then(() => Promise.all(pending.map((l) => l.release().catch(() => undefined))));
    loop = undefined;
    belowLoopDone = undefined;
    await Promise.all(everyLevel.filter((l) => !pending.includes(l)).map((l) => l.release()));
  }

  const drafting = { mode: 'async' as const, wastedDrafts: wasted, preDraftHitRate: rounds ? preDrafted / rounds : 0, targetBusyFraction: top.stats.forwardMs / (performance.now() - start), drafterPausedPasses: pausedPasses, outcomeDrafts, outcomeHits, outcomeAccepted, pipelinedDrafts, pipelinedAccepted, belowDrafts, belowAccepted };
  return cascadeResult(top, everyLevel, req, { out, logprobs, finishReason, rounds, drafted, accepted, start, firstToken }, { drafting });
}
