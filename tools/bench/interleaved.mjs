// Timing shared by the pass-cost scripts (tools/bench/drafter-cost.mjs, tools/train/eagle_check.mjs).

/** The median of `xs` (the upper one of an even count). */
export const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/**
 * Median ms of each of `fns` (async passes) over `repeats` rounds, after `warmup` untimed rounds; the
 * passes are interleaved round by round, so that load from other processes falls on all of them alike.
 */
export async function timeInterleaved(fns, { warmup, repeats }) {
  for (let i = 0; i < warmup; i++) for (const fn of fns) await fn();
  const ms = fns.map(() => []);
  for (let i = 0; i < repeats; i++) {
    for (const [j, fn] of fns.entries()) {
      const t0 = process.hrtime.bigint();
      await fn();
      ms[j].push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  return ms.map(median);
}
