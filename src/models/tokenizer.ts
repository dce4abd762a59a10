import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ModelLoadError } from '../errors.ts';

/** A Hugging Face `tokenizer.json` loaded with tokenizers.js; decoding is lossless (no space clean-up). */
export class TextTokenizer {
  private constructor(private readonly tok: Tokenizer) {}

  static load(tokenizerPath: string): TextTokenizer {
    let json: object;
    try {
      json = JSON.parse(readFileSync(tokenizerPath, 'utf8'));
    } catch (cause) {
      throw new ModelLoadError(`cannot read tokenizer ${tokenizerPath}`, { cause });
    }
    const cfgPath = join(dirname(tokenizerPath), 'tokenizer_config.json');
    const cfg = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, 'utf8')) : {};
    try {
      return new TextTokenizer(new Tokenizer(json, { clean_up_tokenization_spaces: false, ...cfg }));
    } catch (cause) {
      throw new ModelLoadError(`tokenizer ${tokenizerPath} is malformed`, { cause });
    }
  }

  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: readonly number[]): string {
    if (ids.length === 0) return '';
    return this.tok.decode([...ids], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /** A decoder for streaming: feed ids one round at a time, get back only complete new text. */
  stream(): StreamDecoder {
    return new StreamDecoder(this);
  }
}

/**
 * Incremental detokenisation. Byte-level tokens can split a UTF-8 character, so text is released
 * only up to the last complete character; a trailing U+FFFD waits for the next tokens.
 */
export class StreamDecoder {
  private ids: number[] = [];
  private emitted = 0;
  constructor(private readonly tok: TextTokenizer) {}

  push(newIds: readonly number[]): string {
    this.ids.push(...newIds);
    const text = this.tok.decode(this.ids);
    let end = text.length;
    while (end > this.emitted && text.charCodeAt(end - 1) === 0xfffd) end--;
    const out = text.slice(this.emitted, end);
    this.emitted = end;
    return out;
  }

  /** Whatever is left, replacement characters included, once generation has ended. */
  flush(): string {
    const text = this.tok.decode(this.ids);
    const out = text.slice(this.emitted);
    this.emitted = text.length;
    return out;
  }
}
