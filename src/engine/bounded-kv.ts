import { InvalidArgumentError } from '../errors.ts';
import { KvLedger, positionalScore, type KvBudget, type KvPolicyName } from '../kernels/kv-policy.ts';
import { AdoreController, ControllerTrack } from '../kernels/adore-controller.ts';
import { firstRows, MemoryKvStore, type KvStore } from '../models/kv-store.ts';
import { joinRows, rowCount, rowsInChunk, type DecodePlan, type KvRows, type LogitsRows, type ModelSession, type StepResult } from '../models/session.ts';

/** How a model's KV cache is bounded: the policy and its budget (SPEC §5; docs/adore.md). */
export interface KvPolicyConfig {
  readonly policy: KvPolicyName;
  readonly budget: KvBudget;
  /** ADORE's controller (policy adore): scores every token each step. */
  readonly controller?: AdoreController;
  /** Where released KV is spilled for rebuilds; in memory when rebuilding and none is given. */
  readonly store?: KvStore;
  /**
   * Most tokens of a long prompt fed in one pass (default: half the free budget). Every prompt token
   * attends to at least `budget - sinks - recent - prefillChunk` earlier ones, so a smaller chunk
   * comes closer to the policy decoding token by token, at the cost of more passes.
   */
  readonly prefillChunk?: number;
  /**
   * Tokens released at once when the cache is full (default 1: one per step, the policy as stated).
   * With s > 1 a full cache releases its s lowest-scored tokens together, then fills up again over
   * the next steps: it holds between m - s and m tokens and the runner compacts its cache once per s
   * steps instead of every step. Rebuilds happen at those release steps, up to s × R of them.
   */
  readonly releaseBatch?: number;
}

/** Every policy; adore also needs the family's controller. */
export const RUNNABLE_KV_POLICIES: readonly KvPolicyName[] = ['full', 'window', 'streaming', 'h2o', 'adore'];

/**
 * Scores every token of a sequence for the current step (ADORE's controller): higher = keep. Asked
 * after each forward for all positions, resident and released, so released tokens can win back
 * their place (rebuild).
 */
export interface KvScorer {
  score(positions: readonly number[], tokens: readonly number[], newest: number): Promise<ArrayLike<number>>;
}

/** No bound: the whole sequence stays cached. */
export const FULL_CACHE: KvPolicyConfig = { policy: 'full', budget: { budget: 1, sinks: 0, recent: 0, rebuild: 0 } };

export function checkKvPolicy(cfg: KvPolicyConfig, scorer?: KvScorer): void {
  if (cfg.policy === 'adore' && !scorer && !cfg.controller) {
    throw new InvalidArgumentError('KV policy "adore" needs the ADORE controller, which this model family does not ship yet: use window, streaming or h2o');
  }
  if (!RUNNABLE_KV_POLICIES.includes(cfg.policy)) {
    throw new InvalidArgumentError(`KV policy "${cfg.policy}" is not available yet: use one of ${RUNNABLE_KV_POLICIES.join(', ')}`);
  }
  if (cfg.policy === 'full') return;
  // Both count tokens that must fit beside the protected ones.
  const free = cfg.budget.budget - cfg.budget.sinks - cfg.budget.recent;
  for (const [what, n] of [['prefill chunk', cfg.prefillChunk], ['release batch', cfg.releaseBatch]] as const) {
    if (n !== undefined && (!Number.isInteger(n) || n < 1 || n > free)) {
      throw new InvalidArgumentError(`${what} must be an integer from 1 to the free budget (${free} = budget - sinks - recent), got ${n}`);
    }
  }
}

/**
 * One sequence of a model session whose cache holds at most `budget.budget` tokens. Tokens are fed
 * in chunks small enough that the cache never exceeds the budget; before each chunk the policy
 * releases the lowest-scored tokens to make room. Decoding one token at a time this is exactly the
 * policy (a sliding window sees exactly the last m tokens); a long prompt is prefilled in chunks. Released KV goes to `store` when one is given (so a
 * rebuild can fetch it back exactly), else it is dropped. Positions are explicit, so RoPE sees every
 * token at its original position whatever was released before it.
 */
export class BoundedSequence {
  private readonly ledger: KvLedger | undefined;
  /** Position of the next token (the sequence's length, released tokens included). */
  private next = 0;
  /** Every token fed, by position (the scorer sees them). */
  private readonly tokens: number[] = [];
  releases = 0;
  rebuilds = 0;
  /** Rebuilds whose KV the store no longer held (left released). */
  misses = 0;

