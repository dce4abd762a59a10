import { InvalidArgumentError } from '../errors.ts';

/** A fixed K matrix (cumulative, n×n upper triangular), or `auto`: chosen every round (schedule.ts). */
export type KSchedule = readonly (readonly number[])[] | 'auto';

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
 * Resolves mode, explicit drafters and K into one plan; explicit settings win over the mode's. K
 * defaults to `auto` (the adaptive schedule). `byName`: drafters a request may name that no mode
 * uses by default (a family's feature drafter).
 */
export function planCascade(opts: { mode: Mode; drafters?: readonly string[]; kMatrix?: KSchedule; lenience?: number }, familyDrafters: readonly string[], byName: readonly string[] = []): CascadePlan {
  const drafters = opts.drafters ?? modeDrafters(opts.mode, familyDrafters);
  for (const d of drafters) {
    if (d !== 'mag' && !familyDrafters.includes(d) && !byName.includes(d)) {
      throw new InvalidArgumentError(`unknown drafter "${d}": this family has ${[...familyDrafters, ...byName, 'mag'].join(', ')}`);
    }
  }
  return { drafters, kMatrix: opts.kMatrix ?? 'auto', lenience: opts.lenience ?? 1 };
}
