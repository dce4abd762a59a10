import { randomUUID } from 'node:crypto';
import { InvalidArgumentError, LevelUnavailableError } from '../errors.ts';
import { DEFAULT_VERIFICATION, PositionNoise } from '../kernels/noise.ts';
import { RECENT_MATCH_LIMIT, type MagTables } from '../kernels/maxgram.ts';
import { Rng } from '../kernels/rng.ts';
import type { TokenLogprob } from '../kernels/sampling.ts';
import type { ModelSession } from '../models/session.ts';
import { checkVocabularySizes } from '../models/vocabulary.ts';
import { baseStats, checkRequest, type FinishReason, type GenerateRequest, type GenerateStats } from './generate.ts';
import { Block, MagLevel, ModelLevel, UnreadableTokenError, type CascadeLevel, type LevelStats } from './levels.ts';
import { checkKvPolicy, type KvPolicyConfig } from './bounded-kv.ts';
import { EagleLevel, FeatureTap } from './eagle-level.ts';
import { checkBudget } from '../kernels/kv-policy.ts';
import { startingKMatrix, type KSchedule } from './presets.ts';
import { AdaptiveSchedule, type ScheduleMemory } from './schedule.ts';
import { DEFAULT_DRAFTING, runCascadeAsync, type Drafting } from './async-cascade.ts';

/**
 * A drafter of the cascade: a neural model, MaG (which may only be the last), or a feature drafter
 * (EAGLE, eagle-level.ts: only the first, right below the target whose features it reads, and it
 * only proposes: its row of K is zero).
 */
export type DrafterSpec =
  | { readonly kind: 'model'; readonly session: ModelSession; readonly kv?: KvPolicyConfig }
  | { readonly kind: 'eagle'; readonly session: ModelSession }
  | { readonly kind: 'mag'; readonly tables?: MagTables; readonly minMatch?: number; readonly occurrence?: 'earliest' | 'recent' };

/**
 * The cascade of SPEC §4.2. `drafters` are largest first. `kMatrix` is n×n upper triangular in the
 * paper's cumulative convention: row 0 is the target's schedule and row r (r >= 1) that of drafter
 * r-1; K[r][c] (c >= r) is how many drafted tokens the block reviewed at row r's level must hold
 * once drafter c has contributed. A row r >= 1 of zeros gives drafter r-1 no sub-cascade: it then
 * drafts token by token (reviewing an empty block is an autoregressive proposal), which is how the
 * horizontal-only cascade is written. `lenience` (>= 1) applies to reviews between drafters only.
 * `auto` lets the adaptive schedule choose K each round from measured acceptance and costs.
 */
export interface CascadeConfig {
  readonly drafters: readonly DrafterSpec[];
  readonly kMatrix: KSchedule;
  readonly lenience: number;
  /**
   * `serial` (default): rounds of draft, then review. `async`: the first neural drafter runs ahead
   * on its own worker while the target verifies (runCascadeAsync; K is then implicit, and levels
   * other than that drafter and MaG are not used).
   */
  readonly drafting?: Drafting;
  /**
   * MaG first (serial rounds, MaG the last drafter), a minimum match length L >= 1: each round, when
   * the committed text's longest suffix seen earlier is at least L tokens, MaG's copy of what followed
   * it (at most MaG's entry of the target's row of K, K[0][n-1]; no fill) is the block; the
   * drafters above it draft only where it has none. MaG costs nothing, so a round it fills spends no
   * drafter pass. Such rounds reach the adaptive schedule as the source `mag-first`.
   */
  readonly magFirst?: number;
}

