/**
 * Chi-square goodness of fit for the exactness tests. A test fails when the p-value falls below
 * FALSE_FAILURE (1e-4): the probability that an exact sampler fails a given check by chance.
 */
export const FALSE_FAILURE = 1e-4;

function lnGamma(z: number): number {
  // Lanczos approximation (g = 7, n = 9), accurate to ~1e-15 for z > 0.
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61503916999185, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - lnGamma(1 - z);
  z -= 1;
  let x = c[0]!;
  for (let i = 1; i < 9; i++) x += c[i]! / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(x);
}

/** P(X > x) for X ~ chi-square(df): the regularised upper incomplete gamma Q(df/2, x/2). */
export function chiSquareSurvival(x: number, df: number): number {
  const a = df / 2;
  const y = x / 2;
  if (y <= 0) return 1;
  if (y < a + 1) {
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < 10_000 && term > sum * 1e-16; n++) {
      term *= y / (a + n);
      sum += term;
    }
    return 1 - sum * Math.exp(-y + a * Math.log(y) - lnGamma(a));
  }
  // Continued fraction (Lentz) for the upper tail.
  let b = y + 1 - a;
  let c = 1 / 1e-300;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 10_000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (Math.abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-y + a * Math.log(y) - lnGamma(a)) * h;
}

/** Pearson's test of observed counts against expected probabilities; cells with p = 0 must stay empty. */
export function chiSquare(counts: readonly number[], probs: ArrayLike<number>): { chi2: number; df: number; pValue: number; impossible: number } {
  const n = counts.reduce((a, b) => a + b, 0);
  let chi2 = 0;
  let cells = 0;
  let impossible = 0;
  for (let i = 0; i < counts.length; i++) {
    const e = n * probs[i]!;
    if (e === 0) {
      impossible += counts[i]!;
      continue;
    }
    chi2 += (counts[i]! - e) ** 2 / e;
    cells++;
  }
  return { chi2, df: cells - 1, pValue: chiSquareSurvival(chi2, cells - 1), impossible };
}
