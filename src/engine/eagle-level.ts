import { InvalidArgumentError } from '../errors.ts';
import type { Rng } from '../kernels/rng.ts';
import { distribution, sample, type SamplingParams } from '../kernels/sampling.ts';
import { drawToken } from '../kernels/noise.ts';
import type { ModelSpec } from '../models/config.ts';
import type { ForwardItem, KvRows, LogitsRows, ModelSession, ServiceLoad, StepResult } from '../models/session.ts';
import { commonPrefix, newStats, type Block, type CascadeLevel } from './levels.ts';
import type { ReviewOutcome } from '../kernels/acceptance.ts';

/**
 * The target's features for one request, as its ModelLevel computes them: a ModelSession decorator
 * that asks the target for its `hidden_states` (ForwardItem.returnHidden) on every forward of the
 * request's sequence `seqId` and keeps them by position, mirrored with the tokens that produced them
 * (a rollback, `keep`, drops the rows after it). Every other sequence and call passes straight
 * through. It exists only when a cascade has an EagleLevel, so no other request pays for features.
 *
 * A feature f_i is the target's last hidden state after its final norm at position i (the LM head's
 * input), float32 [hidden]: it depends on tokens[0..i] only, so it is valid for a block exactly
 * while the block starts with those tokens (`valid`).
 */
export class FeatureTap implements ModelSession {
  private tokens: number[] = [];
  private rows: Float32Array[] = [];
  readonly load?: () => ServiceLoad;

  /** Throws InvalidArgumentError when the target's graph has no `hidden_states` output. */
  constructor(
    private readonly inner: ModelSession,
    private readonly seqId: string,
  ) {
    if (inner.spec.features?.output !== 'hidden_states') {
      throw new InvalidArgumentError(
        `${inner.spec.name} (${inner.spec.onnxPath}) has no hidden_states output, which a feature drafter (--eagle-model) reads: add it with tools/train/add_hidden_output.py (python3 tools/train/add_hidden_output.py MODEL.onnx --out DIR/model.onnx --copy-dir)`,
      );
    }
    if (inner.load) this.load = () => inner.load!();
  }

  get spec() {
    return this.inner.spec;
  }

  get provider() {
    return this.inner.provider;
  }

  /** How many leading positions of `tokens` have the target's feature (f_0 .. f_{valid-1}). */
  valid(tokens: readonly number[]): number {
    return commonPrefix(this.tokens, tokens);
  }

  /** f_position, float32 [hidden] (a view; not to be written). */
  feature(position: number): Float32Array {
    return this.rows[position]!;
  }

  private record(item: ForwardItem, hidden: Float32Array | undefined): void {
    const size = this.spec.features!.size;
    const keep = item.keep ?? this.tokens.length;
    this.tokens.length = Math.min(this.tokens.length, keep);
    this.rows.length = this.tokens.length;
    const at = this.tokens.length;
    if (!hidden || item.positionIds?.some((p, j) => p !== at + j) || hidden.length !== item.inputIds.length * size) {
      throw new InvalidArgumentError(`the target's features for ${this.seqId} need its tokens fed in order at positions ${at}.. with a full cache`);
    }
    item.inputIds.forEach((t, j) => {
      this.tokens.push(t);
      this.rows.push(hidden.subarray(j * size, (j + 1) * size));
    });
  }

  async forward(item: ForwardItem, rows: LogitsRows = 'all'): Promise<Float32Array> {
    return (await this.step(item, rows, false)).logits;
  }

  forwardAttention(item: ForwardItem, rows?: LogitsRows): Promise<{ logits: Float32Array; attention: Float32Array }> {
    return this.step(item, rows ?? 'all', true).then((r) => ({ logits: r.logits, attention: r.attention! }));
  }

  async step(item: ForwardItem, rows: LogitsRows, attention: boolean): Promise<StepResult> {
    if (item.seqId !== this.seqId) return this.inner.step(item, rows, attention);
    if (item.evict?.length || item.insert) throw new InvalidArgumentError('a feature drafter runs over the target\'s full cache: no evicted or inserted rows');
    const r = await this.inner.step({ ...item, returnHidden: true }, rows, attention);
    this.record(item, r.hidden);
    return r;
  }

  forwardBatch(items: readonly ForwardItem[], rows?: LogitsRows): Promise<Float32Array[]> {
    if (!items.some((it) => it.seqId === this.seqId)) return this.inner.forwardBatch(items, rows);
    return Promise.all(items.map((it) => this.forward(it, rows)));
  }

  length(seqId: string): number {
    return this.inner.length(seqId);
  }

  async truncate(seqId: string, length: number): Promise<void> {
    await this.inner.truncate(seqId, length);
    if (seqId !== this.seqId) return;
    this.tokens.length = Math.min(this.tokens.length, length);
    this.rows.length = this.tokens.length;
  }

