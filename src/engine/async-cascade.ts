import { LevelUnavailableError } from '../errors.ts';
import { LinearCost } from '../kernels/cost-model.ts';
import { contextLabel, DEFAULT_MAX_DRAFT } from './schedule.ts';
import { deriveSeed, Rng } from '../kernels/rng.ts';
import type { TokenLogprob } from '../kernels/sampling.ts';
import type { CascadeResult, RunOptions } from './cascade.ts';
import { cascadeResult, committable, draftRoom } from './cascade.ts';
import type { FinishReason, GenerateRequest } from './generate.ts';
import { Block, type CascadeLevel } from './levels.ts';

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
const FIRST_PAUSE = 16;
const MAX_PAUSE = 256;

/** Most drafts a target pass reviews (the adaptive schedule's bound; worthReviewing picks within it). */
const MAX_BLOCK = DEFAULT_MAX_DRAFT;

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
 * Exactness is the target's review's: every reviewed token was drafted from the distribution it
 * carries (q), given its prefix, so rejection sampling stays exact, and under drafter-invariant
 * verification the output is target-only decoding's for the seed token for token, whatever
 * arrived in time. Greedy output equals target-only greedy decoding. The drafter and the target
 * draw from their own RNG streams (seed-derived) under rejection sampling.
 *
 * Levels other than the first neural drafter and MaG are not used in this mode (the vertical
 * pipeline of PipeSpec is not built). Every level is released at the end; a drafter that fails with
 * LevelUnavailableError is dropped when `options.onLevelFailure` agrees (the target goes on with MaG
 * or alone), otherwise the request fails.
 */
