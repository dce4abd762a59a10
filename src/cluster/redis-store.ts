import { Redis, type RedisOptions } from 'ioredis';
import { CascadeError } from '../errors.ts';
import { redact } from './security.ts';
import { joinRows, splitRows, type KvStore } from '../models/kv-store.ts';
import type { KvRows } from '../models/session.ts';

/**
 * Redis for the cluster (SPEC §6): session state, token history and ADORE's released KV blocks,
 * sharded by session over several Redis instances. Every key of a session carries the hash tag
 * `{session}`, so a Redis Cluster keeps it on one slot; with plain instances, this client picks the
 * instance by rendezvous hashing of the tag (adding an instance moves only the sessions it wins).
 */
export class RedisShards {
  readonly clients: Redis[];

  constructor(urls: readonly string[], options: RedisOptions = {}) {
    if (!urls.length) throw new CascadeError('at least one Redis URL is needed');
    this.clients = urls.map((url) => {
      try {
        return new Redis(url, { maxRetriesPerRequest: 3, enableReadyCheck: true, lazyConnect: false, ...options });
      } catch (cause) {
        throw new CascadeError(`bad Redis URL ${redact(url)}`, { cause });
      }
    });
    for (const c of this.clients) c.on('error', () => undefined); // reconnects on its own; callers see failed commands
  }

  /** The client holding `tag`'s keys. */
  shard(tag: string): Redis {
    if (this.clients.length === 1) return this.clients[0]!;
    let best = 0;
    let bestScore = -1;
    this.clients.forEach((_, i) => {
      const score = fnv1a(`${i}:${tag}`);
      if (score > bestScore) {
        bestScore = score;
        best = i;
      }
    });
    return this.clients[best]!;
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.quit().catch(() => c.disconnect())));
  }
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // one more mixing round so that neighbouring indices spread
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  return h >>> 0;
}

/** Hash-tagged key of a session. */
export const sessionKey = (session: string, ...parts: (string | number)[]): string => `cascade:{${session}}:${parts.join(':')}`;

/** KV rows as bytes: kvHeads, count, tensor count, then each tensor's length and float32 data. */
export function encodeRows(rows: KvRows): Buffer {
  const header = Buffer.alloc(12 + 4 * rows.tensors.length);
  header.writeUInt32LE(rows.kvHeads, 0);
  header.writeUInt32LE(rows.count, 4);
  header.writeUInt32LE(rows.tensors.length, 8);
  rows.tensors.forEach((t, i) => header.writeUInt32LE(t.length, 12 + 4 * i));
  return Buffer.concat([header, ...rows.tensors.map((t) => Buffer.from(t.buffer, t.byteOffset, t.byteLength))]);
}

export function decodeRows(buf: Buffer): KvRows {
  const kvHeads = buf.readUInt32LE(0);
  const count = buf.readUInt32LE(4);
  const n = buf.readUInt32LE(8);
  let at = 12 + 4 * n;
  const tensors: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const len = buf.readUInt32LE(12 + 4 * i);
    const copy = new Float32Array(len);
    new Uint8Array(copy.buffer).set(buf.subarray(at, at + 4 * len));
    tensors.push(copy);
    at += 4 * len;
  }
  if (at !== buf.length) throw new CascadeError(`KV block of ${buf.length} bytes does not match its header`);
  return { kvHeads, count, tensors };
}

/**
 * ADORE's released KV in Redis: one key per (session, model, position), written before the
 * position is listed in the session's index set (data before metadata), all with a TTL so that an
 * abandoned session's blocks expire. A position whose data key is missing (expired, evicted, never
 * written) is a miss, never an error: the caller leaves that token released.
 */
export class RedisKvStore implements KvStore {
  constructor(
    private readonly shards: RedisShards,
    private readonly ttlSeconds = 3600,
  ) {}

  async put(session: string, model: string, positions: readonly number[], rows: KvRows): Promise<void> {
    const redis = this.shards.shard(session);
    const parts = splitRows(rows);
    const data = redis.multi();
    parts.forEach((part, i) => data.set(sessionKey(session, 'kv', model, positions[i]!), encodeRows(part), 'EX', this.ttlSeconds));
    await data.exec();
    await redis.multi().sadd(sessionKey(session, 'kvindex', model), ...positions.map(String)).expire(sessionKey(session, 'kvindex', model), this.ttlSeconds).exec();
  }

