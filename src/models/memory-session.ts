import type { ModelSpec } from './config.ts';
import { rowCount, type ForwardItem, type KvRows, type LogitsRows, type ModelSession, type StepResult } from './session.ts';
import { InvalidArgumentError, ModelRuntimeError, SequenceError } from '../errors.ts';
import { longestPrefix, RETAINED_TOKENS, RetainedPrefixes, reusableLimit, type PrefixCacheStats } from './prefix-cache.ts';

/**
 * An in-memory ModelSession: a deterministic n-gram model whose logits for the next token are a
 * pseudo-random function of the last `order` tokens and a seed. It keeps per-sequence "KV" (the
 * token history) with the same forward / truncate / release semantics as OrtModelSession, so the
 * engine's logic can be unit-tested quickly and with many samples. Two sessions with the same seed
 * are the same model; `sharpness` scales the logits (higher = more peaked).
 */
export interface MemoryModelOptions {
  readonly name: string;
  readonly vocabSize: number;
  readonly order: number;
  readonly seed: number;
  readonly sharpness?: number;
  readonly eosIds?: readonly number[];
  /** The context: a forward that would hold more tokens fails, as a real model's would. */
  readonly maxPositions?: number;
  /** Mix in another model's logits with this weight (0..1), to make drafters that resemble a target. */
  readonly resemble?: { readonly model: MemoryModelSession; readonly weight: number };
  /** Count prefix reuse as OrtModelSession does (SessionOptions.prefixCache; default true). */
  readonly prefixCache?: boolean;
  /** Released histories kept as prefix sources, as SessionOptions.prefixCacheTokens (default RETAINED_TOKENS). */
  readonly prefixCacheTokens?: number;
}

export class MemoryModelSession implements ModelSession {
  readonly spec: ModelSpec;
  readonly provider = 'memory';
  private readonly histories = new Map<string, number[]>();
  /** Sequences whose history is no token prefix at positions 0, 1, … (evicted, inserted, moved): no prefix source. */
  private readonly moved = new Set<string>();
  /** Forward calls made, for tests that count model work. */
  forwardCalls = 0;
  /**
   * The prefix reuse an OrtModelSession would make (prefix-cache.ts), counted only: this model
   * computes every token from its history either way. Within one forwardBatch call, the sequences
   * before an item count as sources with the tokens they just took (the runner's hold none yet).
   */
  readonly prefixCache: PrefixCacheStats = { hits: 0, reusedTokens: 0 };
  /** Released histories kept as prefix sources (as the runner keeps released KV). */
  private readonly retained: RetainedPrefixes<number[]>;

  constructor(private readonly options: MemoryModelOptions) {
    this.retained = new RetainedPrefixes(options.prefixCacheTokens ?? RETAINED_TOKENS);
    this.spec = {
      name: options.name,
      dir: '(memory)',
      onnxPath: '(memory)',
      tokenizerPath: '(memory)',
      layers: 1,
      kvHeads: 1,
      headDim: 1,
      vocabSize: options.vocabSize,
      eosIds: options.eosIds ?? [],
      maxPositions: options.maxPositions,
    };
  }

  /** Logits for the token following `context` (its last `order` tokens matter). */
  nextLogits(context: readonly number[]): Float32Array {
    const { vocabSize, order, seed, sharpness = 3, resemble } = this.options;
    let h = seed >>> 0;
    for (const t of context.slice(-order)) h = mix(h ^ (t + 0x9e3779b9));
    const out = new Float32Array(vocabSize);
    for (let i = 0; i < vocabSize; i++) out[i] = ((mix(h ^ Math.imul(i + 1, 0x85ebca6b)) >>> 8) / 2 ** 24 - 0.5) * sharpness;
    if (resemble) {
      const other = resemble.model.nextLogits(context);
      for (let i = 0; i < vocabSize; i++) out[i] = (1 - resemble.weight) * out[i]! + resemble.weight * other[i]!;
    }
    return out;
  }

  async forward(item: ForwardItem, rows: LogitsRows = 'all'): Promise<Float32Array> {
    return (await this.forwardBatch([item], rows))[0]!;
  }

  async forwardBatch(items: readonly ForwardItem[], rows: LogitsRows = 'all'): Promise<Float32Array[]> {
    return this.run(items, rows, true);
  }

  /** Forwards; `reuse`: count prefix reuse (the runner makes none in a step that attends, evicts or inserts). */
  private run(items: readonly ForwardItem[], rows: LogitsRows, reuse: boolean): Float32Array[] {
    this.forwardCalls++;
    return items.map((item) => {
      if (item.inputIds.length === 0) throw new InvalidArgumentError(`forward on ${item.seqId} with no tokens`);
      // an n-gram over token ids has no hidden state: no feature level runs over it
      if (item.returnHidden || item.hiddenStates) throw new ModelRuntimeError(`${this.spec.name} is an in-memory n-gram model: it has no features (hidden_states) to return or take`);
      const hist = this.histories.get(item.seqId) ?? [];
      this.histories.set(item.seqId, hist);
      if (item.keep !== undefined) {
        if (!Number.isInteger(item.keep) || item.keep < 0 || item.keep > hist.length) throw new SequenceError(`cannot keep ${item.keep} tokens of sequence ${item.seqId} of length ${hist.length}`);
        hist.length = item.keep;
        if (item.keep === 0) this.moved.delete(item.seqId);
      }
      const V = this.options.vocabSize;
      const max = this.options.maxPositions;
      if (max !== undefined && hist.length + item.inputIds.length > max) {
        throw new InvalidArgumentError(`sequence ${item.seqId} would hold ${hist.length + item.inputIds.length} tokens, more than the model's ${max} positions`);
      }
      const s = item.inputIds.length;
      const want = rowCount(rows, s);
      const start = hist.length;
      if (item.positionIds?.some((p, j) => p !== start + j)) this.moved.add(item.seqId);
      else if (reuse && start === 0 && (this.options.prefixCache ?? true)) this.countReuse(item, rows);
      const out = new Float32Array(want * V);
      item.inputIds.forEach((t, j) => {
        if (!Number.isInteger(t) || t < 0 || t >= V) throw new InvalidArgumentError(`token id ${t} outside the vocabulary of ${V}`);
        hist.push(t);
        if (j >= s - want) out.set(this.nextLogits(hist), (j - (s - want)) * V);
      });
      return out;
    });
  }

