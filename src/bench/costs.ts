import { randomUUID } from 'node:crypto';
import { Rng } from '../kernels/rng.ts';
import type { ModelSession } from '../models/session.ts';
import { medianOf } from './report.ts';

export const SCORE_KS = [1, 2, 4, 8, 16] as const;

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
