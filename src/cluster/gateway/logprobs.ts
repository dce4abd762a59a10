import type { TokenLogprob } from '../../kernels/sampling.ts';
import type { TextTokenizer } from '../../models/tokenizer.ts';

/**
 * Log probabilities in OpenAI's two shapes. Each comes from the target's processed distribution at
 * the token's position (kernels/sampling.ts TokenLogprob: temperature 1 when greedy; a probability of
 * 0 reads -9999 as in vLLM), whichever cascade level drafted the token.
 */
export class LogprobFormat {
  constructor(private readonly tokenizer: TextTokenizer) {}

  /** Chat's `logprobs: { content: [...] }`: each token's text, log probability, UTF-8 bytes and top_logprobs. */
  chat(list: readonly TokenLogprob[]) {
    const entry = (token: number, logprob: number) => {
      const bytes = this.tokenizer.tokenBytes(token);
      return { token: this.tokenizer.tokenText(token, bytes), logprob, bytes: [...bytes] };
    };
    return { content: list.map((e) => ({ ...entry(e.token, e.logprob), top_logprobs: e.top.map((a) => entry(a.token, a.logprob)) })) };
  }

  /**
   * Completions' `logprobs: { tokens, token_logprobs, top_logprobs, text_offset }`. `offsets`: where
   * the choice's text stands (the echoed prompt's, or earlier chunks' text before these tokens).
   */
  completion(list: readonly TokenLogprob[], offsets: TextOffsets) {
    const bytes = list.map((e) => this.tokenizer.tokenBytes(e.token));
    return {
      tokens: list.map((e, i) => this.tokenizer.tokenText(e.token, bytes[i])),
      token_logprobs: list.map((e) => e.logprob),
      top_logprobs: list.map((e) => this.topMap(e)),
      text_offset: bytes.map((b) => offsets.next(b)),
    };
  }

  /**
   * Alternatives as completions name them: a map of text to log probability, most likely first, with
   * the sampled token's always there (OpenAI: up to logprobs + 1 entries); two ids of one text (rare)
   * keep the likelier.
   */
  private topMap(e: TokenLogprob): Record<string, number> {
    const map: Record<string, number> = {};
    for (const a of e.top) {
      const text = this.tokenizer.tokenText(a.token);
      if (!(text in map)) map[text] = a.logprob;
    }
    const own = this.tokenizer.tokenText(e.token);
    if (!(own in map)) map[own] = e.logprob;
    return map;
  }
}

/**
 * Where each token's text begins in a completion's text, in UTF-16 code units as OpenAI's
 * text_offset and JavaScript strings count: the text decoded so far from the tokens' bytes, so a
 * token inside a multi-byte character begins where that character does.
 */
export class TextOffsets {
  private readonly decoder = new TextDecoder('utf-8');
  constructor(private at = 0) {}

  /** The offset of the token with these bytes, and moves past it. */
  next(bytes: Uint8Array): number {
    const start = this.at;
    this.at += this.decoder.decode(bytes, { stream: true }).length;
    return start;
  }
}
