import { randomUUID } from 'node:crypto';
import { FULL_CACHE, type KvPolicyConfig } from '../engine/bounded-kv.ts';
import { EagleLevel, FeatureTap } from '../engine/eagle-level.ts';
import { Block, ModelLevel } from '../engine/levels.ts';
import { MAX_K } from '../engine/presets.ts';
import { CascadeError } from '../errors.ts';
import { PositionNoise } from '../kernels/noise.ts';
import { deriveSeed, Rng } from '../kernels/rng.ts';
import { checkSampling, type SamplingParams } from '../kernels/sampling.ts';
import type { ModelSession } from '../models/session.ts';
import { decode, encode, FrameError, rowsBytes, withLoad, type ActorReply, type ActorRequest, type ErrorCode } from '../cluster/messages.ts';
import { beat, HEARTBEAT_MS } from '../cluster/liveness.ts';
import { extractContext, inSpan } from '../cluster/tracing.ts';
import { subjects, subjectToken, type Headers, type Subscription, type Transport } from '../cluster/transport.ts';

/**
 * Most tokens one propose may ask for. A cascade asks a drafter for at most the largest entry of
 * its K matrix, so this is MAX_K, the largest K entry the gateway takes.
 */
export const MAX_WANT = MAX_K;

/**
 * Most tokens a draft actor's sampled proposal keeps: it draws from its top DRAFT_TOP_K tokens,
 * renormalised (ties at the boundary kept), and that truncated q is what travels, sparse (2 KB a
 * token whatever the vocabulary: a dense 152k row is 608 KB, past NATS's 1 MB payload at two
 * tokens). The review stays exact because q is what the draft was really drawn from (SPEC §4.3); only
 * acceptance changes, by the drafter mass past its top 256. The target (a verify actor) never
 * truncates: its distribution is the output's.
 */
export const DRAFT_TOP_K = 256;

/** A drafter's sampling: the request's, with top-k at most DRAFT_TOP_K when sampling. */
export function draftSampling(s: SamplingParams): SamplingParams {
  return s.temperature > 0 && (s.topK === 0 || s.topK > DRAFT_TOP_K) ? { ...s, topK: DRAFT_TOP_K } : s;
}

interface ActorSession {
  readonly level: ModelLevel;
  readonly rng: Rng;
  readonly temperature: number;
  /** The session is the request's target (this is a verify actor, or the coordinator said so at open). */
  readonly target: boolean;
  /** The context the coordinator last saw this session end with. */
  tokens: number[];
  lastUsed: number;
  /** Calls of one session run one at a time. */
  busy: Promise<unknown>;
  /** The feature drafter beside the target (a session opened with `eagle`), with its own context and sampler. */
  eagle?: { readonly level: EagleLevel; readonly rng: Rng; tokens: number[] };
}

export interface ActorOptions {
  /** The model's name in the cluster (subject token); defaults to the model's own name. */
  readonly model?: string;
  /** This instance's id (subject token); random by default. */
  readonly instance?: string;
  /** A session untouched this long is released (its KV freed). */
  readonly idleMs?: number;
  /** Most sessions held at once; `open` beyond it is refused so placement tries another instance. */
  readonly maxSessions?: number;
  /**
   * Bound every session's KV cache (ADORE placement b on a drafter: the output stays exact);
   * released KV spills to `kv.store` (Redis in the cluster) for rebuilds.
   */
  readonly kv?: KvPolicyConfig;
  /**
   * The model is the family's target (a verify actor): its reviews are the cascade's last word and
   * must be exact, so a review with lenience other than 1 is refused, whatever the coordinator asks.
   */
  readonly target?: boolean;
  /**
   * An EAGLE feature drafter beside the target (a verify actor of a family that names one): a
   * session opened with `eagle` drafts with it from the target's hidden_states, which never leave
   * this process (docs/eagle.md, in the cluster). The caller checks it fits the target (checkFeatureDrafter).
   */
  readonly featureDrafter?: ModelSession;
  /** How often the actor publishes its heartbeat on `subjects.alive`, ms (ActorLiveness); 0 = never. */
  readonly heartbeatMs?: number;
  /** The actor serves only inside its host process (a coordinator's --verifier, LocalServingTransport): its heartbeat says so, and no other coordinator places a session on it. */
  readonly local?: boolean;
}

