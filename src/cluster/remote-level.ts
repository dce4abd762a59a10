import { context } from '@opentelemetry/api';
import type { Block, CascadeLevel } from '../engine/levels.ts';
import { checkReadable, commonPrefix, newStats } from '../engine/levels.ts';
import { CascadeError, LevelUnavailableError } from '../errors.ts';
import type { ReviewOutcome } from '../kernels/acceptance.ts';
import { runnerDraws, type Verification } from '../kernels/noise.ts';
import { deriveSeed, seed64, type Seed } from '../kernels/rng.ts';
import type { SamplingParams, TokenLogprob } from '../kernels/sampling.ts';
import { DECODE_STEPS, type ServiceLoad } from '../models/session.ts';
import { decode, encode, rowsBytes, type ActorReply, type ActorRequest, type Rows } from './messages.ts';
import type { ActorLiveness } from './liveness.ts';
import { injectHeaders, inSpan } from './tracing.ts';
import { subjects, TransportError, type Transport } from './transport.ts';

/** Tokens a call may feed per `timeoutMs`: a long prompt's prefill gets one timeout per this many tokens. */
export const TOKENS_PER_TIMEOUT = 512;

export interface RemoteLevelOptions {
  readonly sampling: SamplingParams;
  /**
   * Seed of the actor's sampler for this session: under `rejection` each placement derives its own
   * stream from it; under `invariant` it is the request's noise seed, sent as it is to every placement.
   */
  readonly seed: Seed;
  /** The request's verification rule (Verification). */
  readonly verification: Verification;
  /** The level is the request's target: its actor samples from the full distribution (never a drafter's top-k). */
  readonly target?: boolean;
  /** Where the request's output begins in its tokens (penalties count only the output). */
  readonly promptLength?: number;
  /** Ask the actor for each added token's log probability with this many alternatives (the target of a request with logprobs). */
  readonly logprobs?: number;
  /**
   * Per-call timeout (a model call on a loaded GPU node, plus the network), for a call that feeds up
   * to TOKENS_PER_TIMEOUT tokens; a call feeding more (a prefill) gets one such timeout per
   * TOKENS_PER_TIMEOUT tokens, so a long prompt is not taken for a dead actor.
   */
  readonly timeoutMs?: number;
  /** Called with each call's round trip (ms; roundTripsMs), for a metric. */
  readonly onRoundTrip?: (ms: number) => void;
  /**
   * Called with each call that failed in transport (TransportError: no responders, a timeout, or
   * closed), for a metric and a log line: why, the transport's message, and what the level does next
   * (`placing its session again`, `opening its session elsewhere`), or undefined when it fails
   * (LevelUnavailableError).
   */
  readonly onCallFailed?: (reason: TransportError['reason'], message: string, next: string | undefined) => void;
  /** The level is the target and the request drafts with the verify actor's feature drafter (RemoteFeatureLevel): open the session with it. */
  readonly eagle?: boolean;
  /** Actors' heartbeats: a call to an instance that falls silent is given up before `timeoutMs` (ActorLiveness.watch). */
  readonly liveness?: ActorLiveness;
}

/**
 * One request to an actor with the active trace context: `timeoutMs` per TOKENS_PER_TIMEOUT tokens
 * it feeds (`fed`), at least one. With `watch` (a call to one instance, and the coordinator's
 * ActorLiveness), the call is given up as TransportError `silent` once that instance stops sending
 * heartbeats, before the timeout.
 */
async function requestActor(transport: Transport, subject: string, req: ActorRequest, timeoutMs: number, fed: number, watch?: { liveness: ActorLiveness; model: string; instance: string }): Promise<ActorReply> {
  const headers = injectHeaders(context.active());
  const call = transport.request(subject, encode(req), { timeoutMs: timeoutMs * Math.max(1, Math.ceil(fed / TOKENS_PER_TIMEOUT)), headers });
  // a call answered in this process (a coordinator's --verifier) cannot be lost on the network
  if (!watch || transport.servesLocally?.(subject)) return decode(await call) as ActorReply;
  const w = watch.liveness.watch(watch.model, watch.instance);
  try {
    return decode(await Promise.race([call, w.silent])) as ActorReply;
  } finally {
    w.stop();
    call.catch(() => undefined); // a call given up as silent may still fail later, unread
  }
}

/** What a level does after a call to its instance failed in transport (RemoteLevelOptions.onCallFailed). */
const PLACING_AGAIN = 'placing its session again';

/** An error reply from an actor that is not about a lost session: bad input or a model failure. */
export class ActorError extends CascadeError {
  override readonly name = 'ActorError';
}