  evict(seqId: string, indices: readonly number[], take?: boolean): Promise<KvRows | undefined> {
    if (seqId === this.seqId) throw new InvalidArgumentError('a feature drafter runs over the target\'s full cache: no evicted rows');
    return this.inner.evict(seqId, indices, take);
  }

  insert(seqId: string, rows: KvRows): Promise<void> {
    if (seqId === this.seqId) throw new InvalidArgumentError('a feature drafter runs over the target\'s full cache: no inserted rows');
    return this.inner.insert(seqId, rows);
  }

  async release(seqId: string): Promise<void> {
    if (seqId === this.seqId) {
      this.tokens = [];
      this.rows = [];
    }
    await this.inner.release(seqId);
  }

  /** The target's session is the caller's: closing the tap leaves it open. */
  async close(): Promise<void> {}
}

/**
 * Throws InvalidArgumentError unless `drafter` is a feature drafter that can draft for `target`: the
 * target's graph outputs `hidden_states` (tools/train/add_hidden_output.py), the drafter's takes a
 * `hidden_states` input of the same width and outputs `next_hidden_states`, and every token of its
 * head (draft_vocab) is in the target's vocabulary. Specs of loaded sessions (ModelSpec.features is
 * known once a runner has read the graph).
 */
export function checkFeatureDrafter(target: ModelSpec, drafter: ModelSpec): void {
  if (target.features?.output !== 'hidden_states') {
    throw new InvalidArgumentError(
      `${target.name} (${target.onnxPath}) has no hidden_states output, which a feature drafter reads: add it with tools/train/add_hidden_output.py (python3 tools/train/add_hidden_output.py MODEL.onnx --out DIR/model.onnx --copy-dir)`,
    );
  }
  const f = drafter.features;
  if (!f?.input || f.output !== 'next_hidden_states') {
    throw new InvalidArgumentError(`${drafter.name} (${drafter.onnxPath}) is not a feature drafter: it needs a graph with a hidden_states input and a next_hidden_states output (models/eagle, tools/train/eagle.py)`);
  }
  if (f.size !== target.features.size) throw new InvalidArgumentError(`${drafter.name} reads features of size ${f.size}, but the target ${target.name}'s hidden_states are ${target.features.size} wide`);
  // without draft_vocab its head is ids 0 .. vocabSize - 1, the last the widest
  const wide = (drafter.draftVocab ?? [drafter.vocabSize - 1]).find((id) => id >= target.vocabSize);
  if (wide !== undefined) throw new InvalidArgumentError(`${drafter.name} drafts token ${wide}, outside the target's vocabulary of ${target.vocabSize}`);
}

/** Position-keyed noise (drafter-invariant verification): draws a token of `p` at absolute `position`. */
export interface PositionDraw {
  draw(p: Float32Array, position: number): number;
}

/** How an EagleLevel samples, beyond its sampling parameters (as a ModelLevel's options). */
export interface EagleLevelOptions {
  /** Where the request's output begins in its tokens (presence and frequency penalties). Default 0. */
  readonly promptLength?: number;
  /** Drafter-invariant verification at temperature > 0: draw with this noise and pass drafts up one-hot. */
  readonly noise?: PositionDraw;
}

/**
 * An EAGLE-1 feature drafter as a cascade level (Li et al., "EAGLE: Speculative Sampling Requires
 * Rethinking Feature Uncertainty", ICML 2024). Its graph (models/eagle, config.json `contract`) reads
 * token x_{p} with feature f_{p-1} at position p and returns the predicted next feature f^_p
 * (`next_hidden_states`) and logits over its reduced head (`draft_vocab`, FR-Spec) for x_{p+1}.
 *
 * Before drafting it feeds the tokens committed since its last call with the target's TRUE features
 * (FeatureTap: the target computed them in its last review), after rolling back its own KV rows that
 * were computed from its predicted features; then it drafts autoregressively, each drafted token fed
 * with the feature it predicted for that position. It cannot review a block in one pass, so it only
 * proposes (`proposesOnly`: its row of K stays zero) and must be the first drafter, right below the
 * target whose features it reads; MaG may draft after it in the horizontal cascade. With no target
 * features for the block yet (the first round, before the target has read the prompt) it proposes
 * nothing and the levels below draft.
 *
 * Exactness: its logits are put on the full vocabulary (ids outside draft_vocab get -Infinity) and
 * go through the same logits processors as every level's (sampling.ts), so q, the distribution a
 * draft is drawn from, is this model's processed distribution, and the target's review stays lossless.
 */
