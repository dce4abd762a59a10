import { Ewma, LinearCost } from '../kernels/cost-model.ts';
import { InvalidArgumentError } from '../errors.ts';
import { drawToken, PositionNoise } from '../kernels/noise.ts';
import { decodePlanError, type DecodePlan, type ForwardItem, type KvRows, type LogitsRows, type ModelSession, type ServiceLoad, type StepResult } from './session.ts';

/** How a BatchingSession groups forwards of different sequences into one pass. */
export interface BatchingOptions {
  /**
   * Longest a forward waits (ms) for the forwards of other sequences active on the model to join
   * its pass. A forward never waits when every active sequence is already queued or when it is the
   * only active one, and forwards queued while a pass runs go together in the next one (continuous
   * batching), so the window only matters when the model is idle. 0 = no waiting.
   */
  readonly windowMs?: number;
  /** Most sequences in one pass. 1 switches batching off. */
  readonly maxBatch?: number;
  /** Most new tokens in one pass (bounds activation memory); a single larger forward still runs alone. */
  readonly maxTokens?: number;
  /** A sequence counts as active for this long after its last forward (ms). */
  readonly activeMs?: number;
  /**
   * Longest a lone sequence's multi-step call (ModelSession.decode) should run, in ms, going by the
   * measured time of a step: a request that arrives meanwhile waits for it, so this bounds that wait
   * and the gaps between a stream's groups of tokens (a call makes at least one step, however long).
   * 0 = one step per call.
   */
  readonly multiStepMs?: number;
}

export const DEFAULT_BATCHING: Required<BatchingOptions> = { windowMs: 2, maxBatch: 16, maxTokens: 1024, activeMs: 1000, multiStepMs: 10 };

/** A batched pass must cost less than this fraction of single passes per sequence to be used. */
const PAYS = 0.9;
/** While batching does not pay, one pass in this many is batched to measure again. */
const PROBE_EVERY = 64;
/** A longer pause between passes means no one was waiting (not counted in a cycle). */
const CYCLE_IDLE_MS = 50;
/** Passes of at most this many new tokens per sequence are decode steps (prefills are not compared). */
const DECODE_TOKENS = 16;

interface Pending {
  readonly item: ForwardItem;
  readonly rows: LogitsRows;
  readonly since: number;
  readonly resolve: (logits: Float32Array) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * A ModelSession that runs the single-sequence forwards of many sequences (the reviews and
 * proposals of many concurrent requests) as one batched pass of the session below it (padded
 * and masked per sequence; see ort-worker.ts). Each sequence gets exactly the logits it would get
 * alone, up to float rounding. Calls that evict or insert KV rows (bounded caches) and every other
 * operation pass straight through. When a batched pass fails, its forwards are retried one by one,
 * so one bad request fails alone.
 */
export class BatchingSession implements ModelSession {
  private readonly options: Required<BatchingOptions>;
  private readonly pending: Pending[] = [];
  private readonly active = new Map<string, number>();
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly cost = new LinearCost(0.98, 'forward');
  private readonly occupancy = new Ewma(0.2, 1);
  /** ms per sequence of the cycles of decode-sized passes (see timed) over one sequence and over several. */
  private readonly perSequence = { single: new Ewma(0.1, NaN), batched: new Ewma(0.1, NaN) };
  private passesSinceProbe = 0;
  /** ms per step of the lone sequence `stepSeq`'s multi-step calls (their round trip included), which sizes its next one. */
  private stepMs = new Ewma(0.2, NaN);
  private stepSeq: string | undefined;
  private last: { end: number; sequences: number; ms: number; decode: boolean } | undefined;
  /** Passes run and sequences served (tests, metrics). */
  readonly counters = { passes: 0, forwards: 0, largestBatch: 0 };

  /**
   * ModelSession.decode, where the session below has it: several steps in one call to it while the
   * sequence is the only one active on the model (nothing else queued or running), so a lone
   * request decodes without a round trip per token, as many as fit in BatchingOptions.multiStepMs
   * by the measured time of a step (at least one, at most the plan's); otherwise one token, from a
   * forward that batches with the others and the same draw (drawToken). A request arriving during a
   * lone sequence's call waits for it: by design about max(multiStepMs, one step), the step time
   * being the last ones measured for that sequence (a sequence's first call makes one step).
   */
  readonly decode?: (item: ForwardItem, plan: DecodePlan) => Promise<number[]>;