  async get(session: string, model: string, positions: readonly number[]): Promise<{ positions: number[]; rows: KvRows | undefined }> {
    if (!positions.length) return { positions: [], rows: undefined };
    const redis = this.shards.shard(session);
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
    const redis = this.shards.shard(session);
    const index = sessionKey(session, 'kvindex', model);
    const listed = positions ?? (await redis.smembers(index)).map(Number);
    if (listed.length) await redis.del(...listed.map((p) => sessionKey(session, 'kv', model, p)));
    if (positions) {
      if (positions.length) await redis.srem(index, ...positions.map(String));
    } else await redis.del(index);
  }
}

/** Where a request's produced tokens and final result are recorded (Redis in the cluster). */
export interface RequestLog {
  read(request: string): Promise<number[]>;
  /** Records `tokens` at `offset` (a no-op when the log already holds a different length); returns the length after. */
  append(request: string, offset: number, tokens: readonly number[]): Promise<number>;
  finish(request: string, result: string): Promise<void>;
  result(request: string): Promise<string | undefined>;
}

/** A RequestLog in memory (in-process clusters and unit tests). */
export class MemoryRequestLog implements RequestLog {
  private readonly tokens = new Map<string, number[]>();
  private readonly results = new Map<string, string>();

  async read(request: string): Promise<number[]> {
    return [...(this.tokens.get(request) ?? [])];
  }

  async append(request: string, offset: number, tokens: readonly number[]): Promise<number> {
    const held = this.tokens.get(request) ?? [];
    if (held.length === offset) held.push(...tokens);
    this.tokens.set(request, held);
    return held.length;
  }

  async finish(request: string, result: string): Promise<void> {
    this.results.set(request, result);
  }

  async result(request: string): Promise<string | undefined> {
    return this.results.get(request);
  }
}

/** Appends tokens at an expected offset: a retried append of the same tokens is a no-op. */
const APPEND_AT = `
local len = redis.call('STRLEN', KEYS[1]) / 4
local offset = tonumber(ARGV[1])
if len == offset then
  redis.call('APPEND', KEYS[1], ARGV[2])
  len = len + string.len(ARGV[2]) / 4
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return len
`;

/**
 * A request's generated tokens in Redis, recorded before they are streamed: a coordinator that
 * takes over a retried request resumes after them, so no token is lost or sent twice. Stored as
 * little-endian uint32s appended at an expected offset (an atomic script), so a repeated append is
 * harmless.
 */
export class TokenLog implements RequestLog {
  constructor(
    private readonly shards: RedisShards,
    private readonly ttlSeconds = 3600,
  ) {}

  private key(request: string): string {
    return sessionKey(request, 'tokens');
  }

  async read(request: string): Promise<number[]> {
    const buf = await this.shards.shard(request).getBuffer(this.key(request));
    if (!buf) return [];
    const out: number[] = [];
    for (let i = 0; i + 4 <= buf.length; i += 4) out.push(buf.readUInt32LE(i));
    return out;
  }

  /** Records `tokens` at `offset`; returns the tokens recorded in all afterwards. */
  async append(request: string, offset: number, tokens: readonly number[]): Promise<number> {
    const buf = Buffer.alloc(4 * tokens.length);
    tokens.forEach((t, i) => buf.writeUInt32LE(t, 4 * i));
    const len = await this.shards.shard(request).eval(APPEND_AT, 1, this.key(request), offset, buf, this.ttlSeconds);
    return Number(len);
  }

  /** Marks the request finished with its result (finish reason and stats JSON). */
  async finish(request: string, result: string): Promise<void> {
    await this.shards.shard(request).set(sessionKey(request, 'result'), result, 'EX', this.ttlSeconds);
  }

  async result(request: string): Promise<string | undefined> {
    return (await this.shards.shard(request).get(sessionKey(request, 'result'))) ?? undefined;
  }

  async forget(request: string): Promise<void> {
    await this.shards.shard(request).del(this.key(request), sessionKey(request, 'result'));
  }
}
