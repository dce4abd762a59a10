import type { TokenLogprob } from '../kernels/sampling.ts';
import type { RequestLog } from './redis-store.ts';

/**
 * A request's token log, written behind its decode loop (issue 27: Redis off the per-token path but
 * for the batched writes that failover needs), as the coordinator writes it, or inline when the caller
 * awaits `settle` after each `push`.
 *
 * `push` queues a round's tokens and returns at once, so the next target pass can start while they
 * are written. One append is in flight at a time, and it takes everything queued while the one before
 * it was: a slow Redis gets fewer, larger writes instead of holding up the passes. A batch is handed
 * to `onRecorded` (the coordinator streams it) only once the log holds it, so the stream never runs
 * ahead of the log: an attempt that dies loses nothing a client has seen, and the next attempt
 * resumes after what was recorded, as before.
 *
 * A refused or failed append stops the writer; `push` and `settle` then throw its error
 * (RequestSupersededError when a newer attempt has claimed the request, LogOffsetError, or Redis's
 * own), and nothing after it is written or streamed.
 */
export class LogWriter {
  /** Each append's wall time, ms (Redis's round trip and the script's work). */
  readonly appendMs: number[] = [];
  private queued: number[] = [];
  private queuedLogprobs: TokenLogprob[] = [];
  private flight: Promise<void> | undefined;
  private failure: { readonly error: unknown } | undefined;

  /**
   * @param offset  the log's length when this attempt starts (tokens an earlier attempt recorded)
   * @param top     the request's alternatives per token when it asks for log probabilities; then
   *                every push must carry one TokenLogprob per token
   */
  constructor(
    private readonly log: RequestLog,
    private readonly request: string,
    private readonly fence: number,
    private offset: number,
    private readonly top: number | undefined,
    private readonly onRecorded: (offset: number, tokens: number[], logprobs: TokenLogprob[] | undefined) => void,
  ) {}

  /** Queues tokens for the log; throws what stopped the writer, if anything has. */
  push(tokens: readonly number[], logprobs?: readonly TokenLogprob[]): void {
    this.check();
    if (!tokens.length) return;
    this.queued.push(...tokens);
    if (this.top !== undefined && logprobs) this.queuedLogprobs.push(...logprobs);
    this.kick();
  }

  /** Whether a refused or failed append has stopped the writer (push and settle throw its error). */
  get stopped(): boolean {
    return this.failure !== undefined;
  }

  /** Resolves once every queued token is recorded (and streamed); throws what stopped the writer. */
  async settle(): Promise<void> {
    while (this.flight) await this.flight;
    this.check();
  }

  /** Starts the writes unless they are running (or stopped); they start again for what was queued meanwhile. */
  private kick(): void {
    if (this.flight || this.failure || !this.queued.length) return;
    this.flight = this.drain().finally(() => {
      this.flight = undefined;
      this.kick();
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queued.length) {
        const tokens = this.queued;
        const logprobs = this.top !== undefined && this.queuedLogprobs.length ? this.queuedLogprobs : undefined;
        this.queued = [];
        this.queuedLogprobs = [];
        const t0 = performance.now();
        if (logprobs) await this.log.append(this.request, this.fence, this.offset, tokens, { top: this.top!, list: logprobs });
        else await this.log.append(this.request, this.fence, this.offset, tokens);
        this.appendMs.push(performance.now() - t0);
        this.onRecorded(this.offset, tokens, logprobs);
        this.offset += tokens.length;
      }
    } catch (error) {
      this.failure = { error };
    }
  }

  private check(): void {
    if (this.failure) throw this.failure.error;
  }
}
