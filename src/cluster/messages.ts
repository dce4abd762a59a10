import type { Verification } from '../kernels/noise.ts';
import { MAX_TOP_LOGPROBS, type SamplingParams, type TokenLogprob } from '../kernels/sampling.ts';
import type { ServiceLoad } from '../models/session.ts';

/**
 * Every message the cluster sends over its transport, as one versioned discriminated union, and
 * its binary frame codec (SPEC §6). A frame is
 *
 *   magic 0xCA · version · type · fields…
 *
 * with integers little-endian, token ids uint32, seeds uint64, strings uint16-length-prefixed UTF-8, and
 * distributions float32 rows. Distributions travel only when sampling (temperature > 0) and only
 * where acceptance needs them (SPEC §4.3): a greedy draft is one-hot and is sent as its token alone.
 * They are float32, not float16, because acceptance compares p(x)/q(x) with the q the token was
 * really drawn from; a rounded q would make the review inexact. A row with few non-zero entries (a
 * drafter samples from its top DRAFT_TOP_K tokens) travels sparse: its width, then its non-zero
 * entries as ascending uint32 ids and their float32 values, bit for bit, so 256 entries take 2 KB
 * whatever the vocabulary (a dense row of a 152k vocabulary is 608 KB). Frames that would still
 * come near the payload limit send drafts one-hot instead (still exact, only less often accepted).
 */
export const FRAME_MAGIC = 0xca;
/**
 * 4: rows may be sparse (marker 2); `open` carries float64 sampling with its logits processors, whether the session is the target, and where the output begins.
 * 5: `open` asks for log probabilities; `proposed`, `reviewed` and `tokens` carry them.
 * 6: `open` carries the verification rule (under `invariant` its seed is the request's noise seed).
 * 7: `proposed` and `reviewed` carry the actor's handler time (`serveMs`), so a caller can tell the network from the work.
 * 8: `open` may ask a verify actor for its feature drafter beside the target (`eagle`); `propose` may address it (`feature`).
 * 9: `propose` may ask for the drafter's runner-up (`runnerUp`, one token only), which `proposed` then carries.
 */
export const FRAME_VERSION = 9;

/** `open`'s verification rule on the wire: its index here (never reorder; append new rules). */
const VERIFICATION_CODES: readonly Verification[] = ['rejection', 'invariant'];

/** One optional distribution per drafted token: undefined = one-hot at the token. */
export type Rows = (Float32Array | undefined)[];

/** Coordinator → actor. */
export type ActorRequest =
  /**
   * Places a session on an actor instance (sent to an instance the coordinator hears, or the model's
   * queue group); `seed`: its sampler's 64-bit seed; `target`: the session is the request's target
   * (its distribution is the output's: a draft actor's top-k truncation must not apply, whichever
   * actor takes it);
   * `promptLength`: where the request's output begins in its context (the penalties count only output).
   * The sampling's logits processors travel in full (float64: every level must apply the same ones).
   */
  | {
      readonly type: 'open';
      readonly session: string;
      readonly sampling: SamplingParams;
      readonly seed: bigint;
      readonly target: boolean;
      readonly promptLength: number;
      /** Report each token the session adds with its log probability and this many alternatives (0..MAX_TOP_LOGPROBS); undefined = none. */
      readonly logprobs?: number;
      /**
       * How the session samples and reviews at temperature > 0: `invariant` draws with
       * PositionNoise(seed) (every level of the request gets the same seed) and sends no q rows;
       * `rejection` samples with Rng(seed) (each level its own derived stream).
       */
      readonly verification: Verification;
      /**
       * The session is a target's and the request drafts with the actor's EAGLE feature drafter
       * (docs/eagle.md): the target's reviews keep their hidden_states for it, in the actor's process.
       */
      readonly eagle?: boolean;
    }
  /**
   * The session's context is its previous context cut to `base` tokens plus `suffix`; draft `want`
   * tokens after it. `feature`: the session's feature drafter drafts (a session opened with
   * `eagle`), over a context of its own.
   */
  | { readonly type: 'propose'; readonly session: string; readonly base: number; readonly suffix: readonly number[]; readonly want: number; readonly feature?: boolean; readonly runnerUp?: boolean }
  /** The context (as for propose) holds drafts from `start` on, with their q; review them. */
  | {
      readonly type: 'review';
      readonly session: string;
      readonly base: number;
      readonly suffix: readonly number[];
      readonly start: number;
      readonly lenience: number;
      readonly passUp: boolean;
      readonly q: Rows;
    }
  /** Frees the session's KV (request finished, cancelled or moved). */
  | { readonly type: 'close'; readonly session: string }
  /** How many sessions the instance holds (leak checks, KV use). */
  | { readonly type: 'stats' };