  constructor(
    private readonly inner: ModelSession,
    options: BatchingOptions = {},
  ) {
    this.options = { ...DEFAULT_BATCHING, ...options };
    if (inner.decode) this.decode = (item, plan) => this.decodeLone(item, plan);
  }

  private async decodeLone(item: ForwardItem, plan: DecodePlan): Promise<number[]> {
    const now = performance.now();
    for (const [id, seen] of this.active) if (now - seen > this.options.activeMs) this.active.delete(id);
    const alone = !this.running && this.pending.length === 0 && [...this.active.keys()].every((id) => id === item.seqId);
    if (!alone || this.options.maxBatch <= 1) {
      // checked before the forward grows the KV, as the worker checks its own calls
      const bad = decodePlanError(plan);
      if (bad) throw new InvalidArgumentError(bad);
      const logits = await this.forward(item, 'last');
      const noise = plan.sampling.temperature > 0 ? new PositionNoise(plan.noiseSeed!) : undefined;
      return [drawToken(logits, plan.sampling, { tokens: plan.tokens, length: plan.tokens.length, promptLength: plan.promptLength }, noise)];
    }
    this.active.set(item.seqId, now);
    this.running = true;
    // a step's time depends on the sequence's context: another sequence starts from one step again
    if (this.stepSeq !== item.seqId) this.stepMs = new Ewma(0.2, NaN);
    this.stepSeq = item.seqId;
    try {
      // a first call, with no step measured yet, makes one step
      const stepMs = this.stepMs.value;
      const steps = stepMs > 0 ? Math.max(1, Math.min(plan.steps, Math.floor(this.options.multiStepMs / stepMs))) : 1;
      const t0 = performance.now();
      const chosen = await this.inner.decode!(item, { ...plan, steps });
      // a call that fed a prompt says nothing about a step's time
      if (item.inputIds.length <= DECODE_TOKENS) this.stepMs.add((performance.now() - t0) / chosen.length);
      this.counters.passes += chosen.length;
      this.counters.forwards += chosen.length;
      this.occupancy.add(1);
      return chosen;
    } finally {
      // a multi-step call is no one pass: the idle-time accounting of batched cycles starts again
      this.last = undefined;
      this.active.set(item.seqId, performance.now());
      this.running = false;
      this.pump();
    }
  }

  get spec() {
    return this.inner.spec;
  }

  get provider() {
    return this.inner.provider;
  }

  /**
   * Whether batched passes cost less per sequence than single ones, cycle for cycle (see timed), as
   * measured (true until both have been measured). Where they do not (a model whose per-sequence
   * cost is its KV traffic, and few cores, as on this project's CPU machines), forwards run one at a
   * time, with a batched pass now and then to measure again.
   */
  get batchingPays(): boolean {
    const single = this.perSequence.single.value;
    const batched = this.perSequence.batched.value;
    return !(single > 0 && batched > 0) || batched < PAYS * single;
  }

  /** The model's recent load (see ServiceLoad). */
  load(): ServiceLoad {
    const c = this.cost.coefficients();
    return { occupancy: this.occupancy.value, fixedMs: c.fixed, tokenMs: c.perToken };
  }

