/** The q-quantile (0..1) of a list by the nearest-rank method (the ⌈q·n⌉-th smallest); NaN for an empty list. */
export function quantile(xs: readonly number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}
