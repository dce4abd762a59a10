import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { InvalidArgumentError, ModelLoadError } from '../errors.ts';
import type { ChatMessage, ChatTemplate } from './chat-template.ts';
import { loadTokenizerConfig } from './tokenizer-config.ts';

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** GPT-2's byte-level table inverted: the character each byte is spelled with in a piece → the byte. */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCharCode(printable(b) ? b : 256 + extra++), b);
  return map;
})();

/** Whether a tokenizer.json decoder is byte-level (itself, or inside a Sequence). */
function usesByteLevel(decoder: unknown): boolean {
  if (!decoder || typeof decoder !== 'object') return false;
  const d = decoder as { type?: unknown; decoders?: unknown };
  return d.type === 'ByteLevel' || (d.type === 'Sequence' && Array.isArray(d.decoders) && d.decoders.some(usesByteLevel));
}

/** A normalizer that never deletes text and shrinks it at most 4× (NFC composes U+1F82 from 4 code units): see boundedLength. */
function keepsText(normalizer: unknown): boolean {
  if (normalizer === null || normalizer === undefined) return true;
  const n = normalizer as { type?: unknown; normalizers?: unknown; pattern?: { String?: unknown }; content?: unknown };
  if (n.type === 'Sequence') return Array.isArray(n.normalizers) && n.normalizers.every(keepsText);
  if (n.type === 'Replace') return typeof n.pattern?.String === 'string' && typeof n.content === 'string' && n.content.length >= n.pattern.String.length;
  return ['NFC', 'NFD', 'NFKC', 'NFKD', 'Lowercase', 'Prepend'].includes(n.type as string);
}

/** A pre-tokenizer that only splits (never removes) text. */
function splitsOnly(pre: unknown): boolean {
  if (pre === null || pre === undefined) return true;
  const p = pre as { type?: unknown; pretokenizers?: unknown; behavior?: unknown; invert?: unknown };
  if (p.type === 'Sequence') return Array.isArray(p.pretokenizers) && p.pretokenizers.every(splitsOnly);
  if (p.type === 'Split') return p.invert !== true && p.behavior !== 'Removed';
  return ['ByteLevel', 'Digits', 'Punctuation'].includes(p.type as string);
}

/**
 * Whether every token of this tokenizer.json spells at least one of the text's characters after a
 * normalization that shrinks text at most 4×, so that minTokens is a lower bound: byte-level BPE with
 * every byte in its vocabulary (no unknown text dropped or fused), pre-tokenizers that only split,
 * a normalizer that keeps text (keepsText), no added token that strips the whitespace beside it, and no
 * `remove_space`. Other tokenizers (SentencePiece's, WordPiece, Unigram, CLIP's whitespace collapse)
 * have no bound and are always tokenized.
 */
function boundedLength(json: Record<string, unknown>, config: Record<string, unknown>): boolean {
  const model = json.model as { type?: unknown; vocab?: Record<string, unknown> } | undefined;
  const added = Array.isArray(json.added_tokens) ? (json.added_tokens as { lstrip?: unknown; rstrip?: unknown }[]) : [];
  return (
    model?.type === 'BPE' &&
    usesByteLevel(json.decoder) &&
    [...BYTE_OF_CHAR.keys()].every((c) => model.vocab?.[c] !== undefined) &&
    splitsOnly(json.pre_tokenizer) &&
    keepsText(json.normalizer) &&
    [...added, ...Object.values((config.added_tokens_decoder ?? {}) as Record<string, { lstrip?: unknown; rstrip?: unknown }>)].every((t) => t?.lstrip !== true && t?.rstrip !== true) &&
    config.remove_space !== true
  );
}

/**
 * A Hugging Face `tokenizer.json` loaded with tokenizers.js, with the conventions of the
 * `tokenizer_config.json` beside it: `add_bos_token` for plain prompts, the special tokens and the
 * chat template. Decoding is lossless (no space clean-up).
 */
export class TextTokenizer {
  private constructor(
    private readonly tok: Tokenizer,
    /** The BOS id (`bos_token` of tokenizer_config.json), when the config names one. */
    readonly bosId: number | undefined,
    /** tokenizer_config.json's `add_bos_token`: encodePrompt starts a prompt with the BOS. */
    readonly addBos: boolean,
    /** The model's chat template (tokenizer_config.json's `chat_template` or chat_template.jinja). */
    readonly chatTemplate: ChatTemplate | undefined,
    private readonly dir: string,
    /** The decoder is byte-level (GPT-2's byte-to-character table): a token's piece spells its bytes. */
    private readonly byteLevel = false,
    /** The model's folder, where a chat template belongs (forModel); `dir` may be its tokenizer's. */
    private readonly modelDir?: string,
    /** Every token spells some of the text (boundedLength): minTokens has a bound. */
    private readonly bounded = false,
    /** The files it was loaded from (`load`'s arguments), so a worker thread can load the same (TokenizerThread). */
    readonly source: { readonly tokenizerPath: string; readonly configDir?: string; readonly modelDir?: string } = { tokenizerPath: '' },
  ) {}

