import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../errors.ts';
import { Rng, type Seed } from '../kernels/rng.ts';
import { DEFAULT_VERIFICATION, drawToken, PositionNoise, runnerDraws, VERIFICATIONS, type Verification } from '../kernels/noise.ts';
import { checkSampling, logprobDistribution, MAX_TOP_LOGPROBS, nextToken, tokenLogprob, type SamplingParams, type TokenLogprob } from '../kernels/sampling.ts';
import { DECODE_STEPS, type ModelSession } from '../models/session.ts';
import { BoundedSequence, checkKvPolicy, FULL_CACHE, type KvPolicyConfig } from './bounded-kv.ts';
import { checkBudget } from '../kernels/kv-policy.ts';

export interface GenerateRequest {
  readonly promptIds: readonly number[];
  /** Most tokens to generate (>= 1). */
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  /** Sampling seed (see Seed: a safe integer, or a 64-bit bigint); every bit of it counts. */
  readonly seed: Seed;
  /** Stop at the model's end-of-sequence ids (default true). */
  readonly stopAtEos?: boolean;
  /** Bound the target's KV cache (lossy unless `full`; target-only decoding for now). */
  readonly kv?: KvPolicyConfig;
  /**
   * Where the output begins in promptIds (default: its end). A resumed request's promptIds hold its
   * earlier output, which presence and frequency penalties must still count.
   */
  readonly promptLength?: number;
  /**
   * Return each generated token's log probability under the target's processed distribution with
   * this many most likely alternatives (0..MAX_TOP_LOGPROBS; undefined = none). See TokenLogprob.
   */
  readonly logprobs?: number;
  /**
   * How sampled drafts are verified (default DEFAULT_VERIFICATION). Under `invariant` every level,
   * and target-only decoding, draws each token with PositionNoise(seed) at its absolute position, so
   * one seed gives the same tokens with any drafters, any K and any placement; under `rejection` a
   * seed fixes the tokens only for one cascade and K. Greedy decoding is the same under both.
   */
  readonly verification?: Verification;
}

/** `cancelled`: the client went away or cancelled, and the request stopped early (cluster). */
export type FinishReason = 'length' | 'stop' | 'cancelled';

export interface GenerateStats {
  readonly promptTokens: number;
  readonly generatedTokens: number;
  /** Wall time from the first forward to the last token, in seconds. */
  readonly seconds: number;
  /** Time to the first generated token, in seconds (prefill included). */
  readonly firstTokenSeconds: number;
  readonly tokensPerSecond: number;
  /** With a bounded KV cache: the policy, the most tokens ever resident, and tokens released. */
  readonly kv?: { readonly policy: string; readonly budget: number; readonly peakResident: number; readonly releases: number; readonly rebuilds: number; readonly misses: number };
}

export interface GenerateResult {
  readonly tokenIds: number[];
  readonly finishReason: FinishReason;
  readonly stats: GenerateStats;
  /** With `logprobs`: one entry per token of tokenIds. */
  readonly logprobs?: TokenLogprob[];
}

/** Rejects requests that can never run: empty prompt, bad sampling, more positions than the model has. */
export function checkRequest(req: GenerateRequest, maxPositions: number | undefined): void {
  if (req.promptIds.length === 0) throw new InvalidArgumentError('the prompt is empty: give at least one token of text');
  if (!Number.isInteger(req.maxTokens) || req.maxTokens < 1) throw new InvalidArgumentError(`max tokens must be an integer >= 1, got ${req.maxTokens}`);
  const bad = checkSampling(req.sampling);
  if (bad) throw new InvalidArgumentError(bad);
  if (typeof req.seed !== 'bigint' && !Number.isSafeInteger(req.seed)) throw new InvalidArgumentError(`seed must be an integer of at most 53 bits, got ${req.seed}`);
  if (req.promptLength !== undefined && !(Number.isInteger(req.promptLength) && req.promptLength >= 0 && req.promptLength <= req.promptIds.length)) {
    throw new InvalidArgumentError(`promptLength must be an integer in 0..${req.promptIds.length}, got ${req.promptLength}`);
  }
  if (req.logprobs !== undefined && !(Number.isInteger(req.logprobs) && req.logprobs >= 0 && req.logprobs <= MAX_TOP_LOGPROBS)) {
    throw new InvalidArgumentError(`logprobs (the alternatives listed per token) must be an integer in 0..${MAX_TOP_LOGPROBS}, got ${req.logprobs}`);
  }
  if (req.verification !== undefined && !VERIFICATIONS.includes(req.verification)) {
    throw new InvalidArgumentError(`verification must be one of ${VERIFICATIONS.join(', ')}, got ${JSON.stringify(req.verification)}`);
  }
  if (req.kv) {
    checkKvPolicy(req.kv);
    if (req.kv.policy !== 'full') checkBudget(req.kv.budget);
  }
  if (maxPositions !== undefined && req.promptIds.length + req.maxTokens > maxPositions) {
    throw new InvalidArgumentError(
      `prompt (${req.promptIds.length} tokens) plus max tokens (${req.maxTokens}) exceeds the model's context of ${maxPositions} tokens`,
    );
  }
}