export class EagleLevel implements CascadeLevel {
  readonly stats = newStats();
  readonly proposesOnly = true;
  /** The tokens at positions 0, 1, … whose rows (positions >= 1) the drafter's cache holds. */
  private held: number[] = [];
  /** Leading rows (positions 1..trueRows) computed from the target's features, not predicted ones. */
  private trueRows = 0;
  private readonly draftVocab: readonly number[];
  private readonly vocabSize: number;
  private readonly promptLength: number;
  private readonly noise: PositionDraw | undefined;

  /**
   * `session`: the feature drafter (spec.features.input, output `next_hidden_states`); `target`: the
   * FeatureTap of the same request's target. Throws InvalidArgumentError for a model that is not a
   * feature drafter of this target.
   */
  constructor(
    readonly name: string,
    readonly session: ModelSession,
    readonly seqId: string,
    private readonly target: FeatureTap,
    private readonly sampling: SamplingParams,
    options: EagleLevelOptions = {},
  ) {
    checkFeatureDrafter(target.spec, session.spec);
    this.vocabSize = target.spec.vocabSize;
    this.draftVocab = session.spec.draftVocab ?? Array.from({ length: session.spec.vocabSize }, (_, i) => i);
    this.promptLength = options.promptLength ?? 0;
    this.noise = options.noise;
  }

  /** One pass of the drafter: the last token's logits on the full vocabulary and its predicted feature. */
  private async pass(item: ForwardItem): Promise<{ logits: Float32Array; feature: Float32Array }> {
    const t0 = performance.now();
    const r = await this.session.step({ ...item, returnHidden: true }, 'last', false);
    this.stats.forwardMs += performance.now() - t0;
    this.stats.forwardPasses++;
    this.stats.tokensScored += item.inputIds.length;
    const logits = new Float32Array(this.vocabSize).fill(-Infinity);
    this.draftVocab.forEach((id, i) => (logits[id] = r.logits[i]!));
    const size = this.session.spec.features!.size;
    return { logits, feature: r.hidden!.subarray(r.hidden!.length - size) };
  }

  /**
   * Appends up to `want` drafts after the whole block: none when the target has not yet computed the
   * features of every block position but the last (the first round, or drafts of another level above).
   */
  async propose(block: Block, want: number, rng: Rng): Promise<void> {
    this.stats.proposals++;
    const tokens = block.tokens;
    const n = block.length;
    if (want < 1 || n < 2 || this.target.valid(tokens) < n - 1) return;
    // rows whose token, feature and prefix still hold; the last token is always fed again (its output is needed)
    const keep = Math.max(0, Math.min(this.trueRows, commonPrefix(this.held, tokens) - 1, n - 2));
    const size = this.session.spec.features!.size;
    const inputIds = tokens.slice(keep + 1, n);
    const hiddenStates = new Float32Array(inputIds.length * size);
    inputIds.forEach((_, j) => hiddenStates.set(this.target.feature(keep + j), j * size));
    const positionIds = inputIds.map((_, j) => keep + 1 + j);
    let out = await this.pass({ seqId: this.seqId, inputIds, positionIds, hiddenStates, keep });
    this.held = tokens.slice(0, n);
    this.trueRows = n - 1;
    for (let i = 0; i < want; i++) {
      const position = block.length;
      const { token, q } = this.choose(out.logits, block, rng);
      block.push(token, q);
      if (i === want - 1) break;
      out = await this.pass({ seqId: this.seqId, inputIds: [token], positionIds: [position], hiddenStates: out.feature });
      this.held.push(token);
    }
  }

  /** The draft at the position after the block, and q (undefined = one-hot), with the level's processors. */
  private choose(logits: Float32Array, block: Block, rng: Rng): { token: number; q: Float32Array | undefined } {
    const prefix = { tokens: block.tokens, length: block.length, promptLength: this.promptLength };
    if (this.sampling.temperature === 0) return { token: drawToken(logits, this.sampling, prefix, undefined), q: undefined };
    const p = distribution(logits, this.sampling, prefix);
    return this.noise ? { token: this.noise.draw(p, block.length), q: undefined } : { token: sample(p, rng), q: p };
  }

  async review(): Promise<ReviewOutcome> {
    throw new InvalidArgumentError(`${this.name} is a feature drafter: it proposes only (its row of the K matrix must be zero)`);
  }

  /** Committed tokens it has not read with the target's features (it feeds them on its next proposal). */
  lag(tokens: readonly number[]): number {
    return Math.max(0, tokens.length - 1 - Math.min(this.trueRows, Math.max(0, commonPrefix(this.held, tokens) - 1)));
  }

  async release(): Promise<void> {
    this.held = [];
    this.trueRows = 0;
    await this.session.release(this.seqId).catch(() => undefined);
  }
}
