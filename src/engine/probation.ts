/** Rest, in target passes, after a first probe that falls short; doubled after each next one, up to MAX_PAUSE. */
const FIRST_PAUSE = 16;
const MAX_PAUSE = 256;

/**
 * A part of async drafting on probation (the drafter, its outcome branches): it runs while its gain
 * per trial (accepted drafts per target pass, or per branch token) reaches `minGain` over each
 * probe of `trialsPerProbe` trials, and rests for a pause of target passes after a probe that falls short
 * (FIRST_PAUSE, doubling while it still does not pay, up to MAX_PAUSE; FIRST_PAUSE again once it pays).
 */
export class Probation {
  private trials = 0;
  private gain = 0;
  private pause = FIRST_PAUSE;
  /** The first target pass after the rest. */
  until = 0;

  constructor(
    private readonly trialsPerProbe: number,
    private readonly minGain: number,
  ) {}

  resting(pass: number): boolean {
    return pass < this.until;
  }

  /** Counts trials and gain; after a whole probe, starts a rest at target pass `pass` when it fell short (and says so). */
  record(trials: number, gain: number, pass: number): boolean {
    this.trials += trials;
    this.gain += gain;
    if (this.trials < this.trialsPerProbe) return false;
    const short = this.gain / this.trials < this.minGain;
    if (short) {
      this.until = pass + this.pause;
      this.pause = Math.min(MAX_PAUSE, 2 * this.pause);
    } else this.pause = FIRST_PAUSE;
    this.trials = 0;
    this.gain = 0;
    return short;
  }
}