export type ErrorCode = 'bad-frame' | 'unknown-session' | 'invalid' | 'internal';
const ERROR_CODES: readonly ErrorCode[] = ['bad-frame', 'unknown-session', 'invalid', 'internal'];

/** Actor → coordinator. */
export type ActorReply =
  | { readonly type: 'opened'; readonly instance: string; readonly model: string; readonly vocabSize: number }
  /**
   * `load`: the actor's model load (batched passes), for the coordinator's adaptive schedule;
   * `serveMs`: milliseconds the actor spent handling the call (the caller's wall time minus this is
   * the round trip: NATS, framing, scheduling).
   */
  | { readonly type: 'proposed'; readonly tokens: readonly number[]; readonly q: Rows; readonly logprobs?: readonly TokenLogprob[]; readonly load?: ServiceLoad; readonly serveMs?: number; readonly runnerUp?: number }
  /**
   * `p`: the reviewer's distributions of the emitted tokens (accepted ones, then its own) when passed
   * up exactly; `logprobs`: those tokens' log probabilities, when the session was opened asking for them.
   */
  | { readonly type: 'reviewed'; readonly accepted: number; readonly token: number; readonly p: Rows; readonly logprobs?: readonly TokenLogprob[]; readonly load?: ServiceLoad; readonly serveMs?: number }
  | { readonly type: 'closed' }
  | { readonly type: 'statsReply'; readonly instance: string; readonly sessions: number }
  | { readonly type: 'error'; readonly code: ErrorCode; readonly message: string };

/**
 * Coordinator → gateway, on the request's stream subject. `offset` is the index of the first token;
 * `logprobs`: one per token when the request asked for them (left out otherwise).
 */
export type StreamEvent =
  | { readonly type: 'tokens'; readonly offset: number; readonly tokens: readonly number[]; readonly logprobs?: readonly TokenLogprob[] }
  /** The request ended; `stats` is the JSON of its cascade statistics. */
  | { readonly type: 'done'; readonly finishReason: string; readonly stats: string }
  | { readonly type: 'failed'; readonly message: string };

/**
 * Actor → coordinators and gateways, on `subjects.alive` every second (ActorLiveness): the actor's
 * model, instance and the sessions it holds; `local`: it serves only inside its host process (a
 * coordinator's `--verifier`), so no one else may place a session on it; `leaving`: it is stopping
 * (draining its calls in flight), so no new session goes to it. A new type, appended: frames of
 * version 9 are unchanged.
 */
export type Heartbeat = { readonly type: 'alive'; readonly model: string; readonly instance: string; readonly sessions: number; readonly local?: boolean; readonly leaving?: boolean };

/** A heartbeat's flags byte. */
const ALIVE_LOCAL = 1;
const ALIVE_LEAVING = 2;

export type Message = ActorRequest | ActorReply | StreamEvent | Heartbeat;

const TYPES = ['open', 'propose', 'review', 'close', 'opened', 'proposed', 'reviewed', 'closed', 'error', 'tokens', 'done', 'failed', 'stats', 'statsReply', 'alive'] as const;

/** A frame that cannot be decoded: wrong magic or version, unknown type, truncated or oversized. */
export class FrameError extends Error {
  override readonly name = 'FrameError';
}

/** Most tokens or rows one frame may carry (a guard against hostile length fields). */
const MAX_ITEMS = 1 << 20;
/**
 * Most float32 entries the sparse rows of one frame may expand to (128 MB): 9 bytes of a sparse row
 * claim a whole vocabulary, so without a bound a 1 MB frame could ask for hundreds of GB. 64 drafts
 * at a 256k vocabulary need 16M.
 */
