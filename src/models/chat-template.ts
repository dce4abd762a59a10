import { Template } from '@huggingface/jinja';
import { InvalidArgumentError } from '../errors.ts';

/** One chat message as templates read it (`message['role']`, `message['content']`). */
export interface ChatMessage {
  readonly role: string;
  readonly content: string;
  readonly name?: string;
}

/**
 * The special-token variables a template sees, as transformers.js's `apply_chat_template` passes them
 * (its SPECIAL_TOKEN_ATTRIBUTES): each one the tokenizer config gives, as its text.
 */
/** OpenAI's chat roles, which the gateway and `cascade generate --message`/`--chat-file` take: `developer` is the system role of newer models; `tool` messages go to the chat template as they are. */
export const CHAT_ROLES = ['system', 'developer', 'user', 'assistant', 'tool'] as const;

/** A role as the chat template takes it: `developer` as `system`, the others as they are. */
export const templateRole = (role: string): string => (role === 'developer' ? 'system' : role);

export const SPECIAL_TOKEN_ATTRIBUTES = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;
export type SpecialTokens = Partial<Record<(typeof SPECIAL_TOKEN_ATTRIBUTES)[number], string>>;

/**
 * A model's Jinja chat template, rendered with `@huggingface/jinja` exactly as transformers.js's
 * `apply_chat_template` does: variables `messages`, `add_generation_prompt`, `tools` and `documents`
 * (null here), and the special tokens; `raise_exception(msg)` and `strftime_now` are the library's
 * globals; blocks are trimmed (`trim_blocks`, `lstrip_blocks`) as in transformers. The rendered text is
 * meant to be tokenised without special tokens (transformers passes `add_special_tokens=False`): a
 * template that wants a BOS writes `{{ bos_token }}` itself.
 */
export class ChatTemplate {
  private readonly compiled: Template;

  /** Compiles `source`; throws the parser's Error on a syntax error (callers name the file). */
  constructor(
    readonly source: string,
    private readonly specialTokens: SpecialTokens,
  ) {
    this.compiled = new Template(source);
  }

  /**
   * The prompt text for `messages`. A template that refuses them (`raise_exception`, e.g. roles out of
   * order) or fails on them is an InvalidArgumentError carrying the template's message.
   */
  render(messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    try {
      return this.compiled.render({
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: options.addGenerationPrompt ?? true,
        tools: null,
        documents: null,
        ...this.specialTokens,
      });
    } catch (cause) {
      throw new InvalidArgumentError(`the model's chat template refused the messages: ${(cause as Error).message}`, { cause });
    }
  }
}
