import { randomUUID } from 'node:crypto';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { Rng } from '../kernels/rng.ts';
import type { ForwardItem, ModelSession } from '../models/session.ts';
import { medianOf } from './report.ts';

/** Block sizes k scored in one forward: verify(32)/verify(1) is issue 22's flatness test. */
export const SCORE_KS = [1, 2, 4, 8, 16, 32] as const;

/** Per-model costs in milliseconds, medians over repeats, on one ONNX Runtime session. */
export interface ModelCosts {
  readonly model: string;
  readonly prefillMs: number;
  readonly prefillTokens: number;
  /** One token appended to a `past`-token cache. */
  readonly decodeMsPerToken: number;
  /** Scoring k new tokens in one forward over a `past`-token cache, then rolling back. */
  readonly scoreMs: Record<number, number>;
  readonly past: number;
}

/**
 * One batched pass of `batch` sequences (forwardBatch), each over its own `past`-token cache and
 * scoring `tokens` new tokens (1: decode; k: verification of a k-token block), rolled back after
 * each pass. Either measured (`ms`, median) or refused by the runner (`refused`: its message, e.g.
 * a fused graph that cannot pad a batch, or a graph without position_ids) or failed (`error`).
 */
export interface BatchCost {
  readonly batch: number;
  readonly tokens: number;
  /** Median milliseconds of one batched pass (the pass only; the rollback is not timed). */
  readonly ms?: number;
  /** New tokens scored per second over the whole batch: batch × tokens × 1000 / ms. */
  readonly tokensPerSecond?: number;
  /** tokensPerSecond over that of one sequence (batch 1, same tokens each). */
  readonly vsOne?: number;
  readonly refused?: string;
  readonly error?: string;
}

const now = () => performance.now();

function tokens(rng: Rng, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => Math.floor(rng.uniform() * vocab));
}

/** Measures prefill, decode and k-token scoring; the sequence is rolled back after every score. */
export async function measureCosts(model: ModelSession, past: number, repeats: number): Promise<ModelCosts> {
  const rng = new Rng(42);
  const vocab = model.spec.vocabSize;
  const seqId = randomUUID();
  const prompt = tokens(rng, past, vocab);
  await model.forward({ seqId, inputIds: prompt }, 'last'); // warm-up
  await model.release(seqId);
  const prefillMs = await medianOf(repeats, async () => {
    const t = now();
    await model.forward({ seqId, inputIds: prompt }, 'last');
    const dt = now() - t;
    await model.release(seqId);
    return dt;
  });
  await model.forward({ seqId, inputIds: prompt }, 'last');
  const decodeMsPerToken = await medianOf(repeats * 4, async () => {
    const t = now();
    await model.forward({ seqId, inputIds: tokens(rng, 1, vocab) }, 'last');
    const dt = now() - t;
    await model.truncate(seqId, past);
    return dt;
  });
  const scoreMs: Record<number, number> = {};
  for (const k of SCORE_KS) {
    scoreMs[k] = await medianOf(repeats * 2, async () => {
      const t = now();
      await model.forward({ seqId, inputIds: tokens(rng, k, vocab) }, 'all');
      const dt = now() - t;
      await model.truncate(seqId, past);
      return dt;
    });
  }
  await model.release(seqId);
  return { model: model.spec.name, prefillMs, prefillTokens: past, decodeMsPerToken, scoreMs, past };
}

/**
 * Measures batched passes: for each batch size B (1 is always measured first, as the baseline), a
 * decode pass (1 new token per sequence, medians of repeats × 4) and, when `verifyTokens` > 1, a
 * verification pass (`verifyTokens` per sequence, medians of repeats × 2), each after one untimed
 * warm-up pass. The max(B) sequences are prefilled once with distinct random prompts (no shared
 * prefix) of `past` tokens; every pass is rolled back to `past` untimed. A shape the runner refuses
 * (InvalidArgumentError) is recorded and the others still run; any other failure is recorded and
 * ends the measurement (the session may be gone).
 */
export async function measureBatched(model: ModelSession, past: number, repeats: number, batches: readonly number[], verifyTokens: number): Promise<BatchCost[]> {
  const sizes = [...new Set([1, ...batches])].sort((a, b) => a - b);
  const blocks = verifyTokens > 1 ? [1, verifyTokens] : [1];
  const rng = new Rng(7);
  const vocab = model.spec.vocabSize;
  const seqIds = Array.from({ length: sizes.at(-1)! }, () => randomUUID());
  const out: BatchCost[] = [];
  try {
    for (const seqId of seqIds) await model.forward({ seqId, inputIds: tokens(rng, past, vocab) }, 'last');
    const pass = async (ids: readonly string[], n: number): Promise<number> => {
      const items: ForwardItem[] = ids.map((seqId) => ({ seqId, inputIds: tokens(rng, n, vocab) }));
      const t = now();
      await model.forwardBatch(items, 'all');
      const dt = now() - t;
      for (const seqId of ids) await model.truncate(seqId, past);
      return dt;
    };
    measuring: for (const batch of sizes) {
      const ids = seqIds.slice(0, batch);
      for (const n of blocks) {
        try {
          await pass(ids, n); // warm-up: the device's batching graphs are built once per shape
          const ms = await medianOf(n === 1 ? repeats * 4 : repeats * 2, () => pass(ids, n));
          const tokensPerSecond = (batch * n * 1000) / ms;
          const one = batch === 1 ? tokensPerSecond : out.find((r) => r.batch === 1 && r.tokens === n)?.tokensPerSecond;
          out.push({ batch, tokens: n, ms, tokensPerSecond, ...(one !== undefined ? { vsOne: tokensPerSecond / one } : {}) });
        } catch (err) {
          if (err instanceof InvalidArgumentError) {
            out.push({ batch, tokens: n, refused: err.message });
            continue;
          }
          if (!(err instanceof CascadeError)) throw err;
          out.push({ batch, tokens: n, error: err.message });
          break measuring;
        }
      }
    }
  } finally {
    for (const seqId of seqIds) await model.release(seqId).catch(() => undefined);
  }
  return out;
}