const MAX_EXPANDED = 1 << 25;
/** Frames carry UTF-8 strings; fatal: bytes that are not UTF-8 throw (and become a FrameError). */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

class Writer {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  private at = 0;

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.at + n));
    bigger.set(this.buf.subarray(0, this.at));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(v: number): this {
    this.room(1);
    this.view.setUint8(this.at++, v);
    return this;
  }

  u32(v: number): this {
    this.room(4);
    this.view.setUint32(this.at, v, true);
    this.at += 4;
    return this;
  }

  f32(v: number): this {
    this.room(4);
    this.view.setFloat32(this.at, v, true);
    this.at += 4;
    return this;
  }

  f64(v: number): this {
    this.room(8);
    this.view.setFloat64(this.at, v, true);
    this.at += 8;
    return this;
  }

  u64(v: bigint): this {
    this.room(8);
    this.view.setBigUint64(this.at, BigInt.asUintN(64, v), true);
    this.at += 8;
    return this;
  }

  str(s: string): this {
    const bytes = new TextEncoder().encode(s);
    if (bytes.length > 0xffff) throw new FrameError(`string of ${bytes.length} bytes is too long for a frame`);
    this.room(2 + bytes.length);
    this.view.setUint16(this.at, bytes.length, true);
    this.buf.set(bytes, this.at + 2);
    this.at += 2 + bytes.length;
    return this;
  }

  /** A long string (stats JSON): uint32 length. */
  text(s: string): this {
    const bytes = new TextEncoder().encode(s);
    this.u32(bytes.length);
    this.room(bytes.length);
    this.buf.set(bytes, this.at);
    this.at += bytes.length;
    return this;
  }

  ids(ids: readonly number[]): this {
    this.u32(ids.length);
    this.room(4 * ids.length);
    for (const id of ids) {
      this.view.setUint32(this.at, id, true);
      this.at += 4;
    }
    return this;
  }

  /** Log probabilities: a count, then per token its id, float64 log probability, and its alternatives (a count byte, then id and float64 each). */
  logprobs(list: readonly TokenLogprob[]): this {
    this.u32(list.length);
    for (const e of list) {
      this.u32(e.token).f64(e.logprob).u8(e.top.length);
      for (const a of e.top) this.u32(a.token).f64(a.logprob);
    }
    return this;
  }

  rows(rows: Rows): this {
    this.u32(rows.length);
    for (const r of rows) {
      if (!r) {
        this.u8(0);
        continue;
      }
      const nonZero = support(r);
      if (sparseBytes(nonZero.length) < denseBytes(r.length)) {
        this.u8(2).u32(r.length).u32(nonZero.length);
        this.room(8 * nonZero.length);
        for (const id of nonZero) {
          this.view.setUint32(this.at, id, true);
          this.at += 4;
        }
        for (const id of nonZero) {
          this.view.setFloat32(this.at, r[id]!, true);
          this.at += 4;
        }
        continue;
      }
      this.u8(1).u32(r.length);
      this.room(4 * r.length);
      new Uint8Array(this.buf.buffer, this.at, 4 * r.length).set(new Uint8Array(r.buffer, r.byteOffset, 4 * r.length));
      this.at += 4 * r.length;
    }
    return this;
  }

  done(): Uint8Array {
    return this.buf.slice(0, this.at);
  }
}

class Reader {
  private readonly view: DataView;
  private at = 0;
  /** Entries the sparse rows read so far expand to. */
  private expanded = 0;
  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private need(n: number, what: string): void {
    if (this.at + n > this.buf.length) throw new FrameError(`frame truncated in ${what} (${this.buf.length} bytes)`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.view.getUint8(this.at++);
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.at, true);
    this.at += 4;
    return v;
  }

  f32(what: string): number {
    this.need(4, what);
    const v = this.view.getFloat32(this.at, true);
    this.at += 4;
    return v;
  }

  f64(what: string): number {
    this.need(8, what);
    const v = this.view.getFloat64(this.at, true);
    this.at += 8;
    return v;
  }