/** The rng stream of a session's feature drafter under rejection sampling (distinct from the target's). */
const FEATURE_STREAM = 0xea61e;

/** The log probabilities a session's level recorded for the tokens it just added (none unless opened asking for them). */
function logprobsOf(level: ModelLevel) {
  const logprobs = level.takeLogprobs();
  return logprobs.length ? { logprobs } : {};
}

class BadRequest extends CascadeError {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A draft or verifier actor (SPEC §6): hosts one model and answers open / propose / review / close
 * for sessions pinned to it. `open` arrives on this instance's own subject when a coordinator that
 * hears its heartbeats picks it, or on the model's queue-group subject otherwise (both spread
 * sessions over instances); the rest on its own subject, where the session's KV lives.
 * Every frame is validated: a malformed one gets an error reply and the actor keeps serving.
 */
export class ModelActor {
  readonly model: string;
  readonly instance: string;
  private readonly sessions = new Map<string, ActorSession>();
  private readonly subs: Subscription[] = [];
  private sweeper: NodeJS.Timeout | undefined;
  private heartbeat: { now(): void; stop(): void } | undefined;
  private leaving = false;
  private readonly idleMs: number;
  private readonly maxSessions: number;
  private readonly kv: KvPolicyConfig;
  private readonly target: boolean;
  private readonly featureDrafter: ModelSession | undefined;
  /** Counters for logs and tests; `oneHot`: replies whose last distributions went one-hot to fit the payload limit. */
  readonly counters = { opened: 0, closed: 0, expired: 0, errors: 0, calls: 0, oneHot: 0 };

  constructor(
    private readonly transport: Transport,
    private readonly session: ModelSession,
    private readonly options: ActorOptions = {},
  ) {
    this.model = subjectToken(options.model ?? session.spec.name, 'model name');
    this.instance = subjectToken(options.instance ?? randomUUID().slice(0, 8), 'instance id');
    this.idleMs = options.idleMs ?? 60_000;
    this.maxSessions = options.maxSessions ?? 256;
    this.kv = options.kv ?? FULL_CACHE;
    this.target = options.target ?? false;
    this.featureDrafter = options.featureDrafter;
  }

  start(): this {
    const handler = (data: Uint8Array, headers: Headers) => this.handle(data, headers);
    this.subs.push(this.transport.serve(subjects.open(this.model), handler, { queue: this.model }));
    this.subs.push(this.transport.serve(subjects.instance(this.model, this.instance), handler));
    this.sweeper = setInterval(() => void this.expire(), Math.max(50, this.idleMs / 4));
    this.sweeper.unref();
    const heartbeatMs = this.options.heartbeatMs ?? HEARTBEAT_MS;
    if (heartbeatMs > 0) {
      this.heartbeat = beat(this.transport, () => ({ type: 'alive', model: this.model, instance: this.instance, sessions: this.sessions.size, ...(this.options.local ? { local: true } : {}), ...(this.leaving ? { leaving: true } : {}) }), heartbeatMs);
    }
    return this;
  }

  /** Sessions held now (KV use). */
  get activeSessions(): number {
    return this.sessions.size;
  }