  forward(item: ForwardItem, rows: LogitsRows = 'all'): Promise<Float32Array> {
    if (item.evict?.length || item.insert || this.options.maxBatch <= 1) return this.timed([item], rows).then((r) => r[0]!);
    this.active.set(item.seqId, performance.now());
    return new Promise((resolve, reject) => {
      this.pending.push({ item, rows, since: performance.now(), resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    if (this.running || this.pending.length === 0) return;
    const now = performance.now();
    for (const [id, seen] of this.active) if (now - seen > this.options.activeMs) this.active.delete(id);
    const queued = new Set(this.pending.map((p) => p.item.seqId));
    const everyone = [...this.active.keys()].every((id) => queued.has(id));
    const waited = now - this.pending[0]!.since;
    const full = queued.size >= this.options.maxBatch;
    if (!(everyone || full || waited >= this.options.windowMs || !this.batchingPays)) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.pump();
      }, Math.max(0, this.options.windowMs - waited));
      return;
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.take();
    this.running = true;
    void this.run(batch).finally(() => {
      this.running = false;
      this.pump();
    });
  }

  /** The oldest forwards of distinct sequences with the first one's row mode, within the limits. */
  private take(): Pending[] {
    const rows = this.pending[0]!.rows;
    const batch: Pending[] = [];
    const seen = new Set<string>();
    let tokens = 0;
    const probe = ++this.passesSinceProbe >= PROBE_EVERY;
    // new tokens are right-padded to the longest: a prefill runs alone, not with every decode padded to its length
    const limit = (this.batchingPays || probe) && this.pending[0]!.item.inputIds.length <= DECODE_TOKENS ? this.options.maxBatch : 1;
    for (let i = 0; i < this.pending.length && batch.length < limit; i++) {
      const p = this.pending[i]!;
      if (p.rows !== rows || seen.has(p.item.seqId) || (batch.length && p.item.inputIds.length > DECODE_TOKENS)) continue;
      if (batch.length && tokens + p.item.inputIds.length > this.options.maxTokens) continue;
      batch.push(p);
      if (batch.length > 1) this.passesSinceProbe = 0;
      seen.add(p.item.seqId);
      tokens += p.item.inputIds.length;
      this.pending.splice(i--, 1);
    }
    return batch;
  }

  private async run(batch: Pending[]): Promise<void> {
    try {
      const out = await this.timed(batch.map((p) => p.item), batch[0]!.rows);
      batch.forEach((p, i) => p.resolve(out[i]!));
    } catch (err) {
      if (batch.length === 1) {
        batch[0]!.reject(err);
        return;
      }
      for (const p of batch) await this.timed([p.item], p.rows).then((r) => p.resolve(r[0]!), p.reject);
    }
  }

  private async timed(items: readonly ForwardItem[], rows: LogitsRows): Promise<Float32Array[]> {
    const t0 = performance.now();
    // The last pass's cycle per sequence: its run time plus the time the model then sat idle until
    // the next pass. Passes one sequence at a time overlap a session's own work (acceptance,
    // sampling, the network) with other sessions' passes; a batched pass hands all its sessions
    // back at once and waits for them, and that wait is part of what batching costs.
    const last = this.last;
    if (last?.decode && t0 - last.end < CYCLE_IDLE_MS) (last.sequences === 1 ? this.perSequence.single : this.perSequence.batched).add((last.ms + t0 - last.end) / last.sequences);
    const out = await this.inner.forwardBatch(items, rows);
    const end = performance.now();
    const ms = end - t0;
    const tokens = items.reduce((a, it) => a + it.inputIds.length, 0);
    // prefills say nothing about the cost of decoding and reviewing
    const decode = tokens <= DECODE_TOKENS * items.length;
    if (decode) this.cost.add(tokens, ms);
    this.last = { end, sequences: items.length, ms, decode };
    this.occupancy.add(items.length);
    this.counters.passes++;
    this.counters.forwards += items.length;
    this.counters.largestBatch = Math.max(this.counters.largestBatch, items.length);
    return out;
  }

  forwardAttention(item: ForwardItem, rows?: LogitsRows): Promise<{ logits: Float32Array; attention: Float32Array }> {
    return this.inner.forwardAttention(item, rows);
  }

  step(item: ForwardItem, rows: LogitsRows, attention: boolean): Promise<StepResult> {
    return this.inner.step(item, rows, attention);
  }

  forwardBatch(items: readonly ForwardItem[], rows?: LogitsRows): Promise<Float32Array[]> {
    return this.inner.forwardBatch(items, rows);
  }

  length(seqId: string): number {
    return this.inner.length(seqId);
  }

  truncate(seqId: string, length: number): Promise<void> {
    return this.inner.truncate(seqId, length);
  }

  evict(seqId: string, indices: readonly number[], take?: boolean): Promise<KvRows | undefined> {
    return this.inner.evict(seqId, indices, take);
  }

  insert(seqId: string, rows: KvRows): Promise<void> {
    return this.inner.insert(seqId, rows);
  }

  release(seqId: string): Promise<void> {
    this.active.delete(seqId);
    return this.inner.release(seqId);
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    for (const p of this.pending.splice(0)) p.reject(new Error(`${this.spec.name}: session closed`));
    await this.inner.close();
  }
}
