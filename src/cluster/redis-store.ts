import type { ChainableCommander } from 'ioredis';
import { CascadeError } from '../errors.ts';
import type { RedisConnection } from './redis-connection.ts';
import { joinRows, kvArray, splitRows, type KvStore } from '../models/kv-store.ts';
import type { KvArray, KvDtype, KvRows } from '../models/session.ts';
import { MAX_TOP_LOGPROBS, type TokenLogprob } from '../kernels/sampling.ts';

/**
 * Hash-tagged key of a session or request (SPEC §6): every key of one id carries the tag `{id}`, so
 * a Redis Cluster keeps them on one slot, and the multi-key commands, MULTIs and scripts below,
 * which only ever touch the keys of one id, never cross slots.
 */
export const sessionKey = (session: string, ...parts: (string | number)[]): string => `cascade:{${session}}:${parts.join(':')}`;

/** Dtype codes of an encoded KV block. */
const DTYPES: readonly KvDtype[] = ['float32', 'float16'];

/**
 * KV rows as bytes: kvHeads, count, tensor count, dtype (0 float32, 1 float16), then each tensor's
 * length in elements, then the tensors' data (4 or 2 bytes an element), all little-endian.
 */
export function encodeRows(rows: KvRows): Buffer {
  const header = Buffer.alloc(16 + 4 * rows.tensors.length);
  header.writeUInt32LE(rows.kvHeads, 0);
  header.writeUInt32LE(rows.count, 4);
  header.writeUInt32LE(rows.tensors.length, 8);
  header.writeUInt32LE(DTYPES.indexOf(rows.dtype), 12);
  rows.tensors.forEach((t, i) => header.writeUInt32LE(t.length, 16 + 4 * i));
  return Buffer.concat([header, ...rows.tensors.map((t) => Buffer.from(t.buffer, t.byteOffset, t.byteLength))]);
}

export function decodeRows(buf: Buffer): KvRows {
  const kvHeads = buf.readUInt32LE(0);
  const count = buf.readUInt32LE(4);
  const n = buf.readUInt32LE(8);
  const dtype = DTYPES[buf.readUInt32LE(12)];
  if (!dtype) throw new CascadeError(`KV block has unknown dtype code ${buf.readUInt32LE(12)}`);
  const size = dtype === 'float16' ? 2 : 4;
  let at = 16 + 4 * n;
  const tensors: KvArray[] = [];
  for (let i = 0; i < n; i++) {
    const len = buf.readUInt32LE(16 + 4 * i);
    const copy = kvArray(dtype, len);
    new Uint8Array(copy.buffer).set(buf.subarray(at, at + size * len));
    tensors.push(copy);
    at += size * len;
  }
  if (at !== buf.length) throw new CascadeError(`KV block of ${buf.length} bytes does not match its header`);
  return { dtype, kvHeads, count, tensors };
}

/**
 * ADORE's released KV in Redis: one key per (session, model, position), written before the
 * position is listed in the session's index set (data before metadata), all with a TTL so that an
 * abandoned session's blocks expire. A position whose data key is missing (expired, evicted, never
 * written) is a miss, never an error: the caller leaves that token released.
 */
export class RedisKvStore implements KvStore {
  constructor(
    private readonly redis: RedisConnection,
    private readonly ttlSeconds = 3600,
  ) {}

  async put(session: string, model: string, positions: readonly number[], rows: KvRows): Promise<void> {
    const redis = this.redis.client;
    const parts = splitRows(rows);
    const data = redis.multi();
    parts.forEach((part, i) => data.set(sessionKey(session, 'kv', model, positions[i]!), encodeRows(part), 'EX', this.ttlSeconds));
    await data.exec();
    await redis.multi().sadd(sessionKey(session, 'kvindex', model), ...positions.map(String)).expire(sessionKey(session, 'kvindex', model), this.ttlSeconds).exec();
  }

  async get(session: string, model: string, positions: readonly number[]): Promise<{ positions: number[]; rows: KvRows | undefined }> {
    if (!positions.length) return { positions: [], rows: undefined };
    const redis = this.redis.client;
    const values = await redis.mgetBuffer(...positions.map((p) => sessionKey(session, 'kv', model, p)));
    const found: number[] = [];
    const parts: KvRows[] = [];
    values.forEach((v, i) => {
      if (!v) return;
      try {
        parts.push(decodeRows(v));
        found.push(positions[i]!);
      } catch {
        // a damaged block is a miss as well
      }
    });
    return { positions: found, rows: joinRows(parts) };
  }

