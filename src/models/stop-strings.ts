/**
 * Stop sequences over streamed text (OpenAI's `stop`, up to 4 strings). Text goes in as it is
 * decoded; what comes out is the text before the first stop string, held back only while it could
 * still be the start of one. Exact under speculation: the cascade's tokens are the target's, so the
 * text cut at the first stop string is target-only decoding's, however many tokens a round emitted
 * past it (they are dropped).
 */
export class StopMatcher {
  private held = '';
  private done = false;

  /** Throws RangeError for an empty stop string (it would match everywhere). */
  constructor(private readonly stops: readonly string[]) {
    if (stops.some((s) => s.length === 0)) throw new RangeError('a stop string may not be empty');
  }

  /** Whether a stop string has been seen; no text is taken after it. */
  get stopped(): boolean {
    return this.done;
  }

  /** Takes the next decoded text; returns the text that is now certain to come before any stop string. */
  push(text: string): string {
    if (this.done) return '';
    const all = this.held + text;
    let cut = -1;
    for (const s of this.stops) {
      const at = all.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.done = true;
      this.held = '';
      return all.slice(0, cut);
    }
    // hold back the longest suffix that is a proper prefix of some stop string
    let keep = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, all.length); n > keep; n--) {
        if (all.endsWith(s.slice(0, n))) {
          keep = n;
          break;
        }
      }
    }
    this.held = all.slice(all.length - keep);
    return all.slice(0, all.length - keep);
  }

  /** The text held back at the end of generation (no stop string came). */
  flush(): string {
    const rest = this.done ? '' : this.held;
    this.held = '';
    return rest;
  }
}