/**
 * Target-only autoregressive decoding: prefill the prompt, then one pass per token, up to
 * DECODE_STEPS of them per call to the model's runner where it decodes (ModelSession.decode;
 * greedy, or sampled with position noise, without logprobs or a bounded cache), else one call per
 * token. `onTokens` receives each new token in order, as soon as its call returns (the first right
 * after the prompt's pass). The sequence's KV is released at the end.
 */
export async function generateAutoregressive(
  model: ModelSession,
  req: GenerateRequest,
  onTokens?: (ids: readonly number[], logprobs?: readonly TokenLogprob[]) => void,
  /** `cancelled`: polled after each token; true ends the request with finish reason `cancelled`. */
  control: { readonly cancelled?: () => boolean } = {},
): Promise<GenerateResult> {
  checkRequest(req, model.spec.maxPositions);
  const seqId = randomUUID();
  const rng = new Rng(req.seed);
  const noise = (req.verification ?? DEFAULT_VERIFICATION) === 'invariant' ? new PositionNoise(req.seed) : undefined;
  const eos = new Set(req.stopAtEos === false ? [] : model.spec.eosIds);
  const out: number[] = [];
  const logprobs: TokenLogprob[] = [];
  const start = performance.now();
  let firstToken = 0;
  let finishReason: FinishReason = 'length';
  const seq = new BoundedSequence(model, seqId, req.kv ?? FULL_CACHE);
  let peak = 0;
  const feed = async (ids: readonly number[]) => {
    const logits = await seq.feed(ids, 'last');
    peak = Math.max(peak, seq.resident);
    return logits;
  };
  // multi-step decoding (ModelSession.decode) where the runner can choose the tokens itself: the
  // same passes and draws, one call per DECODE_STEPS tokens instead of one per token
  const inRunner = seq.decodes && runnerDraws(req.sampling.temperature, noise !== undefined, req.logprobs);
  try {
    const logits = await feed(req.promptIds);
    const tokens = [...req.promptIds];
    const promptLength = req.promptLength ?? req.promptIds.length;
    const draw = (row: Float32Array) => {
      const prefix = { tokens, length: tokens.length, promptLength };
      const token = req.sampling.temperature === 0 || noise ? drawToken(row, req.sampling, prefix, noise) : nextToken(row, req.sampling, rng, prefix);
      const logprob = req.logprobs === undefined ? undefined : tokenLogprob(logprobDistribution(row, req.sampling, prefix), token, req.logprobs);
      return { token, logprob };
    };
    let chosen = [draw(logits)];
    decoding: for (;;) {
      for (const { token, logprob } of chosen) {
        if (out.length === 0) firstToken = performance.now() - start;
        if (eos.has(token)) {
          finishReason = 'stop';
          break decoding;
        }
        out.push(token);
        tokens.push(token);
        if (logprob) logprobs.push(logprob);
        onTokens?.([token], logprob && [logprob]);
        if (out.length === req.maxTokens) break decoding;
        if (control.cancelled?.()) {
          finishReason = 'cancelled';
          break decoding;
        }
      }
      const last = tokens.at(-1)!;
      if (inRunner) {
        const steps = Math.min(DECODE_STEPS, req.maxTokens - out.length);
        const plan = { steps, sampling: req.sampling, ...(noise && req.sampling.temperature > 0 ? { noiseSeed: req.seed } : {}), tokens, promptLength, stopIds: [...eos] };
        chosen = (await seq.decode([last], plan)).map((token) => ({ token, logprob: undefined }));
        peak = Math.max(peak, seq.resident);
      } else chosen = [draw(await feed([last]))];
    }
  } finally {
    await seq.close();
  }
  const stats = baseStats(req.promptIds.length, out.length, start, firstToken);
  const kv = req.kv && req.kv.policy !== 'full' ? { policy: req.kv.policy, budget: req.kv.budget.budget, peakResident: peak, releases: seq.releases, rebuilds: seq.rebuilds, misses: seq.misses } : undefined;
  return { tokenIds: out, finishReason, stats: kv ? { ...stats, kv } : stats, ...(req.logprobs !== undefined ? { logprobs } : {}) };
}

/** The statistics every decoding loop reports; times are performance.now() milliseconds. */
export function baseStats(promptTokens: number, generatedTokens: number, startMs: number, firstTokenMs: number): GenerateStats {
  const seconds = (performance.now() - startMs) / 1000;
  return { promptTokens, generatedTokens, seconds, firstTokenSeconds: firstTokenMs / 1000, tokensPerSecond: generatedTokens / seconds };
}