  /** Stops serving and frees every session's KV. */
  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    // said at once, so that no coordinator places a session here now; beating on until the calls in
    // flight have ended, so that a draining actor is not taken for a dead one
    this.leaving = true;
    this.heartbeat?.now();
    await Promise.all(this.subs.splice(0).map((s) => s.close()));
    await Promise.all([...this.sessions.keys()].map((id) => this.closeSession(id)));
    this.heartbeat?.stop();
  }

  private async expire(): Promise<void> {
    const now = Date.now();
    for (const [id, s] of this.sessions) {
      if (now - s.lastUsed > this.idleMs) {
        this.counters.expired++;
        await this.closeSession(id);
      }
    }
  }

  private async closeSession(id: string): Promise<void> {
    const s = this.sessions.get(id);
    if (!s) return;
    this.sessions.delete(id);
    await s.busy.catch(() => undefined);
    await Promise.allSettled([s.level.release(), s.eagle?.level.release()]);
  }

  private async handle(data: Uint8Array, headers: Headers): Promise<Uint8Array> {
    this.counters.calls++;
    let req: ActorRequest;
    try {
      const m = decode(data);
      if (m.type !== 'open' && m.type !== 'propose' && m.type !== 'review' && m.type !== 'close' && m.type !== 'stats') {
        throw new FrameError(`an actor does not accept "${m.type}" messages`);
      }
      req = m;
    } catch (err) {
      this.counters.errors++;
      return encode({ type: 'error', code: 'bad-frame', message: (err as Error).message });
    }
    if (req.type === 'stats') return encode({ type: 'statsReply', instance: this.instance, sessions: this.sessions.size });
    const parent = extractContext(headers);
    try {
      const t0 = performance.now();
      const reply = await inSpan(`actor.${req.type}`, parent, { 'cascade.model': this.model, 'cascade.instance': this.instance, 'cascade.session': req.session }, () => this.serve(req));
      return this.frame(reply.type === 'proposed' || reply.type === 'reviewed' ? { ...reply, serveMs: performance.now() - t0 } : reply);
    } catch (err) {
      this.counters.errors++;
      const code: ErrorCode = err instanceof BadRequest ? err.code : 'internal';
      return encode({ type: 'error', code, message: (err as Error).message });
    }
  }

  /**
   * The reply as a frame within the transport's payload limit. Its distributions (float32 rows, one
   * per token) keep to half the limit, the budget RemoteLevel.review gives the rows it sends on, so
   * the rows that travel also reach the reviewer; the last ones that do not fit travel one-hot. A
   * one-hot draft is exact whatever drew it (SPEC §4.3; the reviewer only accepts it less often),
   * so every token stays and the output stays exact. A reply that still does not fit is an error reply.
   */
  private frame(reply: ActorReply): Uint8Array {
    const max = this.transport.maxPayload;
    if (reply.type === 'proposed' || reply.type === 'reviewed') {
      const rows = reply.type === 'proposed' ? reply.q : reply.p;
      const oneHotFrom = (keep: number) => rows.map((r, i) => (i < keep ? r : undefined));
      let keep = rows.length;
      while (keep > 0 && rowsBytes(oneHotFrom(keep)) > max / 2) keep--;
      if (rows.slice(keep).some((r) => r)) {
        reply = reply.type === 'proposed' ? { ...reply, q: oneHotFrom(keep) } : { ...reply, p: oneHotFrom(keep) };
        this.counters.oneHot++;
      }
    }
    const frame = encode(reply);
    if (frame.length <= max) return frame;
    this.counters.errors++;
    return encode({ type: 'error', code: 'internal', message: `${this.model}/${this.instance}: the ${reply.type} reply of ${frame.length} bytes is over the transport's ${max}-byte payload limit` });
  }

  private async serve(req: Exclude<ActorRequest, { type: 'stats' }>): Promise<ActorReply> {
    if (req.type === 'open') return this.open(req);
    const s = this.sessions.get(req.session);
    if (req.type === 'close') {
      if (s) {
        this.counters.closed++;
        await this.closeSession(req.session);
      }
      return { type: 'closed' };
    }
    if (!s) throw new BadRequest('unknown-session', `session ${req.session} is not held by ${this.model}/${this.instance} (expired, closed or never opened)`);
    s.lastUsed = Date.now();
    const run = s.busy.then(() => (req.type === 'propose' ? (req.feature ? this.proposeFeatures(s, req) : this.propose(s, req)) : this.review(s, req)));
    s.busy = run.catch(() => undefined);
    return run;
  }

  private open(req: Extract<ActorRequest, { type: 'open' }>): ActorReply {
    const bad = checkSampling(req.sampling);
    if (bad) throw new BadRequest('invalid', bad);
    if (!req.session) throw new BadRequest('invalid', 'open needs a session id');
    // as the gateway refuses it: a bias on an id the model cannot draw would be dropped silently
    const vocab = this.session.spec.vocabSize;
    const outside = Object.keys(req.sampling.logitBias ?? {}).find((id) => !(Number(id) < vocab));
    if (outside !== undefined) throw new BadRequest('invalid', `logit bias on token id ${outside}, outside the vocabulary (${vocab})`);
    if (!this.sessions.has(req.session) && this.sessions.size >= this.maxSessions) {
      throw new BadRequest('invalid', `${this.model}/${this.instance} holds its maximum of ${this.maxSessions} sessions`);
    }
    if (req.eagle && !(this.target || req.target)) throw new BadRequest('invalid', 'a feature drafter drafts beside the request\'s target: open it on the target\'s session');
    const old = this.sessions.get(req.session);
    if (old) void this.closeSession(req.session);
    const invariant = req.verification === 'invariant';
    const seqId = `${req.session}@${randomUUID().slice(0, 8)}`;
    const noise = invariant ? new PositionNoise(req.seed) : undefined;
    // The target keeps its hidden_states for the feature drafter (FeatureTap) only when the request
    // drafts with it. An actor without one (checked against the target when it started) opens the
    // target alone: the session's feature proposes are refused, and the coordinator drops that level.
    const tap = req.eagle && this.featureDrafter ? new FeatureTap(this.session, seqId) : undefined;
    this.sessions.set(req.session, {
      // a drafter under rejection samples from its top-k (its q rows travel); under invariant it sends none
      level: new ModelLevel(this.model, tap ?? this.session, seqId, this.target || req.target || invariant ? req.sampling : draftSampling(req.sampling), {
        kv: this.kv,
        promptLength: req.promptLength,
        topLogprobs: req.logprobs,
        noise,
      }),
      ...(tap
        ? {
            eagle: {
              level: new EagleLevel(this.featureDrafter!.spec.name, this.featureDrafter!, `${seqId}:eagle`, tap, invariant ? req.sampling : draftSampling(req.sampling), { promptLength: req.promptLength, noise }),
              rng: new Rng(deriveSeed(req.seed, FEATURE_STREAM)),
              tokens: [],
            },
          }
        : {}),
      rng: new Rng(req.seed),
      temperature: req.sampling.temperature,
      target: this.target || req.target,
      tokens: [],
      lastUsed: Date.now(),
      busy: Promise.resolve(),
    });
    this.counters.opened++;
    return { type: 'opened', instance: this.instance, model: this.model, vocabSize: this.session.spec.vocabSize };
  }

  /** The new context of a session's level: its old one (`held`) cut to `base`, plus `suffix`; validated against `model`'s positions. */
  private context(held: readonly number[], base: number, suffix: readonly number[], extra: number, model: ModelSession = this.session): number[] {
    if (base > held.length) throw new BadRequest('invalid', `base ${base} is beyond the session's ${held.length} tokens`);
    const vocab = this.session.spec.vocabSize;
    for (const t of suffix) if (!(t < vocab)) throw new BadRequest('invalid', `token id ${t} is outside the vocabulary (${vocab})`);
    const tokens = [...held.slice(0, base), ...suffix];
    if (tokens.length === 0) throw new BadRequest('invalid', 'the context is empty');
    const max = model.spec.maxPositions;
    if (max !== undefined && tokens.length + extra > max) throw new BadRequest('invalid', `context of ${tokens.length} tokens plus ${extra} exceeds ${model === this.session ? 'the model' : model.spec.name}'s ${max} positions`);
    return tokens;
  }

  private async propose(s: ActorSession, req: Extract<ActorRequest, { type: 'propose' }>): Promise<ActorReply> {
    if (!(req.want >= 1 && req.want <= MAX_WANT)) throw new BadRequest('invalid', `want must be 1..${MAX_WANT}, got ${req.want}`);
    if (req.runnerUp && req.want !== 1) throw new BadRequest('invalid', `a runner-up is named for one drafted token: want must be 1, got ${req.want}`);
    const tokens = this.context(s.tokens, req.base, req.suffix, req.want);
    const block = new Block(tokens, tokens.length);
    const runnerUp = req.runnerUp ? await s.level.draftWithRunnerUp(block, s.rng) : await s.level.propose(block, req.want, s.rng);
    s.tokens = block.tokens;
    const proposed = withLoad({ type: 'proposed', tokens: block.tokens.slice(block.committed), q: block.q.slice(), ...logprobsOf(s.level) } as const, s.level.load());
    return runnerUp === undefined ? proposed : { ...proposed, runnerUp };
  }

  /**
   * The session's feature drafter drafts `want` tokens after its own context (cut to `base`, plus
   * `suffix`), from the target's features of this session (EagleLevel.propose: none before the
   * target has read the context).
   */
  private async proposeFeatures(s: ActorSession, req: Extract<ActorRequest, { type: 'propose' }>): Promise<ActorReply> {
    if (req.runnerUp) throw new BadRequest('invalid', 'the feature drafter names no runner-up: ask its propose without runnerUp');
    const eagle = s.eagle;
    if (!eagle) {
      throw new BadRequest('invalid', this.featureDrafter ? `session ${req.session} was not opened with a feature drafter` : `${this.model}/${this.instance} hosts no feature drafter (its family.json names none, or it does not fit the target: see the actor's log)`);
    }
    if (!(req.want >= 1 && req.want <= MAX_WANT)) throw new BadRequest('invalid', `want must be 1..${MAX_WANT}, got ${req.want}`);
    const tokens = this.context(eagle.tokens, req.base, req.suffix, req.want, eagle.level.session);
    const block = new Block(tokens, tokens.length);
    await eagle.level.propose(block, req.want, eagle.rng);
    eagle.tokens = block.tokens;
    return { type: 'proposed', tokens: block.tokens.slice(block.committed), q: block.q.slice() };
  }

  private async review(s: ActorSession, req: Extract<ActorRequest, { type: 'review' }>): Promise<ActorReply> {
    if (!(req.lenience >= 1)) throw new BadRequest('invalid', `lenience must be >= 1, got ${req.lenience}`);
    if (s.target && req.lenience !== 1) throw new BadRequest('invalid', `${this.model} is the target: its review is exact (lenience 1), got lenience ${req.lenience}`);
    const tokens = this.context(s.tokens, req.base, req.suffix, 1);
    if (req.start < 1 || req.start > tokens.length) throw new BadRequest('invalid', `start ${req.start} must lie in 1..${tokens.length}`);
    const drafts = tokens.length - req.start;
    if (req.q.length > drafts) throw new BadRequest('invalid', `${req.q.length} q rows for ${drafts} drafted tokens`);
    const vocab = this.session.spec.vocabSize;
    // a narrower q (a drafter with less vocabulary padding) is 0 past its width; a wider one could not have drafted these ids
    for (const q of req.q) if (q && q.length > vocab) throw new BadRequest('invalid', `a q row has ${q.length} entries, more than the vocabulary of ${vocab}`);
    const block = new Block(tokens, req.start);
    req.q.forEach((q, i) => (block.q[i] = q));
    const outcome = await s.level.review(block, req.start, s.rng, req.lenience, req.passUp);
    s.tokens = block.tokens;
    const p = s.temperature > 0 && req.passUp ? block.q.slice() : [];
    return withLoad({ type: 'reviewed', accepted: outcome.accepted, token: outcome.token, p, ...logprobsOf(s.level) }, s.level.load());
  }
}
