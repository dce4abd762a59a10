import { InvalidArgumentError } from '../errors.ts';
import type { KvArray, KvDtype, KvRows } from './session.ts';

/**
 * Where a bounded cache spills the KV of released tokens so that a rebuild gets back their exact
 * original state. Keys are (session, model, position). A missing position is a miss, never an
 * error: the caller then leaves that token released. In-memory here; the cluster puts the same
 * interface over Redis.
 */
export interface KvStore {
  put(session: string, model: string, positions: readonly number[], rows: KvRows): Promise<void>;
  /** The rows still held among `positions`, in the order asked, and which positions they are. */
  get(session: string, model: string, positions: readonly number[]): Promise<{ positions: number[]; rows: KvRows | undefined }>;
  /** Forgets the given positions, or everything of (session, model) when none are given. */
  drop(session: string, model: string, positions?: readonly number[]): Promise<void>;
}

/** A zeroed block of `length` values of `dtype`. */
export function kvArray(dtype: KvDtype, length: number): KvArray {
  return dtype === 'float16' ? new Uint16Array(length) : new Float32Array(length);
}

/** The dtype a block's array holds. */
export const dtypeOf = (a: KvArray): KvDtype => (a instanceof Uint16Array ? 'float16' : 'float32');

/** A zeroed block of the same array type as `like`. */
function alike<T extends KvArray>(like: T, length: number): T {
  return kvArray(dtypeOf(like), length) as T;
}

/** Rows `rows` of a [kvHeads, n, width] block as a [kvHeads, rows.length, width] block of the same dtype. */
export function gatherRows<T extends KvArray>(src: T, n: number, rows: readonly number[], kvHeads: number): T {
  const width = n ? src.length / (kvHeads * n) : 0;
  const dst = alike(src, kvHeads * rows.length * width);
  // Runs of consecutive rows move with one copy each: evicting a few rows of a long cache is a
  // handful of copies per head, not one per row.
  for (let j = 0; j < rows.length; ) {
    let end = j + 1;
    while (end < rows.length && rows[end] === rows[end - 1]! + 1) end++;
    const first = rows[j]!;
    for (let h = 0; h < kvHeads; h++) {
      dst.set(src.subarray((h * n + first) * width, (h * n + first + end - j) * width), (h * rows.length + j) * width);
    }
    j = end;
  }
  return dst;
}

/** The first `count` rows of a block (the block itself when that is all of it). */
export function firstRows(rows: KvRows, count: number): KvRows {
  if (count === rows.count) return rows;
  const head = Array.from({ length: count }, (_, r) => r);
  return { dtype: rows.dtype, count, kvHeads: rows.kvHeads, tensors: rows.tensors.map((t) => gatherRows(t, rows.count, head, rows.kvHeads)) };
}

/** Splits a block into one single-row block per row. */
export function splitRows(rows: KvRows): KvRows[] {
  return Array.from({ length: rows.count }, (_, r) => ({ dtype: rows.dtype, count: 1, kvHeads: rows.kvHeads, tensors: rows.tensors.map((t) => gatherRows(t, rows.count, [r], rows.kvHeads)) }));
}

/** Joins blocks of the same layout and dtype into one, rows in order. */
export function joinRows(parts: readonly KvRows[]): KvRows | undefined {
  if (parts.length === 0) return undefined;
  const { kvHeads, dtype } = parts[0]!;
  const other = parts.find((p) => p.dtype !== dtype);
  if (other) throw new InvalidArgumentError(`cannot join ${dtype} KV rows with ${other.dtype} ones`);
  const count = parts.reduce((a, p) => a + p.count, 0);
  const tensors = parts[0]!.tensors.map((first, k) => {
    const width = first.length / (kvHeads * parts[0]!.count);
    const out = alike(first, kvHeads * count * width);
    let row = 0;
    for (const p of parts) {
      const src = p.tensors[k]!;
      for (let h = 0; h < kvHeads; h++) out.set(src.subarray(h * p.count * width, (h + 1) * p.count * width), (h * count + row) * width);
      row += p.count;
    }
    return out;
  });
  return { dtype, count, kvHeads, tensors };
}

/** A KvStore in this process's memory (embedded mode and tests). */
export class MemoryKvStore implements KvStore {
  private readonly rows = new Map<string, Map<number, KvRows>>();

  async put(session: string, model: string, positions: readonly number[], rows: KvRows): Promise<void> {
    const key = `${session}\u0000${model}`;
    const held = this.rows.get(key) ?? new Map<number, KvRows>();
    this.rows.set(key, held);
    splitRows(rows).forEach((row, i) => held.set(positions[i]!, row));
  }

  async get(session: string, model: string, positions: readonly number[]): Promise<{ positions: number[]; rows: KvRows | undefined }> {
    const held = this.rows.get(`${session}\u0000${model}`);
    const found = positions.filter((p) => held?.has(p));
    return { positions: found, rows: joinRows(found.map((p) => held!.get(p)!)) };
  }

  async drop(session: string, model: string, positions?: readonly number[]): Promise<void> {
    const key = `${session}\u0000${model}`;
    if (!positions) this.rows.delete(key);
    else for (const p of positions) this.rows.get(key)?.delete(p);
  }

  /** Rows held in all (for leak checks and KV-use metrics). */
  size(): number {
    let n = 0;
    for (const m of this.rows.values()) n += m.size;
    return n;
  }
}