/**
 * A cascade level hosted by an actor across the transport. The session is placed on first use (on
 * an instance the coordinator hears, addressed directly, `pick`, or else through the model's queue
 * group) and pinned there. Each call sends only what the actor does not have yet: the length of the
 * context it still shares (`base`) and the new tokens. When the instance is gone or has dropped the
 * session, the level is placed again (resent the whole context) once, elsewhere after a call given
 * up for silence or a timeout; when no instance answers, it throws LevelUnavailableError, which the
 * coordinator answers by dropping the level (a drafter) or failing the attempt (the target).
 */
export class RemoteLevel implements CascadeLevel {
  readonly stats = newStats();
  private instance: string | undefined;
  /** The context the actor's session ends with, as far as this side knows. */
  private sent: number[] = [];
  private readonly timeoutMs: number;
  /** Bytes of distributions a request may carry before drafts go one-hot (exact, less accepted). */
  private readonly rowBudget: number;
  /** The model load the actor reported last (batched passes). */
  private lastLoad: ServiceLoad | undefined;
  /** Log probabilities the actor reported for the tokens added since takeLogprobs last ran. */
  private logprobs: TokenLogprob[] = [];
  /** Each call's round trip: its wall time minus the actor's handler time (NATS, framing, scheduling), ms. */
  readonly roundTripsMs: number[] = [];
  /** Tokens' worth of placements (for tests and metrics). */
  placements = 0;
  /** The vocabulary of the actor's model, from its `opened` reply. */
  private vocabSize = Infinity;
  /** The instance a call was just given up on (silent or timed out): the next placement goes elsewhere. */
  private avoid: string | undefined;

  constructor(
    private readonly transport: Transport,
    readonly name: string,
    readonly session: string,
    private readonly options: RemoteLevelOptions,
  ) {
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.rowBudget = Math.floor(transport.maxPayload / 2);
  }

  /**
   * CascadeLevel.decodeSteps: a target decoding alone asks its actor for up to DECODE_STEPS tokens in
   * one call where the actor's runner decodes them in one worker call (ModelSession.decode, bounded
   * by its BatchingSession's multiStepMs): greedy or drafter-invariant sampling, no log
   * probabilities, no feature drafter reading the target's features (ModelLevel's `decodes`). One
   * NATS round trip then carries several tokens; the tokens are the target's own draws, as over
   * calls of one. Otherwise one token a call, as before: the actor would run every pass of a longer
   * call unbounded.
   */
  get decodeSteps(): number | undefined {
    const o = this.options;
    return o.target && !o.eagle && runnerDraws(o.sampling.temperature, o.verification === 'invariant', o.logprobs) ? DECODE_STEPS : undefined;
  }

  /** The instance holding the session now (undefined before the first call, or after it was lost). */
  get placedOn(): string | undefined {
    return this.instance;
  }

  /**
   * A call to `instance` (this level's, or its feature drafter's beside it, RemoteFeatureLevel) failed
   * in transport: the next call places the session again, elsewhere after a silent or timed-out one
   * (a process that is gone has left the queue group, no responders; a silent or slow one may not have yet).
   */
  lose(instance: string, reason: TransportError['reason']): void {
    if (this.instance !== instance) return;
    this.instance = undefined;
    if (reason === 'silent' || reason === 'timeout') this.avoid = instance;
  }

  /** A call to the model's queue group (`open`, no instance) or to one instance, watched for its silence. */
  private send(subject: string, req: ActorRequest, fed = 0, instance?: string): Promise<ActorReply> {
    const liveness = this.options.liveness;
    return requestActor(this.transport, subject, req, this.timeoutMs, fed, liveness && instance ? { liveness, model: this.name, instance } : undefined);
  }

  /**
   * The instance to open the session on, addressed directly: one of the model's instances this
   * coordinator hears (ActorLiveness.placeable: beating, not stopping, not another coordinator's
   * in-process verifier), picked at random so that sessions spread as the queue group spreads them;
   * after a call to `avoid` was given up, one other than `avoid`, or `avoid` itself when it is the
   * only one and still beats (its call was lost on the way: a NATS server that failed). A router
   * that addresses the workers it discovered, as NVIDIA Dynamo's does. The model's queue group may
   * hold a lost subscription and hand it an `open`, which then waits the whole call timeout:
   * nats-server drops a frozen or cut-off client, or a frozen route's interest, only after pings go
   * unanswered, and a release before 2.9.16 (Debian 12's is 2.9.10) never pings a route that carries
   * messages (nats-io/nats-server#4014), so with heartbeats flowing a frozen server's interest
   * stays. Undefined, the queue group places it: nothing placeable is heard (a coordinator in its
   * first two heartbeat periods, or actors of a build that does not beat), or this process serves
   * the model itself (a --verifier).
   */
  private pick(avoid: string | undefined): string | undefined {
    if (!this.options.liveness || this.transport.servesLocally?.(subjects.open(this.name))) return undefined;
    const live = this.options.liveness.placeable(this.name);
    const others = live.filter((instance) => instance !== avoid);
    const from = others.length ? others : live;
    return from[Math.floor(Math.random() * from.length)];
  }