export interface CascadeStats extends GenerateStats {
  /** Target reviews (one per round); in target-only decoding, target passes (a multi-step round makes several). */
  readonly rounds: number;
  readonly draftedTokens: number;
  readonly acceptedTokens: number;
  /** Tokens emitted per target review (>= 1). */
  readonly meanAcceptanceLength: number;
  /** acceptedByPosition[i] / draftedByPosition[i] = acceptance rate at draft position i at the target. */
  readonly acceptedByPosition: number[];
  readonly draftedByPosition: number[];
  /** Per model (target first, then drafters by name): forward passes, tokens scored, reviews, proposals, forward time. */
  readonly models: Record<string, LevelStats>;
  /**
   * Cost of one forward pass of each model relative to one of the target, measured in this run
   * (mean forward wall time); MaG costs 0.
   */
  readonly costCoefficients: Record<string, number>;
  /**
   * Standardised walltime improvement (CS Drafting): the target passes autoregressive decoding
   * would need (one per generated token) over Σ passes × cost coefficient of this run.
   */
  readonly swi: number;
  /** With `auto`: how many rounds used each K matrix (JSON), most used first. */
  readonly schedule?: Record<string, number>;
  /** With MaG first: the rounds MaG drafted alone (CascadeConfig.magFirst). */
  readonly magFirstRounds?: number;
  /**
   * With async drafting: the mode, the drafted tokens thrown away on prefixes that died, the fraction
   * of target passes whose block began with drafts the drafter made during the pass before, past its
   * outcome (pre-drafted: SSD's cache hit), and the fraction of the request's wall time the target
   * spent in its passes (in a cluster: the coordinator's time in verify calls, network included),
   * the target passes run while the drafter rested for not paying (async-cascade.ts, MIN_DRAFT_GAIN),
   * and its outcome branches: tokens drafted on them, passes after which one was adopted, and the
   * adopted branches' own drafts that the target then accepted.
   */
  readonly drafting?: { readonly mode: Drafting; readonly wastedDrafts: number; readonly preDraftHitRate: number; readonly targetBusyFraction: number; readonly drafterPausedPasses: number; readonly outcomeDrafts: number; readonly outcomeHits: number; readonly outcomeAccepted: number; readonly pipelinedDrafts: number; readonly pipelinedAccepted: number; readonly belowDrafts: number; readonly belowAccepted: number };
}

/** A drafter's name in stats: its model, marked when it runs over a bounded cache (self-draft). */
export function levelName(d: { session: ModelSession; kv?: KvPolicyConfig }, target: ModelSession): string {
  const bounded = d.kv && d.kv.policy !== 'full' ? `${d.kv.policy}-${d.kv.budget.budget}` : undefined;
  if (d.session === target || d.session.spec.name === target.spec.name) return `${d.session.spec.name}@${bounded ?? 'self'}`;
  return bounded ? `${d.session.spec.name}@${bounded}` : d.session.spec.name;
}

/** Measured cost coefficients and SWI from per-model counters; `target` names the target's entry. */
export function standardizedWalltime(models: Record<string, LevelStats>, target: string, generated: number): { costCoefficients: Record<string, number>; swi: number } {
  const perPass = (s: LevelStats) => (s.forwardPasses ? s.forwardMs / s.forwardPasses : 0);
  const base = perPass(models[target]!);
  const costCoefficients: Record<string, number> = {};
  let weighted = 0;
  for (const [name, s] of Object.entries(models)) {
    costCoefficients[name] = base > 0 ? perPass(s) / base : 0;
    weighted += s.forwardPasses * costCoefficients[name]!;
  }
  return { costCoefficients, swi: weighted > 0 ? generated / weighted : 0 };
}

export interface CascadeResult {
  readonly tokenIds: number[];
  readonly finishReason: FinishReason;
  readonly stats: CascadeStats;
  /** With the request's `logprobs`: one entry per token of tokenIds, from the target whichever level drafted the token. */
  readonly logprobs?: TokenLogprob[];
}