  constructor(
    private readonly session: ModelSession,
    readonly seqId: string,
    private readonly cfg: KvPolicyConfig,
    private readonly store: KvStore | undefined = cfg.store ?? (cfg.budget.rebuild > 0 && cfg.policy !== 'full' ? new MemoryKvStore() : undefined),
    private readonly scorer: KvScorer | undefined = cfg.policy === 'adore' && cfg.controller ? new ControllerTrack(cfg.controller) : undefined,
  ) {
    checkKvPolicy(cfg, scorer);
    this.ledger = cfg.policy === 'full' ? undefined : new KvLedger(cfg.budget);
  }

  /** Tokens resident in the cache. */
  get resident(): number {
    return this.ledger ? this.ledger.size : this.next;
  }

  /** The sequence's length in positions (released tokens included). */
  get length(): number {
    return this.next;
  }

  /** Refuses feeding no tokens, or at a position other than 0..length. */
  private checkFeed(tokens: readonly number[], at: number): void {
    if (tokens.length === 0) throw new InvalidArgumentError(`feed on ${this.seqId} with no tokens`);
    if (!Number.isInteger(at) || at < 0 || at > this.next) throw new InvalidArgumentError(`cannot feed ${this.seqId} at position ${at}: it has ${this.next}`);
  }

  /** Whether `decode` runs in the runner: a full cache over a session with ModelSession.decode. */
  get decodes(): boolean {
    return !this.ledger && this.session.decode !== undefined;
  }

  /**
   * Feeds tokens as `feed` does (rolling back to `at` first), then lets the runner choose up to
   * plan.steps tokens (ModelSession.decode); returns them, all but the last fed. Only where
   * `decodes` holds; throws InvalidArgumentError elsewhere.
   */
  async decode(tokens: readonly number[], plan: DecodePlan, at = this.next): Promise<number[]> {
    if (!this.decodes) throw new InvalidArgumentError(`${this.seqId}: multi-step decoding needs a full KV cache over a session that decodes`);
    this.checkFeed(tokens, at);
    const keep = at < this.next ? at : undefined;
    // on failure the runner leaves the sequence at `at` too (ModelSession.decode)
    this.next = at;
    this.tokens.length = at;
    const chosen = await this.session.decode!({ seqId: this.seqId, inputIds: tokens, positionIds: tokens.map((_, j) => at + j), keep }, plan);
    this.tokens.push(...tokens, ...chosen.slice(0, -1));
    this.next = this.tokens.length;
    return chosen;
  }

  /**
   * Feeds tokens at positions at, at+1, … (default: after the last one); feeding at an earlier
   * position first rolls the sequence back there (rejected drafts). Returns the logits of the last
   * token ('last'), of each ('all') or of the last n (n).
   */
  async feed(tokens: readonly number[], rows: LogitsRows = 'last', at = this.next): Promise<Float32Array> {
    this.checkFeed(tokens, at);
    // Rolling back rides on the next call to the runner (no extra round trip): a full cache keeps its
    // first `at` rows; a bounded one evicts the rows of the dropped positions wherever they sit
    // (rebuilt rows of older positions sit after newer ones).
    let keep: number | undefined;
    let stale: readonly number[] = [];
    if (at < this.next) {
      if (this.ledger) {
        const dropped = this.ledger.rollback(at);
        stale = dropped.rows;
        if (dropped.released.length) await this.store?.drop(this.seqId, this.session.spec.name, dropped.released);
      } else {
        keep = at;
      }
      this.next = at;
      this.tokens.length = at;
    }
    if (!this.ledger) {
      const positionIds = tokens.map((_, j) => this.next + j);
      this.next += tokens.length;
      this.tokens.push(...tokens);
      return this.session.forward({ seqId: this.seqId, inputIds: tokens, positionIds, keep }, rows);
    }
    // Prefill goes in chunks (default half the free budget, so every token attends to at least the other half).
    const { budget, sinks, recent } = this.cfg.budget;
    const chunk = this.cfg.prefillChunk ?? Math.max(1, Math.floor((budget - sinks - recent) / 2));
    const wanted = rowCount(rows, tokens.length);
    const parts: Float32Array[] = [];
    for (let i = 0; i < tokens.length; i += chunk) {
      const piece = tokens.slice(i, i + chunk);
      // Releases and rebuilds ride on the same runner call as the tokens (and any rollback).
      const room = await this.makeRoom(piece.length, stale);
      stale = [];
      const positions = piece.map((_, j) => this.next + j);
      const item = { seqId: this.seqId, inputIds: piece, positionIds: positions, ...room.item };
      const needed = rowsInChunk(i, i + piece.length, tokens.length, wanted);
      const want = needed > 0 ? needed : 'last';
      const h2o = this.cfg.policy === 'h2o';
      const keys = h2o ? [...this.ledger.order, ...positions] : [];
      const running = this.session.step(item, want, h2o);
      running.catch(() => undefined); // awaited below; this only keeps a failure from counting as unhandled meanwhile
      // The controller reads token ids only, so it scores this step on this thread while the model
      // runs it: on a machine with a spare core (or a GPU) ADORE's scoring costs no decode time.
      const fed = this.tokens.length;
      this.tokens.push(...piece);
      let scores: ArrayLike<number> | undefined;
      let r: StepResult;
      try {
        if (this.scorer) {
          // The order rescore() takes once the new tokens are appended: resident, the new ones, then released.
          const all = [...this.ledger.order, ...positions, ...this.ledger.released.keys()];
          scores = await this.scorer.score(all, this.tokens, positions.at(-1)!);
        }
        r = await running;
      } catch (err) {
        this.tokens.length = fed;
        await running.catch(() => undefined);
        throw err;
      }
      if (room.spill.length && r.evicted) await this.store!.put(this.seqId, this.session.spec.name, room.spill, firstRows(r.evicted, room.spill.length));
      this.ledger.append(positions);
      if (h2o) {
        // Heavy hitters: every cached token's score is the attention it has received per query.
        const received = new Float64Array(keys.length);
        for (let q = 0; q < piece.length; q++) for (let j = 0; j < keys.length; j++) received[j]! += r.attention![q * keys.length + j]!;
        this.ledger.attend(keys, received, this.next, piece.length);
      } else if (scores) {
        this.ledger.rescore(scores);
      } else {
        this.ledger.score(positions, positions.map((p) => positionalScore(this.cfg.policy, p)));
      }
      this.next += piece.length;
      if (needed > 0) parts.push(r.logits);
    }
    return joinRows(parts);
  }

