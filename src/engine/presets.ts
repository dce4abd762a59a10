import { InvalidArgumentError } from '../errors.ts';

/** A fixed K matrix (cumulative, n×n upper triangular), or `auto`: chosen every round (schedule.ts). */
export type KSchedule = readonly (readonly number[])[] | 'auto';

/**
 * Most tokens a K entry may ask of a drafter at once: a cluster's actor proposes at most this many
 * in one call (MAX_WANT, src/actors/model-actor.ts), so the gateway and `cascade generate` refuse
 * larger entries alike.
 */
export const MAX_K = 64;

/** Why a K entry above MAX_K is refused (for schemas that name the entry themselves). */
export const K_BOUND = `a K entry may be at most ${MAX_K}, the most tokens one drafter call proposes`;

/** Refuses a K entry above MAX_K, naming it `where[r][c]` (the field or flag the matrix came from). */
export function checkKBound(kMatrix: KSchedule, where: string): void {
  if (kMatrix === 'auto') return;
  kMatrix.forEach((row, r) =>
    row.forEach((k, c) => {
      if (k > MAX_K) throw new InvalidArgumentError(`${where}[${r}][${c}] is ${k}: ${K_BOUND}`, { field: 'k_matrix' });
    }),
  );
}

/** The decoding modes of `cascade generate --mode`, all run by the same cascade code. */
export const MODES = ['ar', 'sd', 'mag', 'csd'] as const;
export type Mode = (typeof MODES)[number];

/** A named cascade before its models are opened: drafter names (family members or 'mag') and K. */
export interface CascadePlan {
  readonly drafters: readonly string[];
  readonly kMatrix: KSchedule;
  readonly lenience: number;
}

/**
 * Default K (cumulative convention, SPEC §4.2): every level drafts 2 tokens per drafter below it,
 * and MaG, which costs nothing, 2 more: for [d1, d2, mag] that is [[2, 4, 8], [0, 2, 6], [0, 0, 4]].
 * Tuned values come from `cascade bench cascade`; these are only a starting point.
 */
export function defaultKMatrix(drafters: readonly string[]): number[][] {
  const n = drafters.length;
  return Array.from({ length: n }, (_, r) =>
    Array.from({ length: n }, (_, c) => (c < r ? 0 : 2 * (c - r + 1) + (drafters[c] === 'mag' ? 2 : 0))),
  );
}

/** The K a cascade starts from: [[4]] for one drafter, else defaultKMatrix. */
export function startingKMatrix(drafters: readonly string[]): number[][] {
  return drafters.length === 1 ? [[4]] : defaultKMatrix(drafters);
}

/** The drafters of each mode for a family whose neural drafters are `familyDrafters` (largest first). */
export function modeDrafters(mode: Mode, familyDrafters: readonly string[]): string[] {
  switch (mode) {
    case 'ar':
      return [];
    case 'sd':
      if (!familyDrafters.length) throw new InvalidArgumentError('mode sd needs a neural drafter, and this family has none');
      return [familyDrafters[0]!];
    case 'mag':
      return ['mag'];
    case 'csd':
      return [...familyDrafters, 'mag'];
  }
}

/**
 * Resolves mode, explicit drafters and K into one plan; explicit settings win over the mode's,
 * except that mode `ar` (target-only decoding, the reference) takes no drafters. K defaults to
 * `auto` (the adaptive schedule). `byName`: drafters a request may name that no mode
 * uses by default (a family's feature drafter). Explicit drafters name each drafter once, and at
 * least one unless the mode is `ar` (target-only decoding is that mode, not an empty list) or the
 * caller adds levels above them (`levelsAbove`, e.g. a self-draft copy: then it is the only drafter).
 */
export function planCascade(opts: { mode: Mode; drafters?: readonly string[]; kMatrix?: KSchedule; lenience?: number; levelsAbove?: number }, familyDrafters: readonly string[], byName: readonly string[] = []): CascadePlan {
  if (opts.mode === 'ar' && opts.drafters?.length) {
    throw new InvalidArgumentError(`mode ar is target-only decoding, with no drafters: leave out the drafters (${opts.drafters.join(', ')}) or name a speculative mode (sd, mag or csd) with them`);
  }
  const drafters = opts.drafters ?? modeDrafters(opts.mode, familyDrafters);
  for (const d of drafters) {
    if (d !== 'mag' && !familyDrafters.includes(d) && !byName.includes(d)) {
      throw new InvalidArgumentError(`unknown drafter "${d}": this family has ${[...familyDrafters, ...byName, 'mag'].join(', ')}`);
    }
  }
  if (!drafters.length && opts.mode !== 'ar' && !opts.levelsAbove) throw new InvalidArgumentError(`the drafters list is empty: for target-only decoding use mode ar, else name at least one drafter (this family has ${[...familyDrafters, ...byName, 'mag'].join(', ')})`);
  const twice = drafters.find((d, i) => drafters.indexOf(d) !== i);
  if (twice !== undefined) throw new InvalidArgumentError(`drafter "${twice}" is named twice: each drafter is one level of the cascade, named once`);
  return { drafters, kMatrix: opts.kMatrix ?? 'auto', lenience: opts.lenience ?? 1 };
}