  async drop(session: string, model: string, positions?: readonly number[]): Promise<void> {
    const redis = this.redis.client;
    const index = sessionKey(session, 'kvindex', model);
    const listed = positions ?? (await redis.smembers(index)).map(Number);
    if (listed.length) await redis.del(...listed.map((p) => sessionKey(session, 'kv', model, p)));
    if (positions) {
      if (positions.length) await redis.srem(index, ...positions.map(String));
    } else await redis.del(index);
  }
}

/**
 * A request's log refused a write because a newer attempt has claimed the request (a BullMQ stall
 * hand-over while this attempt still ran, or a retry): this attempt must stop without publishing or
 * finishing anything, and must not mark the request failed, since the newer attempt carries it on.
 */
export class RequestSupersededError extends CascadeError {
  override readonly name = 'RequestSupersededError';
  constructor(
    readonly request: string,
    /** This attempt's fence and the log's current one (greater). */
    readonly fence: number,
    readonly current: number,
  ) {
    super(`request ${request} was taken over by a newer attempt (fence ${current}, this attempt holds ${fence}): this attempt stops`);
  }
}

/**
 * A request's log no longer holds this attempt's claim, nor a newer one: its fence is older than the
 * attempt's (absent: 0). A Redis failover dropped writes that had not reached a replica (a write
 * counts once a replica acknowledges it, or after `replicaAckMs` without one). Retryable: the next
 * attempt claims the log again and resumes after what it still holds.
 */
export class LogLostError extends CascadeError {
  override readonly name = 'LogLostError';
  override readonly isRetryable = true;
  constructor(
    readonly request: string,
    readonly fence: number,
    readonly current: number,
  ) {
    super(`request ${request}: its log lost this attempt's claim (fence ${fence}, the log holds ${current}), a failover having dropped writes no replica had; the attempt fails and is retried`);
  }
}

/** The refusal of a write under `fence` when the log's fence is `current`: a newer attempt's claim, or a lost one. */
export const fenceRefusal = (request: string, fence: number, current: number): Error => (current > fence ? new RequestSupersededError(request, fence, current) : new LogLostError(request, fence, current));

/** An append that does not land at its offset under the request's current fence (the log holds `length` tokens). */
export class LogOffsetError extends CascadeError {
  override readonly name = 'LogOffsetError';
  override readonly isRetryable = true;
  constructor(
    readonly request: string,
    readonly offset: number,
    readonly length: number,
  ) {
    super(`request ${request}: an append at token ${offset} was refused, the log holds ${length} tokens that differ`);
  }
}

/**
 * Where a request's produced tokens and final result are recorded (Redis in the cluster). Writes are
 * fenced: an attempt first `claim`s the request and gets a fence greater than every earlier claim's;
 * an append or finish carrying an older fence is refused with RequestSupersededError, so two
 * attempts running the same request at once (a stall hand-over) never interleave their tokens: the
 * log is always the recorded prefix the newest claimer resumed from plus that claimer's own tokens.
 */
export interface RequestLog {
  /** Takes the request over; returns this attempt's fence (1, 2, … per request). */
  claim(request: string): Promise<number>;
  read(request: string): Promise<number[]>;
  /**
   * The log probabilities recorded with the tokens (one per token, for a request that asked for
   * them; none otherwise). `top`: the request's alternatives per token.
   */
  readLogprobs(request: string, top: number): Promise<TokenLogprob[]>;
  /**
   * Records `tokens` at `offset`, which must be the log's length (or, for a retried append, the
   * same tokens must already be there), with their log probabilities when the request asks for
   * them (`logprobs`, one per token, each with at most `top` alternatives). Throws
   * RequestSupersededError under an old fence, LogLostError when the log lost this attempt's claim (a
   * failover; its fence is older than this attempt's) and LogOffsetError when the log holds something else at `offset`.
   */
  append(request: string, fence: number, offset: number, tokens: readonly number[], logprobs?: { readonly top: number; readonly list: readonly TokenLogprob[] }): Promise<void>;
  /** Records the result (finish reason and stats JSON); throws RequestSupersededError under an old fence, LogLostError as append. */
  finish(request: string, fence: number, result: string): Promise<void>;
  result(request: string): Promise<string | undefined>;
}

/** A RequestLog in memory (in-process clusters and unit tests); the same contract as TokenLog. */
export class MemoryRequestLog implements RequestLog {
  private readonly tokens = new Map<string, number[]>();
  private readonly logprobs = new Map<string, TokenLogprob[]>();
  private readonly results = new Map<string, string>();
  private readonly fences = new Map<string, number>();

  async claim(request: string): Promise<number> {
    const fence = (this.fences.get(request) ?? 0) + 1;
    this.fences.set(request, fence);
    return fence;
  }