  /**
   * Plans room for `incoming` tokens: the lowest-scored tokens to release, and released tokens that
   * now outscore resident ones to bring back (their exact KV, fetched from the store). The ledger is
   * updated at once; the returned `item` fields make the runner do the same in the next call, and
   * `spill` names the positions whose evicted rows go to the store: the first rows evicted. `stale`
   * are rows (ascending) the runner still holds for positions the ledger has rolled back; they are
   * evicted in the same call, after the released ones.
   */
  private async makeRoom(incoming: number, stale: readonly number[]): Promise<{ item: { evict?: number[]; takeEvicted?: boolean; insert?: KvRows }; spill: number[] }> {
    const ledger = this.ledger!;
    const none = { item: stale.length ? { evict: [...stale] } : {}, spill: [] };
    const { budget, rebuild } = ledger.budget;
    const batch = this.cfg.releaseBatch ?? 1;
    const full = ledger.size + incoming > budget;
    if (!full && (batch > 1 || rebuild === 0 || ledger.released.size === 0)) return none;
    // The newest resident token stays protected by the recent window while the next ones arrive; a
    // batched release makes room for batch - 1 more tokens than this step needs, and considers the
    // rebuilds of the batch's steps.
    const plan = ledger.plan(this.next - 1, budget - incoming - (full ? batch - 1 : 0), rebuild * batch);
    if (plan.release.length === 0 && plan.rebuild.length === 0) return none;
    const model = this.session.spec.name;
    // The ledger no longer counts the stale rows; the runner still holds them.
    const evict = [...ledger.indicesOf(plan.release).map((row) => rowBefore(row, stale)), ...stale];
    let insert: KvRows | undefined;
    let missed = new Set<number>();
    if (plan.rebuild.length) {
      const back = await this.store!.get(this.seqId, model, plan.rebuild);
      insert = back.rows;
      await this.store!.drop(this.seqId, model, back.positions);
      missed = new Set(plan.rebuild.filter((p) => !back.positions.includes(p)));
      this.rebuilds += back.positions.length;
      this.misses += missed.size;
    }
    // Rebuilt rows are appended in plan order, which is the order apply() appends them to the ledger.
    ledger.apply({ release: plan.release, rebuild: plan.rebuild.filter((p) => !missed.has(p)) }, missed);
    this.releases += plan.release.length;
    const spill = this.store ? plan.release : [];
    return { item: { ...(evict.length ? { evict, takeEvicted: spill.length > 0 } : {}), ...(insert ? { insert } : {}) }, spill };
  }

  /** Positions resident in the cache, in the runner's row order. */
  get residentPositions(): readonly number[] {
    return this.ledger ? this.ledger.order : Array.from({ length: this.next }, (_, i) => i);
  }

  async close(): Promise<void> {
    await this.session.release(this.seqId).catch(() => undefined);
    await this.store?.drop(this.seqId, this.session.spec.name);
  }
}

/** The row that index `row` of a cache names, counted before the rows `gone` (ascending) leave it. */
function rowBefore(row: number, gone: readonly number[]): number {
  for (const g of gone) {
    if (g > row) break;
    row++;
  }
  return row;
}