/** Rejects cascades that cannot run: a feature drafter not first, MaG not last, K of the wrong shape, not cumulative, or fixed under async drafting, lenience < 1. */
export function checkCascade(config: CascadeConfig): void {
  const n = config.drafters.length;
  // the feature drafter's place first: in [mag, eagle] it is the one to move (then MaG is last)
  if (config.drafters.some((d, i) => d.kind === 'eagle' && i !== 0)) throw new InvalidArgumentError('a feature drafter (EAGLE) can only be the first drafter: it reads the features of the target right above it', { field: 'drafters' });
  config.drafters.forEach((d, i) => {
    if (d.kind === 'mag' && i !== n - 1) throw new InvalidArgumentError('mag can only be the last drafter of a cascade', { field: 'drafters' });
    if (d.kind === 'eagle' && (config.drafting ?? DEFAULT_DRAFTING) === 'async') throw new InvalidArgumentError('a feature drafter (EAGLE) drafts in rounds after each review (it reads the features the review computed): not with async drafting', { field: 'drafters' });
    if (d.kind === 'eagle' && config.kMatrix !== 'auto' && config.kMatrix[1]?.some((k) => k !== 0)) {
      throw new InvalidArgumentError(`a feature drafter only proposes, it cannot review a block: its row of the K matrix (row 1) must be zeros, got ${JSON.stringify(config.kMatrix[1])}`, { field: 'k_matrix' });
    }
    if (d.kind === 'model' && d.kv) {
      checkKvPolicy(d.kv);
      if (d.kv.policy !== 'full') checkBudget(d.kv.budget);
    }
  });
  if (!(config.lenience >= 1)) throw new InvalidArgumentError(`lenience must be >= 1, got ${config.lenience}`, { field: 'lenience' });
  if (config.magFirst !== undefined) {
    if (!Number.isInteger(config.magFirst) || config.magFirst < 1) throw new InvalidArgumentError(`MaG first's minimum match length must be an integer >= 1, got ${config.magFirst}`, { field: 'mag_first' });
    const last = config.drafters.at(-1);
    if (n < 2 || last?.kind !== 'mag') throw new InvalidArgumentError(`MaG first needs MaG last below at least one other drafter (it decides which of them drafts a round); this cascade has ${n === 0 ? 'no drafters (target-only decoding)' : last?.kind === 'mag' ? 'only MaG' : 'no MaG'}`, { field: 'mag_first' });
    if (last.occurrence === 'recent' && config.magFirst > RECENT_MATCH_LIMIT) throw new InvalidArgumentError(`MaG's recent variant matches at most ${RECENT_MATCH_LIMIT} tokens: MaG first from ${config.magFirst} would never fire`, { field: 'mag_first' });
    if ((config.drafting ?? DEFAULT_DRAFTING) !== 'serial') throw new InvalidArgumentError('MaG first chooses the drafter of each serial round: not with async drafting', { field: 'mag_first' });
  }
  if (config.kMatrix === 'auto') return;
  if ((config.drafting ?? DEFAULT_DRAFTING) === 'async' && n > 0) throw new InvalidArgumentError('async drafting sizes each block from its measured costs and acceptance, so it takes no K matrix: a fixed K is for serial rounds (or leave it auto)', { field: 'k_matrix' });
  if (n === 0 && config.kMatrix.length > 0) throw new InvalidArgumentError('target-only decoding (mode ar, no drafters) takes no K matrix: it drafts nothing', { field: 'k_matrix' });
  if (config.kMatrix.length !== n) throw new InvalidArgumentError(`the K matrix needs ${n} row${n === 1 ? '' : 's'} for ${n} drafter${n === 1 ? '' : 's'}, got ${config.kMatrix.length}`, { field: 'k_matrix' });
  config.kMatrix.forEach((row, r) => {
    if (row.length !== n) throw new InvalidArgumentError(`K matrix row ${r} needs ${n} entries (use 0 below the diagonal), got ${row.length}`, { field: 'k_matrix' });
    let prev = 0;
    for (let c = r; c < n; c++) {
      const k = row[c]!;
      if (!Number.isInteger(k) || k < prev) {
        throw new InvalidArgumentError(`K matrix row ${r} must be non-decreasing integers from the diagonal (cumulative), got ${JSON.stringify(row)}`, { field: 'k_matrix' });
      }
      prev = k;
    }
    if (r === 0 && row[n - 1]! < 1) throw new InvalidArgumentError('K matrix row 0 (the target\'s) drafts nothing: its last entry must be >= 1', { field: 'k_matrix' });
  });
}

/**
 * Generates with Algorithm 1 of CS Drafting over models in this process: each round the target
 * reviews one block drafted by the cascade below it. With lenience 1 at every level the output is
 * distributed exactly as target-only sampling, and at temperature 0 it is token-identical. Every
 * model's KV for the request is released at the end.
 */
