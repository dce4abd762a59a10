import { InvalidArgumentError } from '../errors.ts';
import type { KvLocation } from './kv-placement.ts';
import type { ModelSpec } from './config.ts';
import type { Seed } from '../kernels/rng.ts';
import { checkSampling, type SamplingParams } from '../kernels/sampling.ts';

/** One sequence's part of a forward call. */
export interface ForwardItem {
  /** Caller-chosen id of a sequence whose KV the session keeps between calls. */
  readonly seqId: string;
  /** New tokens only (the KV of earlier tokens is already held). Non-empty. */
  readonly inputIds: readonly number[];
  /** Absolute RoPE positions of the new tokens; defaults to length(seqId), length(seqId)+1, … */
  readonly positionIds?: readonly number[];
  /**
   * Roll the sequence back to this many tokens before the new ones (as `truncate` does), in the same
   * call: a rejected draft costs no extra round trip to the runner.
   */
  readonly keep?: number;
  /**
   * Cache rows (indices after `keep`) to drop before the new tokens, in the same call: a bounded
   * cache releasing tokens. Single-sequence calls only (`step`).
   */
  readonly evict?: readonly number[];
  /** Return the evicted rows (to spill them to a KvStore). */
  readonly takeEvicted?: boolean;
  /** Rows taken earlier to append (after evicting, before the new tokens): rebuilt tokens. */
  readonly insert?: KvRows;
  /**
   * Features fed beside the new tokens, for a graph that takes them (spec.features.input: a feature
   * drafter's `hidden_states` input, EAGLE, Li et al. ICML 2024): float32 row-major
   * [inputIds.length, spec.features.size], row j the feature that goes in with token j. Required by
   * such a graph, refused by any other.
   */
  readonly hiddenStates?: Float32Array;
  /**
   * Also return the new tokens' features (StepResult.hidden), from the graph's features output
   * (spec.features.output). Fetched only when asked, so no other call pays for it; a graph without
   * that output refuses it (ModelRuntimeError naming tools/train/add_hidden_output.py).
   */
  readonly returnHidden?: boolean;
}

/** What one `step` returns: logits, and on request the attention, the evicted rows and the features. */
export interface StepResult {
  readonly logits: Float32Array;
  readonly attention?: Float32Array;
  readonly evicted?: KvRows;
  /**
   * With ForwardItem.returnHidden: one feature row per token fed, in order, float32 row-major
   * [inputIds.length, spec.features.size] (a target's `hidden_states`: its last hidden state after
   * the final norm, the LM head's input; a feature drafter's `next_hidden_states`: its predicted next
   * features). Owned by the caller.
   */
  readonly hidden?: Float32Array;
}

/** The element type a model keeps its KV in: its ONNX graph's past_key_values type. */
export type KvDtype = 'float32' | 'float16';
/** Every KvDtype: what the runner takes as KV (and logits), and what `cascade fuse --kv-dtype` writes. */
export const KV_DTYPES: readonly KvDtype[] = ['float32', 'float16'];

/** A block of KV values: float32 values, or float16 bit patterns (Node 20 has no Float16Array). */
export type KvArray = Float32Array | Uint16Array;

/**
 * KV rows of one sequence taken out of a cache or put back into one: for each past tensor in input
 * order (key0, value0, key1, …) a row-major [kvHeads, count, headDim] block, in the model's own
 * dtype (Float32Array for float32, Uint16Array of half bit patterns for float16; never converted,
 * so a spilled row comes back bit for bit). Keys are stored after RoPE, so a row keeps its original
 * position wherever it sits in the cache.
 */
export interface KvRows {
  readonly dtype: KvDtype;
  readonly count: number;
  readonly kvHeads: number;
  readonly tensors: KvArray[];
}

/**
 * How loaded a model is, for the adaptive schedule (SPEC §4.4): a forward pass over T new tokens
 * costs about `fixedMs + tokenMs × T`, and recent passes held `occupancy` sequences on average, so
 * one more drafted token of one session costs every batched session `tokenMs`, occupancy times over.
 */
export interface ServiceLoad {
  readonly occupancy: number;
  readonly fixedMs: number;
  readonly tokenMs: number;
}

/**
 * Which logits rows a forward returns: every new token's row, only the last one, or the last n (a
 * review needs the rows of its drafts, not of the prompt fed with them: a 4k-token prefill at a 152k
 * vocabulary would otherwise return 2.4 GB of logits).
 */
export type LogitsRows = 'all' | 'last' | number;