  u64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.at, true);
    this.at += 8;
    return v;
  }

  str(what: string): string {
    this.need(2, what);
    const n = this.view.getUint16(this.at, true);
    this.at += 2;
    return this.utf8(n, what);
  }

  text(what: string): string {
    return this.utf8(this.u32(what), what);
  }

  /** n bytes of UTF-8; bytes that are not UTF-8 are a malformed frame, not a crash. */
  private utf8(n: number, what: string): string {
    this.need(n, what);
    let s: string;
    try {
      s = UTF8.decode(this.buf.subarray(this.at, this.at + n));
    } catch {
      throw new FrameError(`${what} is not valid UTF-8`);
    }
    this.at += n;
    return s;
  }

  count(what: string): number {
    const n = this.u32(what);
    if (n > MAX_ITEMS) throw new FrameError(`${what} claims ${n} items, more than a frame may carry`);
    return n;
  }

  ids(what: string): number[] {
    const n = this.count(what);
    this.need(4 * n, what);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = this.view.getUint32(this.at + 4 * i, true);
    this.at += 4 * n;
    return out;
  }

  logprobs(what: string): TokenLogprob[] {
    const n = this.count(what);
    const out: TokenLogprob[] = [];
    for (let i = 0; i < n; i++) {
      const token = this.u32(what);
      const logprob = this.f64(what);
      const k = this.u8(what);
      if (k > MAX_TOP_LOGPROBS) throw new FrameError(`${what} lists ${k} alternatives, more than ${MAX_TOP_LOGPROBS}`);
      const top: { token: number; logprob: number }[] = [];
      for (let j = 0; j < k; j++) top.push({ token: this.u32(what), logprob: this.f64(what) });
      if (![logprob, ...top.map((a) => a.logprob)].every((v) => v <= 0 && Number.isFinite(v))) throw new FrameError(`${what} holds a log probability that is not a finite number <= 0`);
      out.push({ token, logprob, top });
    }
    return out;
  }

  rows(what: string): Rows {
    const n = this.count(what);
    const out: Rows = [];
    for (let i = 0; i < n; i++) {
      const present = this.u8(what);
      if (present === 0) {
        out.push(undefined);
        continue;
      }
      if (present === 2) {
        out.push(this.sparseRow(what));
        continue;
      }
      if (present !== 1) throw new FrameError(`${what}: bad row marker ${present}`);
      const len = this.count(what);
      this.need(4 * len, what);
      // a copy, aligned: the frame may be a Node Buffer view into a larger pool (Buffer#slice does not copy)
      out.push(new Float32Array(Uint8Array.prototype.slice.call(this.buf, this.at, this.at + 4 * len).buffer));
      this.at += 4 * len;
    }
    return out;
  }

  /** A sparse row (marker 2), expanded: width, count, ascending ids below the width, then values. */
  private sparseRow(what: string): Float32Array {
    const width = this.count(what);
    this.expanded += width;
    if (this.expanded > MAX_EXPANDED) throw new FrameError(`${what}: sparse rows would expand to more than ${MAX_EXPANDED} entries`);
    const n = this.count(what);
    if (n > width) throw new FrameError(`${what}: a sparse row of width ${width} claims ${n} entries`);
    this.need(8 * n, what);
    const row = new Float32Array(width);
    let last = -1;
    for (let i = 0; i < n; i++) {
      const id = this.view.getUint32(this.at + 4 * i, true);
      if (id <= last || id >= width) throw new FrameError(`${what}: sparse row ids must ascend below ${width}, got ${id} after ${last}`);
      row[id] = this.view.getFloat32(this.at + 4 * (n + i), true);
      last = id;
    }
    this.at += 8 * n;
    return row;
  }

  end(): void {
    if (this.at !== this.buf.length) throw new FrameError(`${this.buf.length - this.at} unexpected bytes after the message`);
  }
}

function bool(r: Reader, what: string): boolean {
  const v = r.u8(what);
  if (v > 1) throw new FrameError(`${what} must be 0 or 1, got ${v}`);
  return v === 1;
}

/**
 * Sampling settings, float64 so that every actor computes with exactly the request's values (a
 * float32 temperature of 0.7 is 0.699999988): temperature, top-k (uint32), top-p, min-p, the
 * repetition, presence and frequency penalties, and logit_bias as a count of (uint32 id, float64
 * value). Neutral values stand for absent ones, so a message decodes to the fields that are on.
 */
