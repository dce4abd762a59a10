import { LevelUnavailableError } from '../errors.ts';
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
/** Most tokens MaG adds after the drafter's when the target takes a block. */
const MAG_TOKENS = 4;

/**
 * Asynchronous drafting in one process (issue 27): the first drafter (`drafter`, a neural model on
 * its own worker thread) drafts continuously on the optimistic path, assuming every pending draft is
 * accepted, while the target verifies; the target never waits for it. Each target pass reviews
 * whatever the drafter has drafted for the committed prefix (at most `room`), extended by MaG's
 * proposals (`mag`, free); with nothing drafted it is a plain decode step. After a pass the
 * drafter's speculation is kept where it extends the new committed prefix (its draft for the
 * target's own token, the correction or bonus, matched it: SSD's pre-drafted outcome for the likely
 * verification result) and dropped otherwise: an epoch counter makes a call in flight on a dead
 * prefix land nowhere, and the drafter's KV is truncated to the accepted prefix on its next call.
 * The run-ahead is capped at about one verify pass of drafter steps (measured), within
 * [MIN_RUN_AHEAD, MAX_RUN_AHEAD].
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
  const ema = (old: number, x: number) => (old === 0 ? x : 0.8 * old + 0.2 * x);
  const runAhead = () => (verifyMs && stepMs ? Math.min(MAX_RUN_AHEAD, Math.max(MIN_RUN_AHEAD, Math.ceil(verifyMs / stepMs))) : MIN_RUN_AHEAD);
  const nudge = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };

  async function drafterLoop(level: CascadeLevel): Promise<void> {
    while (!stopped && drafter === level) {
      if (spec.length >= runAhead() || tokens.length + spec.length + 1 >= (options.maxPositions ?? Infinity) || spec.length >= req.maxTokens - out.length) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const e = epoch;
      const base = tokens.length + spec.length;
      const block = new Block([...tokens, ...spec], base);
      const t0 = performance.now();
      await level.propose(block, 1, drafterRng);
      stepMs = ema(stepMs, performance.now() - t0);
      if (e !== epoch || stopped) {
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
    }
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
      const room = draftRoom(committed, req.maxTokens - out.length, options.maxPositions);
      const block = new Block([...tokens], committed);
      const fromDrafter = Math.min(room, spec.length);
      for (let i = 0; i < fromDrafter; i++) block.push(spec[i]!, specQ[i]);
      if (mag && block.length - committed < room) await mag.propose(block, Math.min(MAG_TOKENS, room - (block.length - committed)), targetRng);
      const k = block.length - committed;
      nudge();
      const round = async () => {
        const t0 = performance.now();
        if (k === 0) await top.propose(block, 1, targetRng);
        else {
          const outcome = await top.review(block, committed, targetRng, 1, false);
          for (let i = 0; i < k; i++) {
            drafted[i] = (drafted[i] ?? 0) + 1;
            if (i < outcome.accepted) accepted[i] = (accepted[i] ?? 0) + 1;
          }
          verifyMs = ema(verifyMs, performance.now() - t0);
        }
      };
      if (options.inRound) await options.inRound(rounds, round);
      else await round();
      rounds++;
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
    await loop;
    loop = undefined;
    // a drafter that failed after the last pass took a draft: the output is whole, the loss is still reported
    if (drafterError !== undefined && drafter) options.onLevelFailure?.(drafter, drafterError);
    await Promise.all(everyLevel.map((l) => l.release()));
  }

  const drafting = { mode: 'async' as const, wastedDrafts: wasted, targetBusyFraction: top.stats.forwardMs / (performance.now() - start) };
  return cascadeResult(top, everyLevel, req, { out, logprobs, finishReason, rounds, drafted, accepted, start, firstToken }, { drafting });
}
