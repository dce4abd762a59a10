import { generateCascade } from '../../src/engine/cascade.ts';
import { distribution, type SamplingParams } from '../../src/kernels/sampling.ts';
import type { ModelSession } from '../../src/models/session.ts';
import { positionalChiSquare, type PositionFit } from './stats.ts';

/**
 * Rejection-sampled sd (one drafter, K = 2) over `target`: `seeds` samples of 3 tokens after
 * `prompt`, each position fitted (chi-square) against `oracle`'s distribution at the sampled context
 * before it. The oracle is target-only decoding: the target's own model (on another EP, or itself).
 */
export async function sdPositionFits(target: ModelSession, drafter: ModelSession, oracle: ModelSession, prompt: readonly number[], sampling: SamplingParams, seeds = 400): Promise<PositionFit[]> {
  const samples: number[][] = [];
  for (let seed = 0; seed < seeds; seed++) {
    const r = await generateCascade(target, { drafters: [{ kind: 'model', session: drafter }], kMatrix: [[2]], lenience: 1 }, { promptIds: [...prompt], maxTokens: 3, sampling, seed, stopAtEos: false, verification: 'rejection' });
    samples.push(r.tokenIds);
  }
  const rows = new Map<string, Float32Array>();
  for (const sample of samples) {
    for (let i = 0; i < sample.length; i++) {
      const context = [...prompt, ...sample.slice(0, i)];
      const key = context.join(',');
      if (rows.has(key)) continue;
      rows.set(key, distribution(await oracle.forward({ seqId: 'oracle', inputIds: context }, 'last'), sampling));
      await oracle.release('oracle');
    }
  }
  return positionalChiSquare(samples, prompt, (context) => rows.get(context.join(','))!);
}
