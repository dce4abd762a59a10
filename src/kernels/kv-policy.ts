/**
 * Which cached tokens a bounded KV cache keeps: the decision half of ADORE and of the baselines it
 * is compared with (docs/adore.md). Pure bookkeeping over token positions; the runner applies the
 * decisions (evicts rows, spills them to a KvStore, brings them back).
 *
 * Every policy is one rule: after a step, the cache holds the `budget` highest-scored tokens among
 * those resident and up to `rebuild` released candidates, never dropping protected tokens (the first
 * `sinks` positions and the `recent` newest). Policies differ only in the score:
 *   window     newer is better (score = position): a sliding window.
 *   streaming  the same, with sink tokens protected (StreamingLLM).
 *   h2o        attention each token has received per query since it arrived (Heavy-Hitter Oracle,
 *              with the accumulated score divided by the queries that saw the token: a plain sum
 *              grows with a token's age and keeps the oldest tokens instead of the heavy hitters).
 *   adore      the learned controller's importance for the current step; released tokens keep
 *              being scored, and the top `rebuild` of them re-enter when they beat a resident.
 * With no rebuild candidates this releases exactly one token per step once over budget (one
 * decision for all layers); each rebuilt token costs one more release.
 */
import { InvalidArgumentError } from '../errors.ts';

export const KV_POLICIES = ['full', 'window', 'streaming', 'h2o', 'adore'] as const;
export type KvPolicyName = (typeof KV_POLICIES)[number];

export interface KvBudget {
  /** Most tokens resident at once (m). */
  readonly budget: number;
  /** The first `sinks` positions are never released. */
  readonly sinks: number;
  /** The `recent` newest positions are never released. */
  readonly recent: number;
  /** Most released tokens brought back per step (R); 0 disables rebuild. */
  readonly rebuild: number;
}

export function checkBudget(b: KvBudget): void {
  const int = (v: number, min: number) => Number.isInteger(v) && v >= min;
  if (!int(b.budget, 1)) throw new InvalidArgumentError(`KV budget must be a positive integer, got ${b.budget}`);
  if (!int(b.sinks, 0) || !int(b.recent, 0) || !int(b.rebuild, 0)) {
    throw new InvalidArgumentError(`sinks, recent and rebuild must be integers >= 0, got ${b.sinks}, ${b.recent}, ${b.rebuild}`);
  }
  if (b.sinks + b.recent >= b.budget) {
    throw new InvalidArgumentError(`sinks (${b.sinks}) + recent window (${b.recent}) must leave room in a budget of ${b.budget}`);
  }
}

/** What one step changes: positions to release (evict, maybe spill) and released positions to bring back. */
export interface KvStepPlan {
  readonly release: number[];
  readonly rebuild: number[];
}

/**
 * Decides one step. `resident` and `released` map position -> score (higher = keep); `newest` is the
 * position of the token just appended (it and the `recent - 1` before it are protected).
 * Ties are broken toward keeping the newer token, so equal scores behave like a window.
 */
export function planStep(b: KvBudget, resident: ReadonlyMap<number, number>, released: ReadonlyMap<number, number>, newest: number): KvStepPlan {
  const candidates = b.rebuild > 0 ? topByScore(released, b.rebuild) : [];
  if (resident.size <= b.budget && candidates.length === 0) return { release: [], rebuild: [] };
  const isProtected = (p: number) => p < b.sinks || p > newest - b.recent;
  const pool: [number, number][] = [];
  let keptProtected = 0;
  for (const [p, s] of resident) {
    if (isProtected(p)) keptProtected++;
    else pool.push([p, s]);
  }
  for (const p of candidates) pool.push([p, released.get(p)!]);
  const room = Math.max(0, b.budget - keptProtected);
  // The pool's `room` best stay; the rest leave. Usually a step drops one token (plus one per
  // rebuild), so select the few worst rather than sorting the whole cache every step.
  const out = new Set(bestOf(pool, pool.length - room, byScoreAsc));
  const release = pool.filter(([p]) => out.has(p) && resident.has(p)).map(([p]) => p);
  const rebuild = candidates.filter((p) => !out.has(p));
  return { release: release.sort((x, y) => x - y), rebuild: rebuild.sort((x, y) => x - y) };
}

/** Better first: higher score, then (ties) the newer position. A total order: positions are unique. */
const byScoreDesc = ([pa, sa]: [number, number], [pb, sb]: [number, number]) => sb - sa || pb - pa;
const byScoreAsc = (a: [number, number], b: [number, number]) => byScoreDesc(b, a);

/** The n first entries in `order`: one pass keeping a short sorted list (n small), or a sort when n is not. */
function bestOf(entries: Iterable<[number, number]>, n: number, order: (a: [number, number], b: [number, number]) => number): number[] {
  if (n <= 0) return [];
  if (n > 16) return [...entries].sort(order).slice(0, n).map(([p]) => p);
  const top: [number, number][] = [];
  for (const e of entries) {
    if (top.length === n && order(e, top[n - 1]!) >= 0) continue;
    let i = top.length;
    while (i > 0 && order(e, top[i - 1]!) < 0) i--;
    top.splice(i, 0, e);
    if (top.length > n) top.pop();
  }
  return top.map(([p]) => p);
}