export async function generateCascade(
  target: ModelSession,
  config: CascadeConfig,
  req: GenerateRequest,
  onTokens?: (ids: readonly number[], logprobs?: readonly TokenLogprob[]) => void,
  /**
   * `cancelled`: polled between rounds; true ends the request with finish reason `cancelled` (a stop
   * string seen). `scheduleMemory`, `draftContexts`, `drafterRest`, `aloneSteps`, `outcomeBranches`, `pipeline`, `levelBelow`: as RunOptions.
   */
  control: Pick<RunOptions, 'cancelled' | 'scheduleMemory' | 'draftContexts' | 'drafterRest' | 'aloneSteps' | 'outcomeBranches' | 'pipeline' | 'levelBelow'> = {},
): Promise<CascadeResult> {
  checkRequest(req, target.spec.maxPositions);
  checkCascade(config);
  if (req.kv && req.kv.policy !== 'full' && config.drafters.length > 0) {
    throw new InvalidArgumentError(`a bounded KV cache (${req.kv.policy}) runs with target-only decoding (mode ar) for now, not under a cascade`);
  }
  checkVocabularySizes(target.spec, config.drafters.flatMap((d) => (d.kind === 'model' ? [d.session.spec] : [])));
  const seqId = randomUUID();
  const promptLength = req.promptLength ?? req.promptIds.length;
  // a feature drafter reads the target's hidden_states: the target's calls ask for them only then
  const tap = config.drafters.some((d) => d.kind === 'eagle') ? new FeatureTap(target, seqId) : undefined;
  // drafter-invariant verification: every level draws with the same position-keyed noise
  const noise = (req.verification ?? DEFAULT_VERIFICATION) === 'invariant' ? new PositionNoise(req.seed) : undefined;
  const top = new ModelLevel(target.spec.name, tap ?? target, seqId, req.sampling, { promptLength, topLogprobs: req.logprobs, noise, stopIds: req.stopAtEos === false ? [] : target.spec.eosIds });
  // Each drafter level has its own sequence id: a drafter may be the target's own session (self-draft).
  // Every level applies the same logits processors with each position's own prefix (exactness).
  const drafters: CascadeLevel[] = config.drafters.map((d, i) =>
    d.kind === 'mag'
      ? new MagLevel({ ...d.tables, minMatch: d.minMatch, occurrence: d.occurrence })
      : d.kind === 'eagle'
        ? new EagleLevel(d.session.spec.name, d.session, `${seqId}:${i}`, tap!, req.sampling, { promptLength, noise })
        : new ModelLevel(levelName(d, target), d.session, `${seqId}:${i}`, req.sampling, { kv: d.kv, promptLength, noise }),
  );
  const maxPositions = smallestContext([target, ...config.drafters.flatMap((d) => (d.kind === 'mag' ? [] : [d.session]))].map((s) => s.spec));
  // a narrower drafter (less vocabulary padding) that meets a padding id the target sampled is dropped
  const onLevelFailure = (level: CascadeLevel, err: unknown) => level !== top && err instanceof UnreadableTokenError;
  const run: RunOptions = { ...control, eosIds: target.spec.eosIds, onTokens, maxPositions, onLevelFailure };
  return runDrafting(top, drafters, config, req, run);
}

/**
 * Runs a cascade of levels under the request's drafting mode, embedded or across actors: serial
 * rounds (runCascade), or async drafting (runCascadeAsync) with the first drafter that is not MaG
 * running ahead and MaG extending its drafts; the other drafters are released unused.
 */
export async function runDrafting(top: CascadeLevel, drafters: readonly CascadeLevel[], config: Pick<CascadeConfig, 'kMatrix' | 'lenience' | 'drafting' | 'magFirst'>, req: GenerateRequest, run: RunOptions): Promise<CascadeResult> {
  if ((config.drafting ?? DEFAULT_DRAFTING) === 'serial') return runCascade(top, drafters, config, req, run);
  const first = drafters.find((d) => !(d instanceof MagLevel));
  const below = run.levelBelow === true && run.pipeline !== false ? drafters.find((d) => !(d instanceof MagLevel) && d !== first) : undefined;
  const mag = drafters.find((d) => d instanceof MagLevel);
  await Promise.all(drafters.filter((d) => d !== first && d !== below && d !== mag).map((d) => d.release()));
  return runCascadeAsync(top, first, mag, req, run, below);
}

