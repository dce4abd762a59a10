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
    const entry = (token: number, logprob: number) => ({ token: this.tokenizer.tokenText(token), logprob, bytes: [...this.tokenizer.tokenBytes(token)] });
    return { content: list.map((e) => ({ ...entry(e.token, e.logprob), top_logprobs: e.top.map((a) => entry(a.token, a.logprob)) })) };
  }

  /**
   * Completions' `logprobs: { tokens, token_logprobs, top_logprobs, text_offset }`. `offset`: the
   * characters of text before the first token (the echoed prompt's, or an earlier chunk's); `echo`:
   * prompt tokens before `list`, which have no log probability (null, as OpenAI gives the first).
   */
  completion(list: readonly TokenLogprob[], offset: number, echo: readonly number[] = []) {
    const tokens: string[] = [];
    const textOffset: number[] = [];
    let at = offset;
    for (const id of [...echo, ...list.map((e) => e.token)]) {
      const text = this.tokenizer.tokenText(id);
      tokens.push(text);
      textOffset.push(at);
      at += text.length;
    }
    return {
      tokens,
      token_logprobs: [...echo.map(() => null), ...list.map((e) => e.logprob)],
      top_logprobs: [...echo.map(() => null), ...list.map((e) => this.topMap(e))],
      text_offset: textOffset,
    };
  }

  /** Alternatives as completions name them, a map of text to log probability, most likely first; two ids of one text (rare) keep the likelier. */
  private topMap(e: TokenLogprob): Record<string, number> {
    const map: Record<string, number> = {};
    for (const a of e.top) {
      const text = this.tokenizer.tokenText(a.token);
      if (!(text in map)) map[text] = a.logprob;
    }
    return map;
  }
}