/** The n best entries in byScoreDesc order (n is the rebuild count, small). */
export function topByScore(scores: ReadonlyMap<number, number>, n: number): number[] {
  return bestOf(scores, n, byScoreDesc);
}

/**
 * The state of one sequence's bounded cache: which positions are resident (in cache order, as the
 * runner holds them), which are released, and each token's current score.
 */
export class KvLedger {
  /** Resident positions in cache order (the runner's row order). */
  readonly order: number[] = [];
  readonly released = new Map<number, number>();
  private readonly scores = new Map<number, number>();

  constructor(readonly budget: KvBudget) {
    checkBudget(budget);
  }

  get size(): number {
    return this.order.length;
  }

  /** Records tokens appended to the cache (cache order = call order). */
  append(positions: readonly number[], score = 0): void {
    for (const p of positions) {
      if (this.scores.has(p) || this.released.has(p)) throw new InvalidArgumentError(`position ${p} is already in the ledger`);
      this.order.push(p);
      this.scores.set(p, score);
    }
  }

  /** Replaces every score at once, `values` for resident positions in cache order, then released ones in the map's order (ADORE rescores all each step). */
  rescore(values: ArrayLike<number>): void {
    if (values.length !== this.order.length + this.released.size) throw new InvalidArgumentError(`rescore needs ${this.order.length + this.released.size} scores, got ${values.length}`);
    let i = 0;
    for (const p of this.order) this.scores.set(p, values[i++]!);
    for (const p of this.released.keys()) this.released.set(p, values[i++]!);
  }

  /** Sets scores (resident or released). */
  score(positions: readonly number[], values: ArrayLike<number>): void {
    positions.forEach((p, i) => {
      const v = values[i]!;
      if (this.released.has(p)) this.released.set(p, v);
      else if (this.scores.has(p)) this.scores.set(p, v);
    });
  }

  /**
   * H2O's score after one step: the attention each resident token has received per query since it
   * arrived (a running mean). `received[j]` is the attention position `keys[j]` received from the
   * step's `queries` new tokens, summed over them (and over heads and layers); the new tokens are at
   * positions `next`, `next + 1`, …, and every token fed after a resident one attends to it, so
   * position p has been seen by max(0, next - p) queries before the step and next + queries - p after.
   */
  attend(keys: readonly number[], received: ArrayLike<number>, next: number, queries: number): void {
    keys.forEach((p, j) => {
      const before = this.scores.get(p);
      if (before === undefined) return;
      const seen = Math.max(0, next - p);
      this.scores.set(p, (before * seen + received[j]!) / (next + queries - p));
    });
  }

  /**
   * The step's plan for the newest position; the caller applies it to the runner, then calls `apply`.
   * `budget` overrides the resident limit for this step (room for a chunk about to be appended),
   * `rebuild` the most released tokens brought back (a batched release catches up on several steps).
   */
  plan(newest: number, budget = this.budget.budget, rebuild = this.budget.rebuild): KvStepPlan {
    return planStep({ ...this.budget, budget, rebuild }, this.scores, this.released, newest);
  }

  /** Cache indices (row numbers) of resident positions, in the order given. */
  indicesOf(positions: readonly number[]): number[] {
    // A step releases a few tokens: a scan each is cheaper than indexing the whole cache.
    const at = positions.length > 8 ? new Map(this.order.map((p, i) => [p, i])) : undefined;
    return positions.map((p) => {
      const i = at ? at.get(p) : this.order.indexOf(p);
      if (i === undefined || i < 0) throw new InvalidArgumentError(`position ${p} is not resident`);
      return i;
    });
  }

  /**
   * Applies a plan: released positions leave the cache order (the runner compacts the same way),
   * rebuilt ones are appended at the end in the order given. `missed` rebuilds (KV no longer in
   * the store) stay released.
   */
  apply(plan: KvStepPlan, missed: ReadonlySet<number> = new Set()): void {
    const gone = new Set(plan.release);
    for (const p of plan.release) {
      this.released.set(p, this.scores.get(p)!);
      this.scores.delete(p);
    }
    const kept = this.order.filter((p) => !gone.has(p));
    this.order.length = 0;
    this.order.push(...kept);
    for (const p of plan.rebuild) {
      if (missed.has(p)) continue;
      this.scores.set(p, this.released.get(p)!);
      this.released.delete(p);
      this.order.push(p);
    }
  }

  /**
   * Drops every position >= `from` (a rolled-back draft), resident or released. Returns the cache
   * rows the dropped resident positions held (ascending; the runner must evict exactly those, since
   * rebuilt rows of older positions may sit after them) and the dropped released positions (whose
   * spilled KV is now stale).
   */
  rollback(from: number): { rows: number[]; released: number[] } {
    const rows: number[] = [];
    const kept: number[] = [];
    this.order.forEach((p, i) => {
      if (p < from) kept.push(p);
      else {
        rows.push(i);
        this.scores.delete(p);
      }
    });
    this.order.length = 0;
    this.order.push(...kept);
    const released = [...this.released.keys()].filter((p) => p >= from);
    for (const p of released) this.released.delete(p);
    return { rows, released };
  }
}

/** The score a baseline policy gives a token at `position` (h2o and adore are scored by the caller). */
export function positionalScore(policy: KvPolicyName, position: number): number {
  return policy === 'window' || policy === 'streaming' ? position : 0;
}