  async read(request: string): Promise<number[]> {
    return [...(this.tokens.get(request) ?? [])];
  }

  private fenced(request: string, fence: number): void {
    const current = this.fences.get(request) ?? 0;
    if (fence !== current) throw fenceRefusal(request, fence, current);
  }

  async readLogprobs(request: string): Promise<TokenLogprob[]> {
    return [...(this.logprobs.get(request) ?? [])];
  }

  async append(request: string, fence: number, offset: number, tokens: readonly number[], logprobs?: { readonly top: number; readonly list: readonly TokenLogprob[] }): Promise<void> {
    this.fenced(request, fence);
    checkLogprobs(tokens, logprobs);
    const held = this.tokens.get(request) ?? [];
    if (held.length === offset) {
      held.push(...tokens);
      if (logprobs) this.logprobs.set(request, [...(this.logprobs.get(request) ?? []), ...logprobs.list]);
    } else if (held.length !== offset + tokens.length || tokens.some((t, i) => held[offset + i] !== t)) throw new LogOffsetError(request, offset, held.length);
    this.tokens.set(request, held);
  }

  async finish(request: string, fence: number, result: string): Promise<void> {
    this.fenced(request, fence);
    this.results.set(request, result);
  }

  async result(request: string): Promise<string | undefined> {
    return this.results.get(request);
  }
}

/** A token's log probability record in Redis: token u32, logprob f64, alternatives u8, then `top` slots of (u32 id, f64 logprob). */
const logprobBytes = (top: number) => 13 + 12 * top;

function checkLogprobs(tokens: readonly number[], logprobs: { readonly top: number; readonly list: readonly TokenLogprob[] } | undefined): void {
  if (!logprobs) return;
  if (!(Number.isInteger(logprobs.top) && logprobs.top >= 0 && logprobs.top <= MAX_TOP_LOGPROBS)) throw new RangeError(`top log probabilities must be 0..${MAX_TOP_LOGPROBS}, got ${logprobs.top}`);
  if (logprobs.list.length !== tokens.length) throw new RangeError(`${logprobs.list.length} log probabilities for ${tokens.length} tokens`);
  if (logprobs.list.some((e) => e.top.length > logprobs.top)) throw new RangeError(`a token lists more than ${logprobs.top} alternatives`);
}

/** Log probability records of fixed size (logprobBytes(top)) each. */
export function encodeLogprobs(list: readonly TokenLogprob[], top: number): Buffer {
  const size = logprobBytes(top);
  const buf = Buffer.alloc(size * list.length);
  list.forEach((e, i) => {
    let at = i * size;
    buf.writeUInt32LE(e.token, at);
    buf.writeDoubleLE(e.logprob, at + 4);
    buf.writeUInt8(e.top.length, at + 12);
    at += 13;
    for (const a of e.top) {
      buf.writeUInt32LE(a.token, at);
      buf.writeDoubleLE(a.logprob, at + 4);
      at += 12;
    }
  });
  return buf;
}

export function decodeLogprobs(buf: Buffer, top: number): TokenLogprob[] {
  const size = logprobBytes(top);
  const out: TokenLogprob[] = [];
  for (let at = 0; at + size <= buf.length; at += size) {
    const n = Math.min(buf.readUInt8(at + 12), top);
    const alternatives = Array.from({ length: n }, (_, j) => ({ token: buf.readUInt32LE(at + 13 + 12 * j), logprob: buf.readDoubleLE(at + 17 + 12 * j) }));
    out.push({ token: buf.readUInt32LE(at), logprob: buf.readDoubleLE(at + 4), top: alternatives });
  }
  return out;
}

/** Takes a request over: the next fence. */
const CLAIM = `
local fence = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return fence
`;

/**
 * Appends tokens at an expected offset under the current fence: {0, length} when they landed (or a
 * retried append finds the same bytes there), {1, current fence} when the fence is old, {2, length}
 * when the log holds other tokens at the offset. Their log probability records (ARGV[5], possibly
 * empty) land in KEYS[3] in the same step.
 */
const APPEND_AT = `
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[4]) then return {1, current} end
local len = redis.call('STRLEN', KEYS[1]) / 4
local offset = tonumber(ARGV[1])
local n = string.len(ARGV[2]) / 4
if len == offset then
  redis.call('APPEND', KEYS[1], ARGV[2])
  if string.len(ARGV[5]) > 0 then
    redis.call('APPEND', KEYS[3], ARGV[5])
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
  end
  len = len + n
elseif len ~= offset + n or redis.call('GETRANGE', KEYS[1], 4 * offset, 4 * len - 1) ~= ARGV[2] then
  return {2, len}
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {0, len}
`;