function writeSampling(w: Writer, s: SamplingParams): Writer {
  w.f64(s.temperature).u32(s.topK).f64(s.topP).f64(s.minP ?? 0).f64(s.repetitionPenalty ?? 1).f64(s.presencePenalty ?? 0).f64(s.frequencyPenalty ?? 0);
  const bias = Object.entries(s.logitBias ?? {});
  w.u32(bias.length);
  for (const [id, v] of bias) {
    if (!(Number(id) <= 0xffffffff)) throw new FrameError(`logit_bias token id ${id} does not fit a frame (uint32)`);
    w.u32(Number(id)).f64(v);
  }
  return w;
}

function readSampling(r: Reader): SamplingParams {
  const base = { temperature: r.f64('temperature'), topK: r.u32('topK'), topP: r.f64('topP') };
  const minP = r.f64('minP');
  const repetitionPenalty = r.f64('repetitionPenalty');
  const presencePenalty = r.f64('presencePenalty');
  const frequencyPenalty = r.f64('frequencyPenalty');
  const n = r.count('logitBias');
  const logitBias: Record<number, number> = {};
  for (let i = 0; i < n; i++) logitBias[r.u32('logitBias')] = r.f64('logitBias');
  return {
    ...base,
    ...(minP !== 0 ? { minP } : {}),
    ...(repetitionPenalty !== 1 ? { repetitionPenalty } : {}),
    ...(presencePenalty !== 0 ? { presencePenalty } : {}),
    ...(frequencyPenalty !== 0 ? { frequencyPenalty } : {}),
    ...(n > 0 ? { logitBias } : {}),
  };
}

/** An optional ServiceLoad: a presence byte, then occupancy, fixedMs and tokenMs as float32. */
function writeLoad(w: Writer, load: ServiceLoad | undefined): Writer {
  return load ? w.u8(1).f32(load.occupancy).f32(load.fixedMs).f32(load.tokenMs) : w.u8(0);
}

function readLoad(r: Reader): ServiceLoad | undefined {
  if (!bool(r, 'load')) return undefined;
  const load = { occupancy: r.f32('occupancy'), fixedMs: r.f32('fixedMs'), tokenMs: r.f32('tokenMs') };
  if (!Object.values(load).every((v) => Number.isFinite(v) && v >= 0)) throw new FrameError('load figures must be finite and non-negative');
  return load;
}

/** An optional handler time: a presence byte, then float32 milliseconds. */
function writeServeMs(w: Writer, serveMs: number | undefined): Writer {
  return serveMs === undefined ? w.u8(0) : w.u8(1).f32(serveMs);
}

function readServeMs(r: Reader): number | undefined {
  if (!bool(r, 'serveMs')) return undefined;
  const ms = r.f32('serveMs');
  if (!(Number.isFinite(ms) && ms >= 0)) throw new FrameError('serveMs must be finite and non-negative');
  return ms;
}

/** `propose`'s flags byte: address the feature drafter; answer with the drafter's runner-up. */
const PROPOSE_FEATURE = 1;
const PROPOSE_RUNNER_UP = 2;

/** An optional runner-up token: a presence byte, then its id. */
function writeRunnerUp(w: Writer, token: number | undefined): Writer {
  return token === undefined ? w.u8(0) : w.u8(1).u32(token);
}

function readRunnerUp(r: Reader): number | undefined {
  return bool(r, 'runnerUp') ? r.u32('runnerUp') : undefined;
}

const withServeMs = <T extends object>(m: T, serveMs: number | undefined): T => (serveMs === undefined ? m : { ...m, serveMs });

/** `m` with its optional load attached when there is one (replies of actors whose model batches). */
export const withLoad = <T extends object>(m: T, load: ServiceLoad | undefined): T => (load ? { ...m, load } : m);

