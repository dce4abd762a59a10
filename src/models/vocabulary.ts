import { readFileSync, realpathSync } from 'node:fs';
import { ModelLoadError } from '../errors.ts';
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
 * Refuses a cascade whose models do not share one tokenizer: every drafter's token-to-id map
 * (tokenizer.json) must equal the target's, token for token, since drafts travel as ids. Sizes are
 * not compared here (a model may pad its embedding past its tokenizer); the same file is not re-read.
 * Throws ModelLoadError naming the first ids whose tokens differ.
 */
export function checkSharedVocabulary(target: ModelSpec, drafters: readonly ModelSpec[]): void {
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
