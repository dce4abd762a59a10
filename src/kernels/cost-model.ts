/**
 * A call's cost as a line, ms = fixed + perToken × tokens, fitted online by least squares over
 * exponentially decayed observations (recent calls weigh most, so the fit follows a changing load).
 * Until observations spread over several sizes the slope is undetermined; a prior (pseudo-observations
 * on the line fixed + perToken × x at two sizes) keeps it sensible. Unless given, the prior follows the
 * recent observations' mean (re-anchored at every fit), so a line measured while the process was cold
 * does not outlive it when later calls all have one size. Its shape depends on the call:
 * one forward over x tokens (`forward`) costs little more per extra token, so its slope is taken as
 * `PRIOR_SLOPE` of a one-token call (`cascade bench costs`: scoring 16 tokens costs ~1.8× one);
 * x tokens drafted autoregressively (`autoregressive`) cost x forwards, so its prior is proportional.
 */
export class LinearCost {
  private w = 0;
  private sx = 0;
  private sy = 0;
  private sxx = 0;
  private sxy = 0;
  private prior: { fixed: number; perToken: number } | undefined;
  private readonly given: boolean;
  /** The fit, computed once per observation: the schedule asks for it hundreds of times a round. */
  private fit: { fixed: number; perToken: number } | undefined;
  observations = 0;

  constructor(
    /** Weight kept by past observations at each new one. */
    private readonly decay = 0.95,
    private readonly shape: 'forward' | 'autoregressive' = 'forward',
    prior?: { fixed: number; perToken: number },
    /** Total weight of the prior's pseudo-observations. */
    private readonly priorWeight = 1,
  ) {
    this.prior = prior;
    this.given = prior !== undefined;
  }

  /**
   * Records one call of `tokens` tokens that took `ms`. A model's first calls are slow (allocation,
   * kernel selection): the first observation only sets the prior (weight `priorWeight`), and the
   * prior is re-anchored on the second, which therefore replaces the first.
   */
  add(tokens: number, ms: number): void {
    if (!(ms >= 0) || !(tokens >= 0) || !Number.isFinite(ms)) return;
    this.fit = undefined;
    if (this.observations < 2 && !this.given) {
      this.prior = this.anchored(tokens, ms);
      if (this.observations++ === 0) return;
    }
    this.w = this.w * this.decay + 1;
    this.sx = this.sx * this.decay + tokens;
    this.sy = this.sy * this.decay + ms;
    this.sxx = this.sxx * this.decay + tokens * tokens;
    this.sxy = this.sxy * this.decay + tokens * ms;
    this.observations++;
  }

  /** The prior's line through a call of `tokens` tokens taking `ms`, in this call's shape. */
  private anchored(tokens: number, ms: number): { fixed: number; perToken: number } {
    if (this.shape === 'autoregressive') return { fixed: 0, perToken: ms / Math.max(1, tokens) };
    const fixed = ms / (1 + PRIOR_SLOPE * tokens);
    return { fixed, perToken: PRIOR_SLOPE * fixed };
  }

  /** Whether the fit rests on measurements past the warm-up (or on a given prior). */
  get known(): boolean {
    return this.given || this.observations >= WARM_CALLS;
  }

  /** The fitted line (fixed >= 0, perToken >= 0); zeros before any observation or prior. */
  coefficients(): { fixed: number; perToken: number } {
    return (this.fit ??= this.solve());
  }

  private solve(): { fixed: number; perToken: number } {
    const p = this.given || this.w === 0 ? this.prior : this.anchored(this.sx / this.w, this.sy / this.w);
    if (!p) return { fixed: 0, perToken: 0 };
    // the prior as pseudo-observations at x = 1 and x = 8
    let w = this.w, sx = this.sx, sy = this.sy, sxx = this.sxx, sxy = this.sxy;
    for (const x of [1, 8]) {
      const y = p.fixed + p.perToken * x;
      const pw = this.priorWeight / 2;
      w += pw;
      sx += pw * x;
      sy += pw * y;
      sxx += pw * x * x;
      sxy += pw * x * y;
    }
    const varX = sxx - (sx * sx) / w;
    let perToken = varX > 1e-9 ? (sxy - (sx * sy) / w) / varX : p.perToken;
    perToken = Math.max(0, perToken);
    const fixed = Math.max(0, (sy - perToken * sx) / w);
    return { fixed, perToken };
  }

  /** Predicted ms of a call of `tokens` tokens. */
  predict(tokens: number): number {
    const c = this.coefficients();
    return c.fixed + c.perToken * tokens;
  }
}

/** Calls after which a model counts as timed: the first is warm-up, the second anchors the prior. */
const WARM_CALLS = 3;

/** Default marginal cost of one more token in a call, as a fraction of a one-token call. */
export const PRIOR_SLOPE = 0.05;

/** An exponentially weighted mean. */
export class Ewma {
  private v: number | undefined;
  constructor(
    private readonly alpha: number,
    private readonly initial: number,
  ) {}
  add(x: number): void {
    this.v = this.v === undefined ? x : this.v + this.alpha * (x - this.v);
  }
  get value(): number {
    return this.v ?? this.initial;
  }
}
