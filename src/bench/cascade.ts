import { generateCascade, type DrafterSpec } from '../engine/cascade.ts';
import type { Drafting } from '../engine/async-cascade.ts';
import type { MagTables } from '../kernels/maxgram.ts';
import type { Verification } from '../kernels/noise.ts';
import type { SamplingParams } from '../kernels/sampling.ts';
import { drafterKind } from '../models/family.ts';
import type { ModelSession } from '../models/session.ts';
import { median } from './report.ts';
import { repeated4gramRate } from './workloads.ts';

/** One decoding method of the comparison: a cascade (no drafters = ar) with its K. */
export interface Method {
  readonly name: string;
  /** `eagle`: the feature drafter first (drafter name 'eagle'), alone or above other levels; its row of K is zero. */
  readonly kind: 'ar' | 'sd' | 'mag' | 'csd-vertical' | 'csd-horizontal' | 'csd' | 'eagle';
  readonly drafters: readonly string[];
  readonly kMatrix: readonly (readonly number[])[];
  /** Which earlier occurrence MaG copies from (default earliest). */
  readonly magOccurrence?: 'earliest' | 'recent';
  /** How sampled drafts are verified (default DEFAULT_VERIFICATION); greedy is the same under both. */
  readonly verification?: Verification;
  /** serial rounds (default) or async drafting (the first neural drafter runs ahead; K is implicit). */
  readonly drafting?: Drafting;
  /**
   * MaG first (CascadeConfig.magFirst): a round whose text repeats at least this many tokens is
   * MaG's copy; the drafters above it draft the others. The sweep tries MAG_FIRST_LENGTHS.
   */
  readonly magFirst?: number;
}

/** MaG first's minimum match lengths the K sweep tries. */
export const MAG_FIRST_LENGTHS = [2, 3, 4];

/** What every run needs: open sessions, MaG's table, tokenised prompts. */
export interface BenchContext {
  readonly target: ModelSession;
  readonly drafters: ReadonlyMap<string, ModelSession>;
  readonly magTables: MagTables;
  readonly maxTokens: number;
  /** The feature drafter (`--eagle-model`), drafter name 'eagle' in methods. */
  readonly eagle?: ModelSession;
}

/** Totals of one method over a prompt set. */
export interface RunTotals {
  readonly tokens: number;
  readonly seconds: number;
  readonly rounds: number;
  readonly accepted: number;
  readonly draftedByPosition: number[];
  readonly acceptedByPosition: number[];
  /** Forward passes per model name. */
  readonly passes: Record<string, number>;
  readonly outputs: number[][];
}

/** Methods name the feature drafter (BenchContext.eagle) `eagle`. */
const METHOD_NAMES = { eagle: 'eagle' };

function specs(ctx: BenchContext, m: Method): DrafterSpec[] {
  return m.drafters.map((d): DrafterSpec => {
    const kind = drafterKind(METHOD_NAMES, d);
    return kind === 'mag' ? { kind, tables: ctx.magTables, occurrence: m.magOccurrence } : kind === 'eagle' ? { kind, session: ctx.eagle! } : { kind, session: ctx.drafters.get(d)! };
  });
}

/** Runs `method` over every prompt once; seeds depend on the prompt index and `seed`. */
export async function runMethod(ctx: BenchContext, m: Method, prompts: readonly number[][], sampling: SamplingParams, seed: number): Promise<RunTotals> {
  const drafted: number[] = [];
  const accepted: number[] = [];
  const passes: Record<string, number> = {};
  const outputs: number[][] = [];
  let tokens = 0;
  let seconds = 0;
  let rounds = 0;
  let acc = 0;
  for (const [i, promptIds] of prompts.entries()) {
    const r = await generateCascade(ctx.target, { drafters: specs(ctx, m), kMatrix: m.drafting === 'async' ? 'auto' : m.kMatrix, lenience: 1, drafting: m.drafting, magFirst: m.magFirst }, {
      promptIds,
      maxTokens: ctx.maxTokens,
      sampling,
      seed: seed * 1000 + i,
      stopAtEos: false,
      verification: m.verification,
    });
    const s = r.stats;
    outputs.push(r.tokenIds);
    tokens += s.generatedTokens;
    seconds += s.seconds;
    rounds += s.rounds;
    acc += s.acceptedTokens;
    s.draftedByPosition.forEach((d, j) => (drafted[j] = (drafted[j] ?? 0) + d));
    s.acceptedByPosition.forEach((a, j) => (accepted[j] = (accepted[j] ?? 0) + a));
    for (const [name, st] of Object.entries(s.models)) passes[name] = (passes[name] ?? 0) + st.forwardPasses;
  }
  return { tokens, seconds, rounds, accepted: acc, draftedByPosition: drafted, acceptedByPosition: accepted, passes, outputs };
}