/** Encodes a message as one binary frame. */
export function encode(m: Message): Uint8Array {
  const w = new Writer().u8(FRAME_MAGIC).u8(FRAME_VERSION).u8(TYPES.indexOf(m.type));
  switch (m.type) {
    case 'open':
      return writeSampling(w.str(m.session), m.sampling).u64(m.seed).u8(m.target ? 1 : 0).u32(m.promptLength).u8(m.logprobs === undefined ? 0 : m.logprobs + 1).u8(VERIFICATION_CODES.indexOf(m.verification)).u8(m.eagle ? 1 : 0).done();
    case 'propose':
      return w.str(m.session).u32(m.base).ids(m.suffix).u32(m.want).u8((m.feature ? PROPOSE_FEATURE : 0) | (m.runnerUp ? PROPOSE_RUNNER_UP : 0)).done();
    case 'review':
      return w.str(m.session).u32(m.base).ids(m.suffix).u32(m.start).f32(m.lenience).u8(m.passUp ? 1 : 0).rows(m.q).done();
    case 'close':
      return w.str(m.session).done();
    case 'opened':
      return w.str(m.instance).str(m.model).u32(m.vocabSize).done();
    case 'proposed':
      return writeRunnerUp(writeServeMs(writeLoad(w.ids(m.tokens).rows(m.q).logprobs(m.logprobs ?? []), m.load), m.serveMs), m.runnerUp).done();
    case 'reviewed':
      return writeServeMs(writeLoad(w.u32(m.accepted).u32(m.token).rows(m.p).logprobs(m.logprobs ?? []), m.load), m.serveMs).done();
    case 'closed':
      return w.done();
    case 'error':
      return w.u8(ERROR_CODES.indexOf(m.code)).str(m.message.slice(0, 4000)).done();
    case 'tokens':
      return w.u32(m.offset).ids(m.tokens).logprobs(m.logprobs ?? []).done();
    case 'done':
      return w.str(m.finishReason).text(m.stats).done();
    case 'failed':
      return w.str(m.message.slice(0, 4000)).done();
    case 'stats':
      return w.done();
    case 'statsReply':
      return w.str(m.instance).u32(m.sessions).done();
    case 'alive':
      return w.str(m.model).str(m.instance).u32(m.sessions).u8((m.local ? ALIVE_LOCAL : 0) | (m.leaving ? ALIVE_LEAVING : 0)).done();
  }
}

/** `{ logprobs }` when there are any (an empty list travels as a count of 0 and is left out decoded). */
const present = (logprobs: TokenLogprob[]) => (logprobs.length ? { logprobs } : {});