  /**
   * Opens the session on an instance: on `pick`'s, falling back to the model's queue group when
   * none is heard or that instance does not take it (gone since its last heartbeat, or full).
   */
  private async place(): Promise<string> {
    const direct = this.pick(this.avoid);
    this.avoid = undefined;
    const open: ActorRequest = { type: 'open', session: this.session, sampling: this.options.sampling, seed: this.options.verification === 'invariant' ? seed64(this.options.seed) : deriveSeed(this.options.seed, this.placements), verification: this.options.verification, target: this.options.target ?? false, promptLength: this.options.promptLength ?? 0, ...(this.options.logprobs !== undefined ? { logprobs: this.options.logprobs } : {}), ...(this.options.eagle ? { eagle: true } : {}) };
    let reply: ActorReply | undefined;
    if (direct) {
      reply = await this.send(subjects.instance(this.name, direct), open, 0, direct).catch((err: unknown) => {
        if (!(err instanceof TransportError)) throw err;
        this.options.onCallFailed?.(err.reason, err.message, 'opening its session elsewhere');
        return undefined;
      });
      if (reply?.type === 'error') reply = undefined;
    }
    try {
      reply ??= await this.send(subjects.open(this.name), open);
    } catch (err) {
      if (err instanceof TransportError) {
        this.options.onCallFailed?.(err.reason, err.message, undefined);
        throw new LevelUnavailableError(this.name, `no ${this.name} actor answers (${err.message})`, { cause: err });
      }
      throw err;
    }
    if (reply.type === 'error') throw new LevelUnavailableError(this.name, `${this.name} refused the session: ${reply.message}`);
    if (reply.type !== 'opened') throw new ActorError(`${this.name} answered open with ${reply.type}`);
    this.placements++;
    this.instance = reply.instance;
    this.vocabSize = reply.vocabSize;
    this.sent = [];
    return reply.instance;
  }

  /** One call on the pinned instance; re-placed once when the instance or the session is gone. */
  private async call<T extends ActorReply['type']>(build: (base: number) => ActorRequest, expect: T, tokens: readonly number[]): Promise<Extract<ActorReply, { type: T }>> {
    for (let attempt = 0; ; attempt++) {
      const instance = this.instance ?? (await this.place());
      const base = commonPrefix(this.sent, tokens);
      checkReadable(this.name, tokens.slice(base), this.vocabSize);
      let reply: ActorReply;
      const t0 = performance.now();
      try {
        reply = await this.send(subjects.instance(this.name, instance), build(base), tokens.length - base, instance);
      } catch (err) {
        if (err instanceof TransportError) this.options.onCallFailed?.(err.reason, err.message, attempt === 0 ? PLACING_AGAIN : undefined);
        if (!(err instanceof TransportError) || attempt > 0) {
          throw err instanceof TransportError ? new LevelUnavailableError(this.name, `${this.name} actor ${instance} is gone (${err.message})`, { cause: err }) : err;
        }
        this.lose(instance, err.reason);
        continue;
      } finally {
        this.stats.forwardMs += performance.now() - t0;
      }
      if (reply.type === 'error' && reply.code === 'unknown-session' && attempt === 0) {
        this.instance = undefined;
        continue;
      }
      if (reply.type === 'error') throw new ActorError(`${this.name} actor ${instance}: ${reply.code}: ${reply.message}`);
      if (reply.type !== expect) throw new ActorError(`${this.name} actor ${instance} answered ${reply.type}, expected ${expect}`);
      this.stats.forwardPasses++;
      this.stats.tokensScored += tokens.length - base; // what the actor had not seen: it feeds those
      if ('load' in reply) this.lastLoad = reply.load;
      if ('serveMs' in reply && reply.serveMs !== undefined) {
        const roundTrip = Math.max(0, performance.now() - t0 - reply.serveMs);
        this.roundTripsMs.push(roundTrip);
        this.options.onRoundTrip?.(roundTrip);
      }
      return reply as Extract<ActorReply, { type: T }>;
    }
  }

