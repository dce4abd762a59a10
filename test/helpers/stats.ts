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

/** Expected count below which a token's cell is pooled with others in positionalChiSquare. */
const MIN_EXPECTED = 5;

/** How well one position i of generated sequences follows the reference, given each prefix. */
export interface PositionFit {
  readonly position: number;
  /** Samples long enough to have a token at this position. */
  readonly samples: number;
  /** Distinct prefixes (tokens 0..i-1) among them, and those tested (seen >= minCount times, >= 2 cells). */
  readonly prefixes: number;
  readonly tested: number;
  /** Fraction of `samples` whose prefix was tested. */
  readonly covered: number;
  /** Pearson's statistic summed over the tested prefixes, with their degrees of freedom summed. */
  readonly chi2: number;
  readonly df: number;
  readonly pValue: number;
  /** Tokens drawn at this position where the reference gives them probability 0 (every prefix, tested or not). */
  readonly impossible: number;
}

/**
 * Tests every position of generated sequences against the reference's conditional distribution
 * given the tokens before it. Under the null the tokens at position i that follow a given prefix are
 * multinomial with probabilities `conditional([...prompt, ...prefix])`; a prefix's count does not
 * depend on the token after it, so choosing the prefixes seen at least `minCount` times keeps that
 * true. Per prefix, cells expected below 5 are pooled (the choice depends on counts of prefixes and
 * on the reference only), so Pearson's approximation holds. Samples may have different lengths (a
 * sample stops by a rule that sees only its own tokens so far): position i uses those that reach it.
 * Tokens are integers in [0, conditional(..).length).
 */
export function positionalChiSquare(
  samples: readonly (readonly number[])[],
  prompt: readonly number[],
  conditional: (context: readonly number[]) => ArrayLike<number>,
  options: { minCount?: number } = {},
): PositionFit[] {
  const minCount = options.minCount ?? 2 * MIN_EXPECTED;
  const longest = samples.reduce((m, s) => Math.max(m, s.length), 0);
  const fits: PositionFit[] = [];
  for (let i = 0; i < longest; i++) {
    const byPrefix = new Map<string, { prefix: readonly number[]; next: number[] }>();
    let reached = 0;
    for (const s of samples) {
      if (s.length <= i) continue;
      reached++;
      const key = s.slice(0, i).join(',');
      let entry = byPrefix.get(key);
      if (!entry) byPrefix.set(key, (entry = { prefix: s.slice(0, i), next: [] }));
      entry.next.push(s[i]!);
    }
    let chi2 = 0;
    let df = 0;
    let tested = 0;
    let covered = 0;
    let impossible = 0;
    for (const { prefix, next } of byPrefix.values()) {
      const p = conditional([...prompt, ...prefix]);
      const counts = new Array<number>(p.length).fill(0);
      for (const t of next) counts[t] = counts[t]! + 1;
      counts.forEach((c, t) => {
        if (c > 0 && !(p[t]! > 0)) impossible += c;
      });
      if (next.length < minCount) continue;
      const fit = pooledPearson(counts, p, next.length);
      if (fit.df === 0) continue;
      chi2 += fit.chi2;
      df += fit.df;
      tested++;
      covered += next.length;
    }
    fits.push({ position: i, samples: reached, prefixes: byPrefix.size, tested, covered: reached ? covered / reached : 0, chi2, df, pValue: df ? chiSquareSurvival(chi2, df) : 1, impossible });
  }
  return fits;
}

/** Pearson's statistic of n draws against p, cells with p > 0 pooled smallest first until each expects >= 5. */
function pooledPearson(counts: readonly number[], p: ArrayLike<number>, n: number): { chi2: number; df: number } {
  const cells = counts.map((o, t) => ({ o, e: n * p[t]! })).filter((c) => c.e > 0).sort((a, b) => a.e - b.e);
  const bins: { o: number; e: number }[] = [];
  let open = { o: 0, e: 0 };
  for (const c of cells) {
    open = { o: open.o + c.o, e: open.e + c.e };
    if (open.e >= MIN_EXPECTED) {
      bins.push(open);
      open = { o: 0, e: 0 };
    }
  }
  if (open.e > 0) {
    const last = bins.pop() ?? { o: 0, e: 0 };
    bins.push({ o: last.o + open.o, e: last.e + open.e });
  }
  return { chi2: bins.reduce((s, b) => s + (b.o - b.e) ** 2 / b.e, 0), df: bins.length - 1 };
}

/** One line per position: what was tested and how it fared (for assertion messages and logs). */
export function describeFits(fits: readonly PositionFit[]): string {
  return fits
    .map((f) => `pos ${f.position}: ${f.tested}/${f.prefixes} prefixes, ${(100 * f.covered).toFixed(0)}% of ${f.samples} covered, chi2 ${f.chi2.toFixed(1)} on ${f.df} df, p ${f.pValue.toExponential(2)}${f.impossible ? `, ${f.impossible} impossible` : ''}`)
    .join('\n');
}

/** Fraction of the samples at a position that positionalChiSquare must test. */
export const MIN_COVERED = 0.5;

/**
 * What is wrong with positional fits, one line per problem (empty when the sampler passes): a token
 * the reference cannot produce, a position where fewer than `minCovered` of the samples were tested,
 * or one whose p-value falls below FALSE_FAILURE / positions (so an exact sampler fails the whole
 * check by chance with probability below FALSE_FAILURE).
 */
export function misfits(fits: readonly PositionFit[], minCovered = MIN_COVERED): string[] {
  const alpha = FALSE_FAILURE / fits.length;
  return fits.flatMap((f) => [
    ...(f.impossible ? [`position ${f.position}: ${f.impossible} tokens of probability 0`] : []),
    ...(f.covered < minCovered ? [`position ${f.position}: only ${(100 * f.covered).toFixed(0)}% of the samples tested`] : []),
    ...(f.pValue <= alpha ? [`position ${f.position}: p = ${f.pValue.toExponential(2)} <= ${alpha.toExponential(2)}`] : []),
  ]);
}