/** How runCascade reports progress and survives a lost level. */
export interface RunOptions {
  readonly eosIds: readonly number[];
  /**
   * Receives each round's new tokens (and, when the request asks for them, their log probabilities
   * from the target); awaited before the next round, so a slow one holds up the passes (the
   * coordinator's returns at once and records behind the loop: LogWriter); a throw ends the request.
   */
  readonly onTokens?: (ids: readonly number[], logprobs?: readonly TokenLogprob[]) => void | Promise<void>;
  /**
   * Called when drafter `index` (of the drafters still running) fails during a round. Returning
   * true drops that level: the round is drafted again by the levels left (down to MaG or the target
   * alone). Returning false, or no handler, fails the request.
   */
  readonly onLevelFailure?: (level: CascadeLevel, err: unknown) => boolean;
  /** Polled between rounds; true ends the request with finish reason `cancelled`. */
  readonly cancelled?: () => boolean;
  /** Wraps each round (the cluster opens a trace span per round). */
  readonly inRound?: (round: number, run: () => Promise<void>) => Promise<void>;
  /** Where the adaptive schedule pools costs and acceptance across requests (default: the process's). */
  readonly scheduleMemory?: ScheduleMemory;
  /**
   * Whether the adaptive schedule counts a drafter's acceptance per draft context
   * (CascadeLevel.draftContext, MaG's match length; schedule.ts), default true. false keeps one
   * table per drafter, as before (for benchmarks that compare the two).
   */
  readonly draftContexts?: boolean;
  /**
   * Whether async drafting rests a drafter whose drafts are rarely accepted (async-cascade.ts,
   * MIN_DRAFT_GAIN), default true. false keeps it drafting throughout, as before (for benchmarks
   * that compare the two).
   */
  readonly drafterRest?: boolean;
  /**
   * Whether a serial round that the target decodes alone while drafters are in the cascade (the
   * adaptive schedule priced every draft out) proposes several tokens in one call (multi-step
   * decoding, as target-only decoding), default true. false: one token per such round, as before
   * (for benchmarks that compare the two).
   */
  readonly aloneSteps?: boolean;
  /**
   * Whether async drafting also pre-drafts the outcomes where the target rejects a draft and emits the
   * drafter's runner-up (async-cascade.ts, outcome branches), default false: the speculation alone
   * (they did not pay on a 2-core CPU, where the drafter shares cores with the target).
   */
  readonly outcomeBranches?: boolean;
  /**
   * Whether async drafting pipelines MaG below the drafter (async-cascade.ts: on its speculation the
   * drafter reviews MaG's drafts and forwards what it accepts, PipeSpec), default true. false: the
   * drafter drafts one token per pass, and MaG only extends blocks for the target.
   */
  readonly pipeline?: boolean;
  /**
   * Whether async drafting runs the second neural drafter as a level below the first (the pipeline's
   * neural case, async-cascade.ts), default false: on its own worker it drafts ahead of the drafter's
   * line, and the drafter reviews its drafts as it reviews MaG's. Needs `pipeline`.
   */
  readonly levelBelow?: boolean;
  /**
   * The smallest context (positions) of the cascade's models. Each round's drafts are clamped to
   * it (see draftRoom); undefined = unbounded.
   */
  readonly maxPositions?: number;
}

/** The smallest context (max positions) of several models; undefined when none states one. */
export function smallestContext(specs: readonly { readonly maxPositions: number | undefined }[]): number | undefined {
  const positions = specs.flatMap((s) => (s.maxPositions === undefined ? [] : [s.maxPositions]));
  return positions.length ? Math.min(...positions) : undefined;
}

/**
 * How many tokens a round may draft ahead of `committed`: min(remaining − 1, maxPositions −
 * committed − 1). The target's own token follows the drafts, so drafting the last remaining token
 * would only be cut; and a block of `committed + room` tokens plus a reviewer's token still fits
 * every model's positions (an actor refuses a review whose context plus one exceeds them). Every
 * level's draft, and every mid-level reviewer's added token, stays inside this room. 0 = the target
 * proposes alone.
 */