/** K candidates per method kind for n = drafters.length (MaG last), swept to give each method its best K. */
export function candidates(kind: Method['kind'], drafters: readonly string[]): number[][][] {
  const n = drafters.length;
  const step = (c: number, s: number) => (drafters[c] === 'mag' ? 2 * s : s);
  const cumRow = (r: number, s: number) => {
    let acc = 0;
    return Array.from({ length: n }, (_, c) => (c < r ? 0 : (acc += step(c, s))));
  };
  switch (kind) {
    case 'ar':
      return [[]];
    case 'sd':
    case 'mag':
      return [2, 3, 4, 6, 8].map((k) => [[k]]);
    case 'csd-vertical':
      // Each level's block comes entirely from the level below it (no horizontal contribution).
      return [2, 3, 4, 6].map((k) => Array.from({ length: n }, (_, r) => Array.from({ length: n }, (_, c) => (c < r ? 0 : Math.max(2, k - r)))));
    case 'csd-horizontal':
      // The target's block: each drafter in turn, token by token; no drafter reviews another.
      return [1, 2, 3].map((s) => Array.from({ length: n }, (_, r) => (r === 0 ? cumRow(0, s) : new Array(n).fill(0))));
    case 'csd':
      return [1, 2, 3].map((s) => Array.from({ length: n }, (_, r) => cumRow(r, s)));
    case 'eagle': {
      // the feature drafter drafts k first, then the levels below it as csd (s each, MaG 2s); it reviews nothing
      if (n === 1) return [2, 3, 4, 6].map((k) => [[k]]);
      return [2, 3, 4].flatMap((k) =>
        [1, 2].map((s) =>
          Array.from({ length: n }, (_, r) => {
            if (r === 1) return new Array<number>(n).fill(0);
            const row = cumRow(Math.max(r, 1), s);
            return r === 0 ? row.map((v, c) => (c === 0 ? k : k + v)) : row;
          }),
        ),
      );
    }
  }
}

/** Per-method result of one workload at one temperature. */
export interface MethodResult {
  readonly method: string;
  readonly kind: Method['kind'];
  readonly drafters: readonly string[];
  readonly kMatrix: readonly (readonly number[])[];
  /** The method's verification rule and drafting mode, where it set them. */
  readonly verification?: Method['verification'];
  readonly drafting?: Method['drafting'];
  /** Median over repeats of (tokens generated / seconds), whole prompt set per repeat. */
  readonly tokensPerSecond: number;
  readonly repeatTokensPerSecond: number[];
  speedupVsAr: number;
  speedupVsBestSd: number;
  /** Standardised walltime improvement: target passes of ar over Σ passes × measured cost coefficient. */
  readonly swi: number;
  readonly meanAcceptanceLength: number;
  readonly acceptanceByPosition: number[];
  /**
   * Every output equals ar's of the same repeat (same seeds): checked greedy, and sampled where both
   * ran under drafter-invariant verification (undefined otherwise).
   */
  readonly identicalToAr: boolean | undefined;
  /**
   * Single-drafter methods (sd, mag): the per-position acceptance α that, taken as i.i.d., explains the
   * measured mean acceptance length at this K, and the paper's expected walltime improvement for that
   * α, K and the drafter's measured cost (target block scoring priced as one decode).
   */
  readonly alpha?: number;
  readonly ewif?: number;
  readonly sweep: { kMatrix: readonly (readonly number[])[]; magFirst?: number; tokensPerSecond: number }[];
  /** MaG first's minimum match length, for a method that drafts MaG first (swept with K). */
  readonly magFirst?: number;
}

/** Summarises repeated runs of one method. `costs[m]` = per-pass cost of model m relative to the target. */
export function summarise(m: Method, runs: RunTotals[], costs: Record<string, number>, arOutputs: number[][][] | undefined, sweep: MethodResult['sweep']): MethodResult {
  const tps = runs.map((r) => r.tokens / r.seconds);
  const first = runs[0]!;
  const weighted = Object.entries(first.passes).reduce((a, [name, p]) => a + p * (costs[name] ?? 0), 0);
  const meanAcceptanceLength = (first.accepted + first.rounds) / first.rounds;
  const single = (m.kind === 'sd' || m.kind === 'mag') && m.kMatrix.length === 1 ? m.kMatrix[0]![0]! : 0;
  const alpha = single ? fitAlpha(meanAcceptanceLength, single) : undefined;
  return {
    method: m.name,
    kind: m.kind,
    drafters: m.drafters,
    kMatrix: m.kMatrix,
    ...(m.verification ? { verification: m.verification } : {}),
    ...(m.drafting ? { drafting: m.drafting } : {}),
    ...(m.magFirst ? { magFirst: m.magFirst } : {}),
    tokensPerSecond: median(tps),
    repeatTokensPerSecond: tps,
    speedupVsAr: NaN,
    speedupVsBestSd: NaN,
    swi: first.tokens / weighted,
    meanAcceptanceLength,
    acceptanceByPosition: first.draftedByPosition.map((d, i) => (first.acceptedByPosition[i] ?? 0) / d),
    identicalToAr: arOutputs ? runs.every((r, k) => r.outputs.every((o, i) => o.join() === arOutputs[k]![i]!.join())) : undefined,
    ...(alpha === undefined ? {} : { alpha, ewif: ewif(alpha, single, costs[m.drafters[0]!] ?? 0) }),
    sweep,
  };
}

/**
 * Expected walltime improvement of one drafter (CS Drafting, after Leviathan et al.): with i.i.d.
 * acceptance α, k drafted tokens per round and drafter cost c relative to one target pass, a round
 * yields (1 − α^(k+1)) / (1 − α) tokens for k·c + 1 target-pass equivalents.
 */
export function ewif(alpha: number, k: number, c: number): number {
  const tokens = alpha >= 1 ? k + 1 : (1 - alpha ** (k + 1)) / (1 - alpha);
  return tokens / (k * c + 1);
}

/** The α in [0, 1] whose expected round yield (1 − α^(k+1)) / (1 − α) equals `meanLength` (bisection). */
export function fitAlpha(meanLength: number, k: number): number {
  const yieldOf = (a: number) => (a >= 1 ? k + 1 : (1 - a ** (k + 1)) / (1 - a));
  if (meanLength <= 1) return 0;
  if (meanLength >= k + 1) return 1;
  let lo = 0;
  let hi = 1;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (yieldOf(mid) < meanLength) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** Mean repeated-4-gram rate of the target's outputs (from the ar runs). */
export const repetitionRate = (outputs: number[][]): number => outputs.reduce((a, o) => a + repeated4gramRate(o), 0) / outputs.length;