/** Sets the result under the current fence: {0} when set, {1, current fence} when the fence is old. */
const FINISH = `
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[3]) then return {1, current} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return {0}
`;

/**
 * A request's generated tokens in Redis, recorded before they are streamed: a coordinator that
 * takes over a retried request resumes after them, so no token is lost or sent twice. Stored as
 * little-endian uint32s appended at an expected offset under the request's fence (atomic scripts),
 * so a repeated append is harmless and a superseded attempt's append is refused.
 */
export class TokenLog implements RequestLog {
  constructor(
    private readonly redis: RedisConnection,
    private readonly ttlSeconds = 3600,
  ) {}

  private key(request: string): string {
    return sessionKey(request, 'tokens');
  }

  /**
   * Runs a script over one request's keys (one slot). With the connection's replicaAcks, a WAIT
   * follows in the same pipeline, so it reaches the master that ran the script: the write is on a
   * replica before the caller streams it, and a failover cannot drop it. A pipeline that fails (a
   * MOVED or ASK while slots move, a connection lost to a dying master) is not retried by ioredis,
   * so the script then runs on its own, with the client's redirections and failover retries, and
   * its WAIT after it; every script here may run twice (a second claim only takes a newer fence).
   * A claim left on a frozen master's socket can run after its retry, when the master thaws before
   * it is failed over (sooner than cluster-node-timeout): the attempt then holds the older fence,
   * its next write is refused as superseded, and BullMQ retries the request (one attempt spent).
   */
  private async script(script: string, keys: readonly string[], ...args: (string | number | Buffer)[]): Promise<unknown> {
    const { client, replicaAcks, replicaAckMs } = this.redis;
    if (!replicaAcks) return client.eval(script, keys.length, ...keys, ...args);
    const replicated = (p: ChainableCommander) => p.wait(replicaAcks, replicaAckMs);
    const results = await replicated(client.pipeline().eval(script, keys.length, ...keys, ...args))
      .exec()
      .catch(() => null);
    const [err, value] = results?.[0] ?? [new Error('no reply')];
    if (!err) return value;
    const retried = await client.eval(script, keys.length, ...keys, ...args);
    await replicated(client.pipeline().exists(keys[0]!)).exec().catch(() => undefined);
    return retried;
  }

  private fenceKey(request: string): string {
    return sessionKey(request, 'fence');
  }

  async claim(request: string): Promise<number> {
    return Number(await this.script(CLAIM, [this.fenceKey(request)], this.ttlSeconds));
  }

  async read(request: string): Promise<number[]> {
    const buf = await this.redis.client.getBuffer(this.key(request));
    if (!buf) return [];
    const out: number[] = [];
    for (let i = 0; i + 4 <= buf.length; i += 4) out.push(buf.readUInt32LE(i));
    return out;
  }

  async readLogprobs(request: string, top: number): Promise<TokenLogprob[]> {
    const buf = await this.redis.client.getBuffer(sessionKey(request, 'logprobs'));
    return buf ? decodeLogprobs(buf, top) : [];
  }

  async append(request: string, fence: number, offset: number, tokens: readonly number[], logprobs?: { readonly top: number; readonly list: readonly TokenLogprob[] }): Promise<void> {
    checkLogprobs(tokens, logprobs);
    const buf = Buffer.alloc(4 * tokens.length);
    tokens.forEach((t, i) => buf.writeUInt32LE(t, 4 * i));
    const records = logprobs ? encodeLogprobs(logprobs.list, logprobs.top) : Buffer.alloc(0);
    const keys = [this.key(request), this.fenceKey(request), sessionKey(request, 'logprobs')];
    const [status, value] = (await this.script(APPEND_AT, keys, offset, buf, this.ttlSeconds, fence, records)) as [number, number];
    if (status === 1) throw fenceRefusal(request, fence, Number(value));
    if (status === 2) throw new LogOffsetError(request, offset, Number(value));
  }

  async finish(request: string, fence: number, result: string): Promise<void> {
    const [status, current] = (await this.script(FINISH, [sessionKey(request, 'result'), this.fenceKey(request)], result, this.ttlSeconds, fence)) as [number, number?];
    if (status === 1) throw fenceRefusal(request, fence, Number(current));
  }

  async result(request: string): Promise<string | undefined> {
    return (await this.redis.client.get(sessionKey(request, 'result'))) ?? undefined;
  }

  async forget(request: string): Promise<void> {
    await this.redis.client.del(this.key(request), sessionKey(request, 'result'), this.fenceKey(request), sessionKey(request, 'logprobs'));
  }
}