  async propose(block: Block, want: number): Promise<void> {
    await this.proposeOn(block, want, false);
  }

  /** CascadeLevel.draftWithRunnerUp: the actor drafts one token and names its runner-up (frame version 9). */
  async draftWithRunnerUp(block: Block): Promise<number | undefined> {
    return this.proposeOn(block, 1, true);
  }

  private async proposeOn(block: Block, want: number, runnerUp: boolean): Promise<number | undefined> {
    return inSpan('level.propose', context.active(), { 'cascade.level': this.name, 'cascade.want': want }, async () => {
      const tokens = block.tokens;
      const reply = await this.call((base) => ({ type: 'propose', session: this.session, base, suffix: tokens.slice(base), want, ...(runnerUp ? { runnerUp } : {}) }), 'proposed', tokens);
      if (reply.runnerUp !== undefined && !(runnerUp && reply.runnerUp < this.vocabSize)) throw new ActorError(`${this.name} named runner-up ${reply.runnerUp}${runnerUp ? `, outside its vocabulary (${this.vocabSize})` : ' unasked'}`);
      if (runnerUp && reply.tokens.length > 1) throw new ActorError(`${this.name} answered ${reply.tokens.length} tokens to a propose of one with its runner-up`);
      this.stats.proposals += reply.tokens.length;
      this.stats.tokensScored += Math.max(0, reply.tokens.length - 1);
      // a target's proposal of several tokens (decodeSteps) was a pass each in the actor
      if (this.options.target) this.stats.forwardPasses += Math.max(0, reply.tokens.length - 1);
      reply.tokens.forEach((t, i) => block.push(t, reply.q[i]));
      this.took(reply.logprobs, reply.tokens.length);
      this.sent = block.tokens.slice();
      return reply.runnerUp;
    });
  }

  async review(block: Block, start: number, _rng: unknown, lenience: number, passUp: boolean): Promise<ReviewOutcome> {
    return inSpan('level.review', context.active(), { 'cascade.level': this.name, 'cascade.drafts': block.length - start }, async (span) => {
      this.stats.reviews++;
      const tokens = block.tokens.slice();
      let q: Rows = [];
      if (this.options.sampling.temperature > 0) {
        q = tokens.slice(start).map((_, i) => block.qAt(start + i));
        if (rowsBytes(q) > this.rowBudget) q = []; // one-hot: exact whatever drew the drafts (SPEC §4.3)
      }
      const reply = await this.call((base) => ({ type: 'review', session: this.session, base, suffix: tokens.slice(base), start, lenience, passUp, q }), 'reviewed', tokens);
      const drafts = block.length - start;
      if (reply.accepted > drafts) throw new ActorError(`${this.name} accepted ${reply.accepted} of ${drafts} drafts`);
      span.setAttribute('cascade.accepted', reply.accepted);
      block.cut(start + reply.accepted);
      for (let i = 0; i < reply.accepted; i++) block.q[start + i - block.committed] = reply.p[i];
      block.push(reply.token, reply.p[reply.accepted]);
      this.took(reply.logprobs, reply.accepted + 1);
      this.sent = block.tokens.slice();
      return { accepted: reply.accepted, token: reply.token };
    });
  }

  /** Keeps a reply's log probabilities when the session asked for them; one per added token, or the actor is at fault. */
  private took(logprobs: readonly TokenLogprob[] | undefined, added: number): void {
    if (this.options.logprobs === undefined) return;
    if (logprobs?.length !== added) throw new ActorError(`${this.name} reported ${logprobs?.length ?? 0} log probabilities for ${added} tokens`);
    this.logprobs.push(...logprobs);
  }

  takeLogprobs(): TokenLogprob[] {
    const taken = this.logprobs;
    this.logprobs = [];
    return taken;
  }

  load(): ServiceLoad | undefined {
    return this.lastLoad;
  }

  lag(tokens: readonly number[]): number {
    return tokens.length - commonPrefix(this.sent, tokens);
  }

  async release(): Promise<void> {
    const instance = this.instance;
    this.instance = undefined;
    if (!instance) return;
    await this.send(subjects.instance(this.name, instance), { type: 'close', session: this.session }).catch(() => undefined);
  }
}