  private countReuse(item: ForwardItem, rows: LogitsRows): void {
    const sources = [...this.histories].filter(([id, h]) => id !== item.seqId && h.length > 0 && !this.moved.has(id));
    const hit = longestPrefix<unknown>(item.inputIds, [...sources, ...this.retained.sources()], reusableLimit(item.inputIds.length, rows));
    if (!hit) return;
    this.retained.used(hit.source as number[]);
    this.prefixCache.hits++;
    this.prefixCache.reusedTokens += hit.length;
  }

  /** This toy model attends uniformly to the tokens it can see. */
  async forwardAttention(item: ForwardItem, rows: LogitsRows = 'all'): Promise<{ logits: Float32Array; attention: Float32Array }> {
    const r = await this.step(item, rows, true);
    return { logits: r.logits, attention: r.attention! };
  }

  async step(item: ForwardItem, rows: LogitsRows, withAttention: boolean): Promise<StepResult> {
    if (item.keep !== undefined) await this.truncate(item.seqId, item.keep);
    const evicted = item.evict?.length ? await this.evict(item.seqId, item.evict, item.takeEvicted ?? false) : undefined;
    if (item.insert) await this.insert(item.seqId, item.insert);
    const plain = { seqId: item.seqId, inputIds: item.inputIds, positionIds: item.positionIds, returnHidden: item.returnHidden, hiddenStates: item.hiddenStates };
    const before = this.length(item.seqId);
    const logits = this.run([plain], rows, !withAttention && !evicted && !item.insert)[0]!;
    if (!withAttention) return evicted ? { logits, evicted } : { logits };
    const s = item.inputIds.length;
    const total = before + s;
    const attention = new Float32Array(s * total);
    for (let q = 0; q < s; q++) for (let k = 0; k <= before + q; k++) attention[q * total + k] = 1 / (before + q + 1);
    return evicted ? { logits, attention, evicted } : { logits, attention };
  }

  length(seqId: string): number {
    return this.histories.get(seqId)?.length ?? 0;
  }

  async truncate(seqId: string, length: number): Promise<void> {
    const hist = this.histories.get(seqId) ?? [];
    if (!Number.isInteger(length) || length < 0 || length > hist.length) {
      throw new SequenceError(`cannot truncate sequence ${seqId} of length ${hist.length} to ${length}`);
    }
    hist.length = length;
    if (length === 0) this.moved.delete(seqId);
  }

  /** The "KV" of this model is its token history: evicted rows are the evicted tokens. */
  async evict(seqId: string, indices: readonly number[], take = false): Promise<KvRows | undefined> {
    const hist = this.histories.get(seqId) ?? [];
    const gone = new Set(indices);
    if (gone.size !== indices.length || indices.some((i) => !Number.isInteger(i) || i < 0 || i >= hist.length)) {
      throw new SequenceError(`cannot evict rows [${indices.join(', ')}] from sequence ${seqId} of length ${hist.length}`);
    }
    const taken = indices.map((i) => hist[i]!);
    this.histories.set(seqId, hist.filter((_, i) => !gone.has(i)));
    if (gone.size === hist.length) this.moved.delete(seqId);
    else if (gone.size) this.moved.add(seqId);
    return take ? { dtype: 'float32', count: taken.length, kvHeads: 1, tensors: [Float32Array.from(taken)] } : undefined;
  }

  async insert(seqId: string, rows: KvRows): Promise<void> {
    if (rows.dtype !== 'float32') throw new InvalidArgumentError(`cannot insert ${rows.dtype} KV rows into ${seqId}: ${this.spec.name} keeps its KV as float32`);
    const hist = this.histories.get(seqId) ?? [];
    hist.push(...Array.from(rows.tensors[0] ?? [], (t) => Math.round(t)));
    this.histories.set(seqId, hist);
    if (rows.count) this.moved.add(seqId);
  }

  async release(seqId: string): Promise<void> {
    const hist = this.histories.get(seqId);
    if (hist && !this.moved.has(seqId) && (this.options.prefixCache ?? true) && this.retained.fits(hist.length)) this.retained.keep(hist, hist);
    this.histories.delete(seqId);
    this.moved.delete(seqId);
  }

  /** Sequences currently holding state (leak checks). */
  liveSequences(): number {
    return this.histories.size;
  }

  async close(): Promise<void> {
    this.histories.clear();
    this.moved.clear();
  }
}

/** A 32-bit integer hash (murmur3 finaliser). */
function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