export async function runCascadeAsync(
  top: CascadeLevel,
  initialDrafter: CascadeLevel | undefined,
  mag: CascadeLevel | undefined,
  req: GenerateRequest,
  options: RunOptions,
): Promise<CascadeResult> {
  const targetRng = new Rng(deriveSeed(req.seed, 0));
  const drafterRng = new Rng(deriveSeed(req.seed, 1));
  const everyLevel = [top, ...(initialDrafter ? [initialDrafter] : []), ...(mag ? [mag] : [])];
  let drafter = initialDrafter;
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
  /** The drafter's probe (target passes with it running, its drafts accepted in them), and its rest: it drafts again from pass `pausedUntil`. */
  const probe = { passes: 0, gain: 0 };
  let pausedUntil = 0;
  let pause = FIRST_PAUSE;
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
  const tally = (key: string) => bySource.get(key) ?? bySource.set(key, { reached: [], accepted: [] }).get(key)!;
  /**
   * How many of `n` available drafts from `key` to review: the k maximising expected tokens per
   * pass time, (1 + Σ_{j<k} Π_{l≤j} α_l) / cost(k + 1), with α_l the measured rate at which that
   * source's draft l is accepted once reached (shrunk towards 1/2) and cost the fitted pass time (the
   * adaptive schedule's objective, schedule.ts, with drafting free because it overlaps). All of them
   * until passes are timed.
   */
  const worthReviewing = (n: number, key: string): number => {
    if (n === 0 || !passCost.known) return n;
    const { reached, accepted: hits } = tally(key);
    let best = 0;
    let bestRate = 1 / passCost.predict(1);
    let survive = 1;
    let expected = 1;
    for (let k = 1; k <= n; k++) {
      survive *= ((hits[k - 1] ?? 0) + 1) / ((reached[k - 1] ?? 0) + 2);
      expected += survive;
      const rate = expected / passCost.predict(k + 1);
      if (rate > bestRate) [best, bestRate] = [k, rate];
    }
    return best;
  };
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
  };

  async function drafterLoop(level: CascadeLevel): Promise<void> {
    while (!stopped && drafter === level) {
      if (rounds < pausedUntil || spec.length - reviewing >= runAhead() || tokens.length + spec.length + 1 >= (options.maxPositions ?? Infinity) || spec.length >= req.maxTokens - out.length) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const e = epoch;
      const base = tokens.length + spec.length;
      const block = new Block([...tokens, ...spec], base);
      const t0 = performance.now();
      await level.propose(block, 1, drafterRng);
      stepMs = ema(stepMs, performance.now() - t0);
      if (e !== epoch || stopped || tokens.length + spec.length !== base) {
        wasted += block.length - base;
        continue;
      }
      if (block.length === base) {
        // nothing to propose (a drafter that only copies): wait for the target's next commit
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      spec.push(...block.tokens.slice(base));
      specQ.push(...block.q);
      drafterReady = true;
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

  let loop = drafter ? startLoop(drafter) : undefined;
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
        epoch++;
      }
      const committed = tokens.length;
      const room = Math.min(MAX_BLOCK, draftRoom(committed, req.maxTokens - out.length, options.maxPositions));
      const { block, source } = await chooseBlock(committed, room);
      // MaG's acceptance depends on how long a match it copies from (its draft context), the drafter's does not
      const key = source === 'mag' && options.draftContexts !== false ? contextLabel('mag', mag?.draftContext?.(tokens)) : source;
      block.cut(committed + worthReviewing(block.length - committed, key));
      const k = block.length - committed;
      // the drafter goes on after its own block under review, as if all of it will be accepted; under
      // MaG's block it keeps drafting from the committed prefix (the likely outcome: MaG's first draft rejected)
      const drafts = block.tokens.slice(committed);
      let agree = 0;
      while (agree < k && agree < spec.length && spec[agree] === drafts[agree]) agree++;
      if (carried && agree > 0) preDrafted++;
      carried = false;
      if (agree < k && source === 'drafter') {
        wasted += spec.length - agree;
        spec = drafts;
        specQ = drafts.map((_, i) => block.q[i]);
        epoch++;
      }
      reviewing = agree === k ? k : 0;
      nudge();
      let acceptedNow = 0;
      // with nothing to review and no drafter at work or MaG to ask before the next token, the target
      // decodes several tokens in one call (multi-step decoding, as target-only decoding does)
      const resting = !mag && (!drafter || rounds < pausedUntil);
      const steps = k === 0 && resting ? Math.max(1, Math.min(top.decodeSteps ?? 1, room + 1, drafter ? pausedUntil - rounds : Infinity)) : 1;
      const round = async () => {
        const t0 = performance.now();
        if (k === 0) await top.propose(block, steps, targetRng);
        else {
          const outcome = await top.review(block, committed, targetRng, 1, false);
          acceptedNow = outcome.accepted;
          const counts = tally(key);
          for (let i = 0; i < k; i++) {
            drafted[i] = (drafted[i] ?? 0) + 1;
            if (i < outcome.accepted) accepted[i] = (accepted[i] ?? 0) + 1;
            if (i < outcome.accepted) counts.accepted[i] = (counts.accepted[i] ?? 0) + 1;
            if (i <= outcome.accepted) counts.reached[i] = (counts.reached[i] ?? 0) + 1;
          }
          firstAccepted[source] = 0.9 * firstAccepted[source] + 0.1 * (outcome.accepted > 0 ? 1 : 0);
          verifyMs = ema(verifyMs, performance.now() - t0);
        }
        // one pass is a sample of the target's pass cost; several in one call (multi-step) are not
        if (steps === 1) passCost.add(k + 1, performance.now() - t0);
      };
      if (options.inRound) await options.inRound(rounds, round);
      else await round();
      if (drafter && drafterReady && rounds >= pausedUntil) {
        probe.passes++;
        // the drafter's own drafts at the head of its block (MaG may have extended it)
        if (source === 'drafter') probe.gain += Math.min(acceptedNow, agree);
      }
      // a multi-step call made one target pass per token it proposed
      const passes = steps > 1 ? Math.max(1, block.length - committed) : 1;
      if (drafter && rounds < pausedUntil) pausedPasses += passes;
      rounds += passes;
      reviewing = 0;
      if (probe.passes >= PROBE_PASSES && options.drafterRest !== false) {
        if (probe.gain / probe.passes < MIN_DRAFT_GAIN) {
          pausedUntil = rounds + pause;
          pause = Math.min(MAX_PAUSE, 2 * pause);
          // the next probe starts once it has drafted again (it first catches up on what it missed)
          drafterReady = false;
        } else pause = FIRST_PAUSE;
        probe.passes = 0;
        probe.gain = 0;
      }
      const emitted = block.tokens.slice(committed);
      const { fresh, freshLogprobs, stopped: eosSeen } = committable(emitted, req.maxTokens - out.length, eos, top, req.logprobs !== undefined);
      if (eosSeen) finishReason = 'stop';
      tokens.push(...fresh);
      out.push(...fresh);
      if (freshLogprobs) logprobs.push(...freshLogprobs);
      // keep the drafter's speculation where it extends the new prefix (it drafted the target's own token too)
      let keep = 0;
      while (keep < emitted.length && keep < spec.length && spec[keep] === emitted[keep]) keep++;
      if (keep === emitted.length) {
        spec = spec.slice(keep);
        specQ = specQ.slice(keep);
        carried = spec.length > 0;
      } else {
        wasted += spec.length - keep;
        spec = [];
        specQ = [];
        epoch++;
      }
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
    const settled = loop ? await Promise.race([loop.then(() => true), sleep(Math.max(END_GRACE_MS, 4 * stepMs)).then(() => false)]) : true;
    if (settled && drafterError !== undefined && drafter) options.onLevelFailure?.(drafter, drafterError);
    const pending = settled ? [] : everyLevel.filter((l) => l === initialDrafter);
    void loop?.then(() => Promise.all(pending.map((l) => l.release().catch(() => undefined))));
    loop = undefined;
    await Promise.all(everyLevel.filter((l) => !pending.includes(l)).map((l) => l.release()));
  }

  const drafting = { mode: 'async' as const, wastedDrafts: wasted, preDraftHitRate: rounds ? preDrafted / rounds : 0, targetBusyFraction: top.stats.forwardMs / (performance.now() - start), drafterPausedPasses: pausedPasses };
  return cascadeResult(top, everyLevel, req, { out, logprobs, finishReason, rounds, drafted, accepted, start, firstToken }, { drafting });
}
