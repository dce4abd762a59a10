import { ModelLoadError } from '../errors.ts';
import type { ModelSession } from './session.ts';

/**
 * Where a model runs when its execution providers are `auto`: each candidate placement is opened and
 * timed on the pass the model will mostly run, and the cheapest is kept (issue 22: on an NVIDIA GPU a
 * 1-2 layer drafter costs 4.7 ms a pass on the WebGPU EP against 1 ms on the CPU, while a large
 * target is the other way round). A drafter is timed on decode(1), the pass it drafts with; a target
 * on verify(VERIFY_TOKENS), the pass it reviews blocks with. Both over a cache of CONTEXT_TOKENS,
 * rolled back after each pass, medians of REPEATS after a warm-up. This is the cost the adaptive
 * schedule (engine/schedule.ts) then measures per round; placement is decided once, at load.
 */

/** The placements `auto` tries, in order: every GPU execution provider this build ships, then the CPU. */
export const AUTO_CANDIDATES: readonly (readonly string[])[] = [['webgpu'], ['cpu']];
export const CONTEXT_TOKENS = 64;
export const VERIFY_TOKENS = 8;
export const REPEATS = 5;

/** One placement tried: its execution providers, and the median pass cost in milliseconds or why it could not run. */
export interface PlacementTrial {
  readonly executionProviders: readonly string[];
  readonly ms?: number;
  readonly error?: string;
}

export interface Placement<S extends ModelSession = ModelSession> {
  readonly session: S;
  readonly executionProviders: readonly string[];
  /** Every candidate, in the order tried. */
  readonly trials: readonly PlacementTrial[];
}

/** A trial as the progress line on stderr says it: `placing draft-l1: cpu 0.57 ms a pass`. */
export const describeTrial = (name: string, t: PlacementTrial): string =>
  `placing ${name}: ${t.executionProviders.join(',')} ${t.ms !== undefined ? `${t.ms.toFixed(2)} ms a pass` : `cannot run (${t.error})`}`;

/** Drafters' execution providers where none are pinned: the CPU beside a CPU target, else placed by cost. */
export const draftProvidersBeside = (target: readonly string[]): string[] => (target.length === 1 && target[0] === 'cpu' ? ['cpu'] : ['auto']);

/** Whether a list of execution providers asks for automatic placement. */
export const isAuto = (eps: readonly string[] | undefined): boolean => eps?.length === 1 && eps[0] === 'auto';

/**
 * The median milliseconds of the pass `role` runs most: decode(1) for a drafter, verify(VERIFY_TOKENS)
 * for a target, over a cache of CONTEXT_TOKENS (token ids 1..CONTEXT_TOKENS, any text costs the same).
 */
export async function passCost(session: ModelSession, role: 'draft' | 'target', repeats = REPEATS): Promise<number> {
  const seqId = `placement-probe-${Math.random().toString(36).slice(2)}`;
  const vocab = session.spec.vocabSize;
  const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => 1 + ((from + i) % (vocab - 1)));
  const fed = role === 'draft' ? 1 : VERIFY_TOKENS;
  try {
    await session.forward({ seqId, inputIds: ids(CONTEXT_TOKENS, 0) }, 'last');
    const times: number[] = [];
    for (let i = 0; i < repeats + 2; i++) {
      const t0 = performance.now();
      await session.forward({ seqId, inputIds: ids(fed, CONTEXT_TOKENS + i), keep: CONTEXT_TOKENS }, 'all');
      if (i >= 2) times.push(performance.now() - t0); // the first two warm the kernels up
    }
    times.sort((a, b) => a - b);
    return times[times.length >> 1]!;
  } finally {
    await session.release(seqId).catch(() => undefined);
  }
}

/**
 * Opens the model under each candidate (`open` must not fall back to the CPU on its own), times it
 * (passCost), keeps the cheapest session and closes the others. A candidate that fails to open or
 * run (no Vulkan device for webgpu) is recorded with its error and skipped. Throws ModelLoadError when
 * none runs. `onTrial` reports progress (model loads take seconds on a GPU).
 */
export async function placeByCost<S extends ModelSession>(
  open: (executionProviders: readonly string[]) => Promise<S>,
  role: 'draft' | 'target',
  candidates: readonly (readonly string[])[] = AUTO_CANDIDATES,
  onTrial: (trial: PlacementTrial) => void = () => undefined,
): Promise<Placement<S>> {
  const trials: PlacementTrial[] = [];
  let best: { session: S; eps: readonly string[]; ms: number } | undefined;
  for (const eps of candidates) {
    let session: S | undefined;
    let trial: PlacementTrial;
    try {
      session = await open(eps);
      const ms = await passCost(session, role);
      trial = { executionProviders: eps, ms };
      if (!best || ms < best.ms) [best, session] = [{ session, eps, ms }, best?.session];
    } catch (err) {
      trial = { executionProviders: eps, error: (err as Error).message.split('\n')[0]! };
    }
    await session?.close().catch(() => undefined); // the slower (or failed) one; a failure to close it loses nothing kept
    trials.push(trial);
    onTrial(trial);
  }
  if (!best) throw new ModelLoadError(`no placement could run the model: ${trials.map((t) => `${t.executionProviders.join(',')}: ${t.error}`).join('; ')}`);
  return { session: best.session, executionProviders: best.eps, trials };
}