/**
 * The EAGLE feature drafter beside a remote target (docs/eagle.md, in the cluster): it runs in the
 * verify actor that holds the target's session (opened with `eagle`), where the target's reviews keep
 * their hidden_states, so features never cross the network; the coordinator sends it token ids only
 * (`propose` with `feature`), over a context of its own. It proposes only (its row of K stays zero)
 * and drafts nothing until the target's session is placed (the first round: the target has not
 * read the prompt). When the target's session is placed again (on any instance), its context
 * starts over there. A lost instance (gone, silent or timed out) makes the target place its session
 * again before its next call (RemoteLevel.lose): the round goes on without feature drafts, and the
 * level drafts beside the new placement. An actor that refuses (it hosts no feature drafter: it then
 * opened the target alone), or a frame that failed, is LevelUnavailableError: the coordinator drops
 * the level and the target goes on. Exactness is the target's review's, as for every level.
 */
export class RemoteFeatureLevel implements CascadeLevel {
  readonly stats = newStats();
  readonly proposesOnly = true;
  readonly roundTripsMs: number[] = [];
  private sent: number[] = [];
  /** Where `sent` went: the target's instance and placement count (a re-placement on the same instance opens a fresh session). */
  private sentTo: string | undefined;

  constructor(
    private readonly transport: Transport,
    readonly name: string,
    private readonly target: RemoteLevel,
    private readonly options: Pick<RemoteLevelOptions, 'timeoutMs' | 'onRoundTrip' | 'onCallFailed' | 'liveness'> = {},
  ) {}

  async propose(block: Block, want: number): Promise<void> {
    const instance = this.target.placedOn;
    if (!instance) return;
    const placement = `${instance}#${this.target.placements}`;
    if (placement !== this.sentTo) [this.sent, this.sentTo] = [[], placement];
    await inSpan('level.propose', context.active(), { 'cascade.level': this.name, 'cascade.want': want }, async () => {
      const tokens = block.tokens;
      const base = commonPrefix(this.sent, tokens);
      const t0 = performance.now();
      let reply: ActorReply;
      try {
        const req: ActorRequest = { type: 'propose', session: this.target.session, base, suffix: tokens.slice(base), want, feature: true };
        const liveness = this.options.liveness;
        reply = await requestActor(this.transport, subjects.instance(this.target.name, instance), req, this.options.timeoutMs ?? 10_000, tokens.length - base, liveness && { liveness, model: this.target.name, instance });
      } catch (err) {
        if (!(err instanceof TransportError)) throw err;
        const lost = err.reason !== 'closed';
        this.options.onCallFailed?.(err.reason, err.message, lost ? PLACING_AGAIN : undefined);
        // the verify actor holding the target's session is gone, frozen or cut off: the target places
        // its session again at once (this round goes on without feature drafts), and this level drafts
        // beside it there, rather than being dropped while the target's own next call waits out the same silence
        if (lost) return void this.target.lose(instance, err.reason);
        throw new LevelUnavailableError(this.name, `${this.name} beside ${this.target.name} actor ${instance} failed (${err.message})`, { cause: err });
      } finally {
        this.stats.forwardMs += performance.now() - t0;
      }
      // the target's session moved or expired: the target level places it again on its next call
      if (reply.type === 'error' && reply.code === 'unknown-session') return void (this.sent = []);
      // any other refusal (an actor without a feature drafter, a context past its positions) is this
      // level's alone: the coordinator drops it and the target goes on (the output is the target's either way)
      if (reply.type === 'error') throw new LevelUnavailableError(this.name, `${this.name} beside ${this.target.name} actor ${instance}: ${reply.code}: ${reply.message}`);
      if (reply.type !== 'proposed') throw new ActorError(`${this.name} beside ${this.target.name} actor ${instance} answered ${reply.type}, expected proposed`);
      if (reply.serveMs !== undefined) {
        const roundTrip = Math.max(0, performance.now() - t0 - reply.serveMs);
        this.roundTripsMs.push(roundTrip);
        this.options.onRoundTrip?.(roundTrip);
      }
      this.stats.proposals += reply.tokens.length;
      this.stats.forwardPasses += reply.tokens.length ? 1 : 0;
      this.stats.tokensScored += tokens.length - base + Math.max(0, reply.tokens.length - 1);
      reply.tokens.forEach((t, i) => block.push(t, reply.q[i]));
      this.sent = block.tokens.slice();
    });
  }

  async review(): Promise<ReviewOutcome> {
    throw new ActorError(`${this.name} is a feature drafter: it proposes only (its row of the K matrix must be zero)`);
  }

  lag(tokens: readonly number[]): number {
    return tokens.length - commonPrefix(this.sent, tokens);
  }

  /** Its state goes with the target's session, which the target level closes. */
  async release(): Promise<void> {
    this.sent = [];
  }
}