/** Logits blocks of consecutive passes, in order, as one (the block itself when there is one). */
export function joinRows(parts: readonly Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/**
 * How many of the last `want` rows of `total` new tokens a chunk [from, to) of them holds (0 or
 * less: none), for a feed that runs in chunks but returns only its last rows.
 */
export const rowsInChunk = (from: number, to: number, total: number, want: number): number => to - Math.max(from, total - want);

/**
 * How many rows `rows` asks of a forward over `tokens` new tokens (1..tokens); throws
 * InvalidArgumentError for a count that is not an integer in that range.
 */
export function rowCount(rows: LogitsRows, tokens: number): number {
  if (rows === 'all') return tokens;
  if (rows === 'last') return 1;
  if (!Number.isInteger(rows) || rows < 1 || rows > tokens) throw new InvalidArgumentError(`cannot return the last ${rows} logits rows of ${tokens} new tokens`);
  return rows;
}

/**
 * What ModelSession.decode chooses after feeding its item: up to `steps` tokens, each drawn from the
 * logits of the one before without an Rng (kernels/noise.ts drawToken): greedy at temperature 0,
 * else PositionNoise(noiseSeed) at the token's absolute position (drafter-invariant verification).
 */
export interface DecodePlan {
  /** Tokens to choose, an integer >= 1; the last one chosen is not fed. */
  readonly steps: number;
  readonly sampling: SamplingParams;
  /** The request's seed, at temperature > 0 (required there, ignored at 0). */
  readonly noiseSeed?: Seed;
  /**
   * Every token of the sequence once the item is fed, from position 0 (prompt, output, drafts): the
   * logits processors' prefix and the noise's positions. Its length must equal the sequence's.
   */
  readonly tokens: readonly number[];
  /** Where the output begins in `tokens` (presence and frequency penalties count only the output). */
  readonly promptLength: number;
  /** Stop once one of these is chosen (the target's end-of-sequence ids); default none. */
  readonly stopIds?: readonly number[];
}

/** Why `plan` cannot run (steps not an integer >= 1, bad sampling, no noiseSeed at temperature > 0), or undefined when it can. */
export function decodePlanError(plan: DecodePlan): string | undefined {
  if (!Number.isInteger(plan.steps) || plan.steps < 1) return `decode steps must be an integer >= 1, got ${plan.steps}`;
  const bad = checkSampling(plan.sampling);
  if (bad) return bad;
  if (plan.sampling.temperature > 0 && plan.noiseSeed === undefined) return 'decode samples at temperature > 0 with position noise only: give noiseSeed';
  return undefined;
}

/** Tokens ModelSession.decode chooses per call unless its caller asks fewer (vLLM's multi-step scheduling, --num-scheduler-steps, is typically run with 8). */
export const DECODE_STEPS = 8;

/**
 * A model that keeps per-sequence KV caches and runs the decoder-with-past graph over them.
 * Every call appends the new tokens' KV; `truncate` rolls a sequence back to any shorter length
 * (rejected drafts). Logits are float32, row-major [rows, vocabSize], owned by the caller.
 */
export interface ModelSession {
  readonly spec: ModelSpec;
  /** The execution provider actually in use (after any fallback). */
  readonly provider: string;
  /** Runs one sequence; returns logits for its new tokens. */
  forward(item: ForwardItem, rows?: LogitsRows): Promise<Float32Array>;
  /**
   * Runs one sequence and also returns its attention: for each new token, the attention it pays to
   * each cached token (cache order, new tokens last), summed over heads and layers, [s, length].
   * Needs a model exported with the `attention_sum` output (H2O scores, ADORE labels).
   */
  forwardAttention(item: ForwardItem, rows?: LogitsRows): Promise<{ logits: Float32Array; attention: Float32Array }>;
  /**
   * One sequence, everything in one call: roll back (`keep`), evict rows, insert rows, then run the
   * new tokens; returns the attention when `attention` is set and the evicted rows when asked.
   */
  step(item: ForwardItem, rows: LogitsRows, attention: boolean): Promise<StepResult>;
  /**
   * Multi-step decoding (vLLM's multi-step scheduling; onnxruntime-genai's generate loop): runs
   * `item` as `forward` does, then draws a token from the last logits row, feeds it, and so on
   * inside the runner, with no round trip to the caller between steps, until `plan.steps` tokens
   * are chosen or a stop id is. Returns 1..plan.steps chosen token ids; every one but the last is
   * fed (its KV held). The passes and the draws (drawToken) are those of a loop of one-token
   * `forward` calls and the same draws on this thread, so the tokens are the same (tested:
   * test/multi-step.test.ts). Single sequences over a full cache only: no evict, insert or
   * features, positions right after the cache, no reduced head. Throws InvalidArgumentError for a
   * bad plan (steps, sampling, noiseSeed missing at temperature > 0, tokens that are not the
   * sequence's) or item, SequenceError for a bad `keep`. On failure the sequence is left holding its
   * first `keep` (or all its earlier) tokens. A session may choose fewer tokens than asked
   * (BatchingSession chooses one while other sequences share the model, so none waits behind
   * several steps); callers ask again. Absent where the runner cannot decode (SessionOptions.multiStep
   * false).
   */
  decode?(item: ForwardItem, plan: DecodePlan): Promise<number[]>;
  /** Runs several sequences in one batched pass; results in input order. */
  forwardBatch(items: readonly ForwardItem[], rows?: LogitsRows): Promise<Float32Array[]>;
  /** Tokens whose KV is held for a sequence (0 when unknown). */
  length(seqId: string): number;
  /** Drops the KV of every token at index >= length. */
  truncate(seqId: string, length: number): Promise<void>;
  /**
   * Removes the rows at `indices` (cache order; the others keep theirs) and returns them when `take`
   * is set: a bounded cache releasing tokens. Positions of later tokens must then be given explicitly.
   */
  evict(seqId: string, indices: readonly number[], take?: boolean): Promise<KvRows | undefined>;
  /** Appends rows taken earlier by `evict` at the end of the cache (attention ignores cache order). */
  insert(seqId: string, rows: KvRows): Promise<void>;
  /** Frees a sequence's KV. */
  release(seqId: string): Promise<void>;
  /** How loaded the model is, when it batches sequences (BatchingSession). */
  load?(): ServiceLoad;
  /** Whether a token's logits do not depend on how many tokens its pass scores (SessionOptions.batchInvariant, resolved); undefined = not known. */
  readonly batchInvariant?: boolean;
  /** Whether the graph pads its own attention by a row, so that no pass is padded (graph-ops.ts PADDED_ATTENTION); undefined = not known. */
  readonly paddedAttention?: boolean;
  close(): Promise<void>;
}

/** How to run a model: execution providers in order of preference, and threads per model. */
export interface SessionOptions {
  /** e.g. ['cuda', 'cpu']; when a provider fails to initialise and `cpuFallback` is set, CPU is used. */
  readonly executionProviders?: readonly string[];
  readonly cpuFallback?: boolean;
  readonly intraOpThreads?: number;
  /**
   * Where past_key_values live between passes: `host` (JavaScript arrays, copied in and out of every
   * pass), `device` (left where the EP computed them, IO binding; needs a device EP such as webgpu),
   * or `auto` (default: the device when the session runs on one).
   */
  readonly kvLocation?: KvLocation;
  /**
   * Automatic prefix caching (default true): the first forward of a sequence copies the KV rows of
   * the longest prefix of its tokens that another sequence holds (live, or released and retained) (at least MIN_PREFIX tokens,
   * prefix-cache.ts) instead of computing them. Logits equal a fresh prefill's up to float rounding.
   */
  readonly prefixCache?: boolean;
  /**
   * Tokens of released sequences' KV kept for prefix reuse (prefix-cache.ts; default
   * RETAINED_TOKENS), most recently released first out last; 0 keeps none (only live sequences are
   * then sources). A request's `n` choices, or a chat's next turn, find the prompt here after the
   * sequence that computed it ended.
   */
  readonly prefixCacheTokens?: number;
  /**
   * Batch invariance (default `auto`): whether a token's logits stay the same however many tokens its
   * pass scores. `on` runs every one-token pass of one sequence as two rows (the token and a copy,
   * whose logits and KV row are dropped), so ONNX Runtime never takes its one-row matmul kernels,
   * which round differently from the several-row ones of a verify pass or a batch (up to 1e-1 in
   * the logits for MatMulNBits at accuracy_level 4 on the CPU EP; about 1e-5 in float32); and only
   * sequences with equally long pasts share a batched pass (a left-padded past shifts the keys,
   * which rounds differently too). Then a decode step, a verify pass, any split of a block and a
   * batched step give bit-identical logits (test/batch-invariance.test.ts), so speculation over the
   * model is exact. `auto` is `on` on the CPU EP for graphs whose MatMulNBits compute below float32
   * (accuracy_level 2-4; measured at 4) and for float32 graphs with a float16 KV cache (`cascade fuse
   * --kv-dtype float16`: up to 1.4e-3), and `off` otherwise. A one-token pass then
   * costs about a two-token one (a median 2% more for the fused 8-bit target; about 20% more where
   * the KV is copied through JavaScript, `host`). After the batch-invariant kernels of
   * He et al., "Defeating Nondeterminism in LLM Inference" (Thinking Machines Lab, 2025), and vLLM's
   * batch-invariant mode, with padding in place of new kernels.
   */
  readonly batchInvariant?: BatchInvariance;
  /**
   * Multi-step decoding (default true): the session offers ModelSession.decode, so target-only
   * decoding and a drafter's proposals choose up to DECODE_STEPS tokens in one call to the worker
   * instead of one call per token. false leaves it out: every token is its own round trip (the
   * baseline it is measured against).
   */
  readonly multiStep?: boolean;
}

/** SessionOptions.batchInvariant. */
export type BatchInvariance = 'auto' | 'on' | 'off';
export const BATCH_INVARIANCE: readonly BatchInvariance[] = ['auto', 'on', 'off'];