/** Decodes one frame; throws FrameError on anything malformed. */
export function decode(frame: Uint8Array): Message {
  const r = new Reader(frame);
  const magic = r.u8('header');
  if (magic !== FRAME_MAGIC) throw new FrameError(`not a cascade frame (magic 0x${magic.toString(16)}, expected 0x${FRAME_MAGIC.toString(16)})`);
  const version = r.u8('header');
  if (version !== FRAME_VERSION) throw new FrameError(`frame version ${version} is not supported (this build speaks ${FRAME_VERSION})`);
  const tag = r.u8('header');
  const type = TYPES[tag];
  if (!type) throw new FrameError(`unknown message type ${tag}`);
  let m: Message;
  switch (type) {
    case 'open': {
      const session = r.str('session');
      const sampling = readSampling(r);
      const seed = r.u64('seed');
      const target = bool(r, 'target');
      const promptLength = r.u32('promptLength');
      const logprobs = r.u8('logprobs');
      if (logprobs > MAX_TOP_LOGPROBS + 1) throw new FrameError(`open asks for ${logprobs - 1} alternatives per token, more than ${MAX_TOP_LOGPROBS}`);
      const rule = r.u8('verification');
      const verification = VERIFICATION_CODES[rule];
      if (!verification) throw new FrameError(`unknown verification rule ${rule}`);
      const eagle = bool(r, 'eagle');
      m = { type, session, sampling, seed, target, promptLength, ...(logprobs > 0 ? { logprobs: logprobs - 1 } : {}), verification, ...(eagle ? { eagle } : {}) };
      break;
    }
    case 'propose': {
      const base = { type, session: r.str('session'), base: r.u32('base'), suffix: r.ids('suffix'), want: r.u32('want') };
      const flags = r.u8('flags');
      if (flags & ~(PROPOSE_FEATURE | PROPOSE_RUNNER_UP)) throw new FrameError(`propose flags ${flags} name unknown options`);
      m = { ...base, ...(flags & PROPOSE_FEATURE ? { feature: true } : {}), ...(flags & PROPOSE_RUNNER_UP ? { runnerUp: true } : {}) };
      break;
    }
    case 'review':
      m = { type, session: r.str('session'), base: r.u32('base'), suffix: r.ids('suffix'), start: r.u32('start'), lenience: r.f32('lenience'), passUp: bool(r, 'passUp'), q: r.rows('q') };
      break;
    case 'close':
      m = { type, session: r.str('session') };
      break;
    case 'opened':
      m = { type, instance: r.str('instance'), model: r.str('model'), vocabSize: r.u32('vocabSize') };
      break;
    case 'proposed': {
      const tokens = r.ids('tokens');
      const q = r.rows('q');
      const logprobs = r.logprobs('logprobs');
      if (logprobs.length && logprobs.length !== tokens.length) throw new FrameError(`${logprobs.length} log probabilities for ${tokens.length} tokens`);
      const proposed = withServeMs(withLoad({ type, tokens, q, ...present(logprobs) }, readLoad(r)), readServeMs(r));
      const runnerUp = readRunnerUp(r);
      m = runnerUp === undefined ? proposed : { ...proposed, runnerUp };
      break;
    }
    case 'reviewed': {
      const accepted = r.u32('accepted');
      const token = r.u32('token');
      const p = r.rows('p');
      const logprobs = r.logprobs('logprobs');
      if (logprobs.length && logprobs.length !== accepted + 1) throw new FrameError(`${logprobs.length} log probabilities for ${accepted + 1} emitted tokens`);
      m = withServeMs(withLoad({ type, accepted, token, p, ...present(logprobs) }, readLoad(r)), readServeMs(r));
      break;
    }
    case 'closed':
      m = { type };
      break;
    case 'error': {
      const code = ERROR_CODES[r.u8('code')];
      if (!code) throw new FrameError('unknown error code');
      m = { type, code, message: r.str('message') };
      break;
    }
    case 'tokens':
    {
      const offset = r.u32('offset');
      const tokens = r.ids('tokens');
      const logprobs = r.logprobs('logprobs');
      if (logprobs.length && logprobs.length !== tokens.length) throw new FrameError(`${logprobs.length} log probabilities for ${tokens.length} tokens`);
      m = { type, offset, tokens, ...present(logprobs) };
    }
      break;
    case 'done':
      m = { type, finishReason: r.str('finishReason'), stats: r.text('stats') };
      break;
    case 'failed':
      m = { type, message: r.str('message') };
      break;
    case 'stats':
      m = { type };
      break;
    case 'statsReply':
      m = { type, instance: r.str('instance'), sessions: r.u32('sessions') };
      break;
    case 'alive': {
      const model = r.str('model');
      const instance = r.str('instance');
      const sessions = r.u32('sessions');
      const flags = r.u8('flags');
      m = { type, model, instance, sessions, ...(flags & ALIVE_LOCAL ? { local: true } : {}), ...(flags & ALIVE_LEAVING ? { leaving: true } : {}) };
      break;
    }
  }
  r.end();
  return m;
}

/** Ids of a row's non-zero entries, ascending. */
function support(row: Float32Array): number[] {
  const ids: number[] = [];
  for (let i = 0; i < row.length; i++) if (row[i] !== 0) ids.push(i);
  return ids;
}

/** Bytes of one row after its marker: dense (width, values) and sparse (width, count, ids, values). */
const denseBytes = (width: number) => 4 + 4 * width;
const sparseBytes = (nonZero: number) => 8 + 8 * nonZero;

/** Bytes one row with `nonZero` non-zero entries of `width` takes in a frame, marker included (the smaller encoding). */
export const rowBytes = (width: number, nonZero: number): number => 1 + Math.min(denseBytes(width), sparseBytes(nonZero));

/** Bytes a frame of distributions would take: used to fall back to one-hot drafts near the payload limit. */
export const rowsBytes = (rows: Rows): number => rows.reduce((a, r) => a + (r ? rowBytes(r.length, support(r).length) : 1), 4);