  private longestPiece: number | undefined;

  /**
   * The tokenizer of a model directory: its tokenizer.json, with the tokenizer_config.json (and
   * chat_template.jinja) of the model's own directory when it has one, else those beside the tokenizer.
   */
  static forModel(spec: { readonly dir: string; readonly tokenizerPath: string }): TextTokenizer {
    const own = ['tokenizer_config.json', 'chat_template.jinja'].some((f) => existsSync(join(spec.dir, f)));
    return TextTokenizer.load(spec.tokenizerPath, own ? spec.dir : undefined, spec.dir);
  }

  /** `configDir`: where tokenizer_config.json and chat_template.jinja are read (default: beside the tokenizer); `modelDir`: the model's folder, named when it has no chat template. */
  static load(tokenizerPath: string, configDir?: string, modelDir?: string): TextTokenizer {
    let json: object;
    try {
      json = JSON.parse(readFileSync(tokenizerPath, 'utf8'));
    } catch (cause) {
      throw new ModelLoadError(`cannot read tokenizer ${tokenizerPath}`, { cause });
    }
    const dir = configDir ?? dirname(tokenizerPath);
    const cfg = loadTokenizerConfig(dir);
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json, { clean_up_tokenization_spaces: false, ...cfg.raw });
    } catch (cause) {
      throw new ModelLoadError(`tokenizer ${tokenizerPath} is malformed`, { cause });
    }
    const cfgPath = join(dir, 'tokenizer_config.json');
    const bosText = cfg.specialTokens.bos_token;
    const bosId = bosText === undefined ? undefined : tok.token_to_id(bosText);
    if (bosText !== undefined && bosId === undefined) throw new ModelLoadError(`${cfgPath} field bos_token: "${bosText}" is not a token of ${tokenizerPath}`);
    if (cfg.addBosToken && bosId === undefined) throw new ModelLoadError(`${cfgPath} field add_bos_token is true but the file names no bos_token`);
    return new TextTokenizer(tok, bosId, cfg.addBosToken, cfg.chatTemplate, dir, usesByteLevel((json as { decoder?: unknown }).decoder), modelDir, boundedLength(json as Record<string, unknown>, cfg.raw as Record<string, unknown>), { tokenizerPath, ...(configDir !== undefined ? { configDir } : {}), ...(modelDir !== undefined ? { modelDir } : {}) });
  }

  /** The text's own tokens, no special tokens added (a special token's text in it is that token). */
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * A plain prompt's ids: its tokens, starting with the BOS exactly once when tokenizer_config.json
   * says `add_bos_token` (not added again when the text already begins with the BOS token).
   */
  encodePrompt(text: string): number[] {
    return this.withBos(this.encode(text));
  }

  /** A plain prompt's ids from its text's tokens (`encode`'s): the BOS first, as encodePrompt adds it. */
  withBos(ids: number[]): number[] {
    return this.addBos && this.bosId !== undefined && ids[0] !== this.bosId ? [this.bosId, ...ids] : ids;
  }

  /**
   * A lower bound on `encode(text)`'s length, without tokenizing: every token spells at least one
   * character (UTF-16 code unit) and at most as many as its longest piece in the vocabulary, added
   * tokens included, and a factor of 4 covers normalizers that compose characters (NFC makes U+1F82
   * of 4 code units). 0 (no bound) for tokenizers where a token may stand for text that was dropped
   * or fused (boundedLength: only byte-level BPE qualifies). For refusing, at once, a prompt too long
   * for the context.
   */
  minTokens(text: string): number {
    if (!this.bounded) return 0;
    if (this.longestPiece === undefined) {
      let longest = 1;
      // (ids with gaps come back as undefined keys)
      for (const piece of this.tok.get_vocab(true).keys()) if (typeof piece === 'string') longest = Math.max(longest, piece.length);
      this.longestPiece = longest;
    }
    return Math.ceil(text.length / (4 * this.longestPiece));
  }

  /**
   * A chat's prompt ids: the model's chat template rendered with the generation prompt, then
   * tokenised without adding special tokens, as transformers' `apply_chat_template` does (a template
   * that wants a BOS writes it). InvalidArgumentError when the model has no template or refuses the messages.
   */
  encodeChat(messages: readonly ChatMessage[]): number[] {
    return this.encode(this.renderChat(messages));
  }

  /** The chat template's text for `messages`, ending in the generation prompt (see encodeChat). */
  renderChat(messages: readonly ChatMessage[]): string {
    if (!this.chatTemplate) {
      // a model folder with neither file reads them beside its tokenizer (forModel); the folder's name only, since the gateway answers this to clients
      throw new InvalidArgumentError(
        `the model has no chat template: its folder ${basename(this.modelDir ?? this.dir)} holds no chat_template.jinja and no tokenizer_config.json with a chat_template${this.modelDir !== undefined && this.modelDir !== this.dir ? ', nor does its tokenizer\'s' : ''}; add one to the model's folder, or send a plain prompt`,
      );
    }
    return this.chatTemplate.render(messages);
  }

  decode(ids: readonly number[]): string {
    if (ids.length === 0) return '';
    return this.tok.decode([...ids], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /**
   * A token's own bytes: those its piece stands for under a byte-level decoder, the byte of a
   * byte-fallback piece (`<0xE2>`), a SentencePiece piece with its `▁` as spaces, otherwise the
   * UTF-8 of its decoded text. A token that is part of
   * a multi-byte character has bytes that are not UTF-8 on their own.
   */
  tokenBytes(id: number): Uint8Array {
    const piece = this.tok.id_to_token(id);
    const fallback = piece === undefined ? undefined : /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (fallback) return Uint8Array.of(parseInt(fallback[1]!, 16));
    if (this.byteLevel && piece !== undefined && [...piece].every((c) => BYTE_OF_CHAR.has(c))) return Uint8Array.from([...piece].map((c) => BYTE_OF_CHAR.get(c)!));
    // SentencePiece's word boundary: decoding one token alone would strip its leading space (Metaspace, Strip)
    if (!this.byteLevel && piece?.includes('\u2581')) return new TextEncoder().encode(piece.replaceAll('\u2581', ' '));
    return new TextEncoder().encode(this.decode([id]));
  }

  /**
   * A token's text as OpenAI's log probabilities name it: its bytes as UTF-8, or, when they are part
   * of a character, `bytes:` and their escapes (`bytes:\xe2\x80`). `bytes`: the token's, when the caller has them.
   */
  tokenText(id: number, bytes: Uint8Array = this.tokenBytes(id)): string {
    try {
      return STRICT_UTF8.decode(bytes);
    } catch {
      return 'bytes:' + [...bytes].map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('');
    }
  }

  /** A decoder for streaming: feed ids one round at a time, get back only complete new text. */
  stream(): StreamDecoder {
    return new StreamDecoder(this);
  }
}

/**
 * Incremental detokenisation by offsets, as vLLM's (detokenize_incrementally) and transformers'
 * TextStreamer do it: each push decodes only a window, the tokens since the last text released plus
 * the chunk before them (`prefix`), and releases what the window's text adds to the prefix's. The
 * prefix makes a tokenizer's context-dependent decoding (SentencePiece's leading space) come out as
 * the whole text's would; the window keeps a push O(new tokens), where decoding the whole output on
 * every chunk was quadratic. Byte-level tokens can split a UTF-8 character: while the window's text
 * ends in U+FFFD, nothing is released and the next tokens complete it, so a stream never carries a
 * replacement character for a character that arrives whole. The gateway and the CLI share it.
 */
export class StreamDecoder {
  private ids: number[] = [];
  /** ids[prefix..read) were decoded last time as context; ids[read..] are not released yet. */
  private prefix = 0;
  private read = 0;
  constructor(private readonly tok: TextTokenizer) {}

  /** The text that `newIds` complete (possibly empty: a character still in the middle of its bytes). */
  push(newIds: readonly number[]): string {
    this.ids.push(...newIds);
    const before = this.tok.decode(this.ids.slice(this.prefix, this.read));
    const now = this.tok.decode(this.ids.slice(this.prefix));
    if (now.length <= before.length || now.endsWith('\uFFFD')) return '';
    this.prefix = this.read;
    this.read = this.ids.length;
    return now.slice(before.length);
  }

  /** Whatever is left, replacement characters included, once generation has ended. */
  flush(): string {
    const before = this.tok.decode(this.ids.slice(this.prefix, this.read));
    const now = this.tok.decode(this.ids.slice(this.prefix));
    this.prefix = this.read = this.ids.length;
    return now.length > before.length ? now.slice(before.length) : '';
  }
}