export function draftRoom(committed: number, remaining: number, maxPositions: number | undefined): number {
  return Math.max(0, Math.min(remaining - 1, (maxPositions ?? Infinity) - committed - 1));
}

/** K without drafter `index`: its review row (index + 1) and its column go; the target still drafts >= 1. */
export function dropFromKMatrix(kMatrix: readonly (readonly number[])[], index: number): number[][] {
  const rows = kMatrix.filter((_, r) => r !== index + 1).map((row) => row.filter((_, c) => c !== index));
  if (rows.length) rows[0]![rows.length - 1] = Math.max(1, rows[0]![rows.length - 1]!);
  return rows;
}

/**
 * The cascade loop over any levels (in this process or behind a transport). `top` is the target;
 * `drafters` are largest first with MaG, if any, last; `config.kMatrix` and `config.lenience` as in
 * CascadeConfig. Every level is released at the end.
 */
export async function runCascade(
  top: CascadeLevel,
  initialDrafters: readonly CascadeLevel[],
  config: Pick<CascadeConfig, 'kMatrix' | 'lenience' | 'magFirst'>,
  req: GenerateRequest,
  options: RunOptions,
): Promise<CascadeResult> {
  const rng = new Rng(req.seed);
  const everyLevel = [top, ...initialDrafters];
  let drafters = [...initialDrafters];
  const schedule =
    config.kMatrix === 'auto'
      ? new AdaptiveSchedule({
          initial: startingKMatrix,
          memory: options.scheduleMemory,
          load: () => top.load?.(),
          proposers: initialDrafters.filter((d) => d.proposesOnly).map((d) => d.name),
          draftContexts: options.draftContexts,
        })
      : undefined;
  /** What each drafter's drafts of this round are counted under by the schedule (its draft context). */
  let labels: string[] = [];
  let K = config.kMatrix === 'auto' ? [] : config.kMatrix.map((row) => [...row]);
  const accepted: number[] = [];
  const drafted: number[] = [];
  let rounds = 0;
  let magFirstRounds = 0;

  /**
   * Runs one call of `level`: its result, its wall time and the tokens it fed its model (for the
   * schedule); `ms` is undefined when the level's session was placed again during it (a failover:
   * the wait for a lost actor is no cost of a round).
   */
  async function timed<T>(level: CascadeLevel, call: () => Promise<T>): Promise<{ result: T; ms: number | undefined; fed: number }> {
    const t0 = performance.now();
    const before = level.stats.tokensScored;
    const placed = level.placements;
    const result = await call();
    // the first placement is the prefill's (already no sample past PREFILL_TOKENS); a later one is a failover
    const failedOver = placed !== undefined && placed > 0 && level.placements !== placed;
    return { result, ms: failedOver ? undefined : performance.now() - t0, fed: level.stats.tokensScored - before };
  }

  /**
   * Drafts block.tokens[block.length..] with drafters[first..n) per row `first` of K (the horizontal
   * cascade), never past `end` tokens in all; returns where the drafts start and which drafter put
   * each one there.
   */
  async function draft(first: number, block: Block, end: number): Promise<{ start: number; sources: string[] }> {
    const start = block.length;
    const sources: string[] = [];
    const last = drafters.length - 1;
    const mag = drafters[last];
    if (first === 0 && config.magFirst && last > 0 && mag instanceof MagLevel) {
      mag.proposeMatched(block, Math.min(K[0]![last]!, end - start), config.magFirst);
      // recorded apart from MaG's drafts below the drafters: the schedule's acceptance of those stays theirs
      if (block.length > start) {
        magFirstRounds++;
        return { start, sources: new Array<string>(block.length - start).fill(`${mag.name}-first`) };
      }
    }
    for (let i = first; i < drafters.length; i++) {
      const limit = Math.min(K[first]![i]!, end - start);
      while (block.length - start < limit) {
        const before = block.length;
        await step(i + 1, drafters[i]!, block, limit - (block.length - start), end);
        for (let p = before; p < block.length; p++) sources[p - start] = labels[i] ?? drafters[i]!.name;
        if (block.length === before) break; // a drafter with nothing to propose (MaG without a match)
      }
    }
    return { start, sources };
  }

  /**
   * Algorithm 1 below the target: drafters[first-1] reviews a block drafted by drafters[first..n),
   * or proposes autoregressively when it is the last drafter or its row of K is empty. The block
   * ends at most at `end` (`want` <= end − block.length): the reviewer adds one token, so the block
   * it reviews is drafted up to end − 1.
   */
  async function step(first: number, reviewer: CascadeLevel, block: Block, want: number, end: number): Promise<void> {
    if (first === drafters.length || K[first]!.every((k) => k === 0)) {
      const before = block.length;
      const { ms, fed } = await timed(reviewer, () => reviewer.propose(block, want, rng));
      // what it drafted: a batching session may decode fewer than asked (the loop above asks again)
      schedule?.proposed(reviewer.name, Math.max(1, block.length - before), ms, fed);
      return;
    }
    const { start, sources } = await draft(first, block, end - 1);
    const { result, ms, fed } = await timed(reviewer, () => reviewer.review(block, start, rng, config.lenience, true));
    schedule?.reviewed(reviewer.name, sources, result.accepted, ms, fed);
  }

  // A round the target decodes alone (no drafters, or a K whose target row is empty: the adaptive
  // schedule priced every draft out) proposes several tokens where the target's runner decodes them
  // in one call (ModelSession.decode, multi-step decoding; over a cluster, one actor call), as
  // target-only decoding does; the first round proposes one, so the first token streams as soon as
  // the prompt is read. The schedule plans again after it, as after any round.
  const plainSteps = initialDrafters.length === 0 || options.aloneSteps !== false ? (top.decodeSteps ?? 1) : 1;
  /** Whether the last round was the target's alone over several tokens (a pass per token). */
  let multiStep = false;

  /** One round: the target reviews a block of at most `room` drafts from the whole cascade, or proposes alone. */
  async function round(block: Block, room: number): Promise<void> {
    let start: number;
    let sources: string[];
    for (;;) {
      if (schedule) {
        const names = drafters.map((d) => d.name);
        const contexts = drafters.map((d) => (options.draftContexts === false ? undefined : d.draftContext?.(block.tokens)));
        labels = schedule.labels(names, contexts);
        K = schedule.plan(top.name, names, drafters.map((d) => d.lag?.(block.tokens) ?? 0), contexts);
      }
      if (drafters.length === 0 || K[0]!.every((k) => k === 0) || room === 0) {
        const want = rounds === 0 ? 1 : Math.min(plainSteps, room + 1);
        multiStep = want > 1;
        const { ms, fed } = await timed(top, () => top.propose(block, want, rng));
        // one pass is a sample of the target's review cost; several in one call (multi-step) are not
        if (want === 1) schedule?.reviewed(top.name, [], 0, ms, fed);
        return;
      }
      try {
        ({ start, sources } = await draft(0, block, block.committed + room));
        break;
      } catch (err) {
        const lost = err instanceof LevelUnavailableError ? drafters.find((d) => d.name === err.level) : undefined;
        if (!lost || !options.onLevelFailure?.(lost, err)) throw err;
        const index = drafters.indexOf(lost);
        if (!schedule) K = dropFromKMatrix(K, index);
        drafters = drafters.filter((d) => d !== lost);
        block.cut(block.committed);
      }
    }
    const k = block.length - start;
    const { result: outcome, ms, fed } = await timed(top, () => top.review(block, start, rng, 1, false));
    schedule?.reviewed(top.name, sources, outcome.accepted, ms, fed);
    for (let i = 0; i < k; i++) {
      drafted[i] = (drafted[i] ?? 0) + 1;
      if (i < outcome.accepted) accepted[i] = (accepted[i] ?? 0) + 1;
    }
  }

  const eos = new Set(req.stopAtEos === false ? [] : options.eosIds);
  const tokens = [...req.promptIds];
  const out: number[] = [];
  const logprobs: TokenLogprob[] = [];
  const start = performance.now();
  let firstToken = 0;
  let finishReason: FinishReason = 'length';
  try {
    while (out.length < req.maxTokens) {
      if (options.cancelled?.()) {
        finishReason = 'cancelled';
        break;
      }
      const committed = tokens.length;
      const block = new Block(tokens, committed);
      const room = draftRoom(committed, req.maxTokens - out.length, options.maxPositions);
      if (options.inRound) await options.inRound(rounds, () => round(block, room));
      else await round(block, room);
      const { fresh, freshLogprobs, stopped } = committable(tokens.slice(committed), req.maxTokens - out.length, eos, top, req.logprobs !== undefined);
      // a multi-step round made one target pass per token it kept (a remote target may have decoded
      // past an end-of-sequence id within its call: those passes are not the request's)
      rounds += multiStep ? Math.max(1, fresh.length) : 1;
      multiStep = false;
      if (stopped) finishReason = 'stop';
      tokens.length = committed;
      tokens.push(...fresh);
      out.push(...fresh);
      if (freshLogprobs) logprobs.push(...freshLogprobs);
      if (out.length > 0 && firstToken === 0) firstToken = performance.now() - start;
      if (fresh.length) await options.onTokens?.(fresh, freshLogprobs);
      if (finishReason === 'stop') break;
    }
  } finally {
    schedule?.finish();
    await Promise.all(everyLevel.map((l) => l.release()));
  }

  return cascadeResult(top, everyLevel, req, { out, logprobs, finishReason, rounds, drafted, accepted, start, firstToken }, {
    ...(schedule ? { schedule: Object.fromEntries([...schedule.chosen].sort((a, b) => b[1] - a[1])) } : {}),
    ...(config.magFirst ? { magFirstRounds } : {}),
  });
}

