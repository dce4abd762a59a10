import { generateAutoregressive } from '../../src/engine/generate.ts';
import type { SamplingParams } from '../../src/kernels/sampling.ts';
import { OrtModelSession } from '../../src/models/ort-session.ts';
import type { TextTokenizer } from '../../src/models/tokenizer.ts';

/**
 * The oracle of a cluster test: target-only decoding of the model in `dir`, in this process, of
 * `prompt` (drafter-invariant noise when sampling, so a seeded request through any cascade must give
 * these tokens exactly); its text.
 */
export async function targetOnlyText(dir: string, tokenizer: TextTokenizer, prompt: string, maxTokens: number, sampling: SamplingParams, seed: number): Promise<string> {
  const s = await OrtModelSession.open(dir);
  try {
    const r = await generateAutoregressive(s, { promptIds: tokenizer.encodePrompt(prompt), maxTokens, sampling, seed, verification: 'invariant' });
    return tokenizer.decode(r.tokenIds);
  } finally {
    await s.close();
  }
}
