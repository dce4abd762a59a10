import { readFileSync, realpathSync } from 'node:fs';
import { InvalidArgumentError, ModelLoadError } from '../errors.ts';
import type { ModelSpec } from './config.ts';

/** A tokenizer.json's tokens by id: its model's vocabulary (BPE/WordPiece map or Unigram list) and its added tokens. */
function tokensById(path: string): string[] {
  let json: { model?: { vocab?: Record<string, number> | [string, number][] }; added_tokens?: { id: number; content: string }[] };
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (cause) {
    throw new ModelLoadError(`cannot read tokenizer ${path}`, { cause });
  }
  const tokens: string[] = [];
  const vocab = json.model?.vocab;
  if (Array.isArray(vocab)) vocab.forEach(([piece], id) => (tokens[id] = piece));
  else if (vocab) for (const [piece, id] of Object.entries(vocab)) tokens[id] = piece;
  for (const t of json.added_tokens ?? []) tokens[t.id] = t.content;
  return tokens;
}

/**
 * Refuses a cascade whose logits widths cannot line up. Models sharing a tokenizer may pad their
 * embeddings past it differently (Qwen2.5-7B has 152064 rows, Qwen2.5-0.5B 151936, for a tokenizer
 * of 151665): a draft's q is then narrower than the reviewer's p, and is 0 past its width, which keeps
 * the review exact (acceptance.ts). A drafter wider than a model above it could draft an id that
 * model cannot read, so each drafter (largest first) must be at most as wide as every model above it.
 * Throws InvalidArgumentError naming the two models.
 */
export function checkVocabularySizes(target: Pick<ModelSpec, 'name' | 'vocabSize'>, drafters: readonly Pick<ModelSpec, 'name' | 'vocabSize'>[]): void {
  let above = target;
  for (const d of drafters) {
    if (d.vocabSize > above.vocabSize) {
      throw new InvalidArgumentError(
        `drafter ${d.name} has a vocabulary of ${d.vocabSize}, wider than the ${above.vocabSize} of ${above.name} above it: it could draft ids ${above.name} cannot read. ` +
          `A draft model's vocab_size must be at most its reviewer's (models sharing a tokenizer may pad it differently, the smaller drafting for the larger)`,
        { field: 'drafters' },
      );
    }
    above = d.vocabSize < above.vocabSize ? d : above;
  }
}

/**
 * Refuses a cascade whose models do not share one tokenizer: every drafter's token-to-id map
 * (tokenizer.json) must equal the target's, token for token, since drafts travel as ids (a model may
 * pad its embedding past its tokenizer: checkVocabularySizes orders the widths); the same file is not
 * re-read. Throws ModelLoadError naming the first ids whose tokens differ.
 */
export function checkSharedVocabulary(target: ModelSpec, drafters: readonly ModelSpec[]): void {
  checkVocabularySizes(target, drafters);
  const real = (p: string) => realpathSync(p);
  const targetPath = real(target.tokenizerPath);
  let targetTokens: string[] | undefined;
  const compared = new Set([targetPath]);
  for (const d of drafters) {
    const path = real(d.tokenizerPath);
    if (compared.has(path)) continue;
    compared.add(path);
    targetTokens ??= tokensById(targetPath);
    const theirs = tokensById(path);
    const differing: string[] = [];
    for (let id = 0; id < Math.max(targetTokens.length, theirs.length) && differing.length < 5; id++) {
      if (targetTokens[id] !== theirs[id]) differing.push(`${id}: ${JSON.stringify(targetTokens[id] ?? null)} vs ${JSON.stringify(theirs[id] ?? null)}`);
    }
    if (differing.length) {
      throw new ModelLoadError(
        `drafter ${d.name} does not share the target ${target.name}'s tokenizer (${d.tokenizerPath} vs ${target.tokenizerPath}; ${targetTokens.length} vs ${theirs.length} tokens); ` +
          `first ids whose tokens differ: ${differing.join(', ')}. Speculative decoding hands drafts over as token ids: use drafters trained with the target's tokenizer`,
      );
    }
  }
}