/**
 * What a round commits of the tokens the target emitted (accepted drafts, then its own): the budget
 * first, then EOS (an EOS the target accepted past max tokens is not generated: target-only
 * decoding stops at the budget and reports `length`); with `withLogprobs`, the target's log
 * probabilities of those tokens (one per token it added, taken from it and cut as they are).
 */
export function committable(emitted: readonly number[], remaining: number, eos: ReadonlySet<number>, top: CascadeLevel, withLogprobs: boolean): { fresh: number[]; freshLogprobs: TokenLogprob[] | undefined; stopped: boolean } {
  let fresh = emitted.slice(0, remaining);
  const stop = fresh.findIndex((t) => eos.has(t));
  if (stop >= 0) fresh = fresh.slice(0, stop);
  const freshLogprobs = withLogprobs ? (top.takeLogprobs?.() ?? []).slice(0, fresh.length) : undefined;
  if (freshLogprobs && freshLogprobs.length !== fresh.length) throw new Error(`the target reported ${freshLogprobs.length} log probabilities for ${fresh.length} tokens`);
  return { fresh, freshLogprobs, stopped: stop >= 0 };
}

/** A run's counters: tokens and log probabilities generated, rounds, drafts and acceptances by position, times (performance.now() ms). */
export interface RunTally {
  readonly out: number[];
  readonly logprobs: TokenLogprob[];
  readonly finishReason: FinishReason;
  readonly rounds: number;
  readonly drafted: number[];
  readonly accepted: number[];
  readonly start: number;
  readonly firstToken: number;
}

/** The CascadeResult of a run over `levels` (the target `top` first), with `extra` statistics. */
export function cascadeResult(top: CascadeLevel, levels: readonly CascadeLevel[], req: GenerateRequest, t: RunTally, extra: Partial<CascadeStats>): CascadeResult {
  const acceptedTokens = t.accepted.reduce((a, b) => a + b, 0);
  const models: Record<string, LevelStats> = {};
  for (const l of levels) models[l.name] = l.stats;
  return {
    tokenIds: t.out,
    finishReason: t.finishReason,
    ...(req.logprobs !== undefined ? { logprobs: t.logprobs } : {}),
    stats: {
      ...baseStats(req.promptIds.length, t.out.length, t.start, t.firstToken),
      rounds: t.rounds,
      draftedTokens: t.drafted.reduce((a, b) => a + b, 0),
      acceptedTokens,
      meanAcceptanceLength: t.rounds ? (acceptedTokens + t.rounds) / t.rounds : 0,
      acceptedByPosition: Array.from({ length: t.drafted.length }, (_, i) => t.accepted[i] ?? 0),
      draftedByPosition: t.drafted,
      models,
      ...standardizedWalltime(models, top.name, t.out.length),
      ...extra,
    },
  };
}
