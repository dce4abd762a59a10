import { InvalidArgumentError } from '../../errors.ts';
import { templateRole } from '../../models/chat-template.ts';
import type { TokenizerThread } from '../../models/tokenizer-thread.ts';
import { HttpError } from './errors.ts';
import type { Content, Message } from './schemas.ts';

/** A content's text: a string as it is, text parts joined. */
export const joinContent = (c: Content): string => (typeof c === 'string' ? c : c.map((p) => p.text!).join(''));

/** The messages as the chat template takes them: content joined, `developer` as `system`. */
export const templateMessages = (messages: readonly Message[]) =>
  messages.map((m) => ({ role: templateRole(m.role), content: joinContent(m.content), ...(m.name !== undefined ? { name: m.name } : {}) }));

/** What a request is prompted with: a completion's text, its token ids, or a chat's templated messages. */
export type PromptInput = { prompt: string } | { promptIds: readonly number[] } | { messages: readonly { role: string; content: string; name?: string }[] };

/**
 * A request's prompt ids: a completion's prompt through the tokenizer's add_bos_token convention, a
 * chat's messages through the model's chat template; a template that refuses them (or its absence) is
 * a 400. A text certainly too long for `maxPositions` (TextTokenizer.minTokens) is a 400 before it is
 * tokenized; a long one is tokenized in `thread`'s worker, off the event loop.
 */
export async function promptIdsOf(thread: TokenizerThread, input: PromptInput, maxPositions: number | undefined): Promise<number[]> {
  // token ids are fed as they are (no BOS added), as `cascade generate --prompt-ids` and vLLM feed them
  if ('promptIds' in input) return [...input.promptIds];
  const { tokenizer } = thread;
  let text: string;
  try {
    text = 'prompt' in input ? input.prompt : tokenizer.renderChat(input.messages);
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new HttpError(400, err.message, 'invalid_request_error', 'messages');
    throw err;
  }
  const param = 'prompt' in input ? 'prompt' : 'messages';
  const atLeast = tokenizer.minTokens(text);
  if (maxPositions !== undefined && atLeast >= maxPositions) {
    throw new HttpError(400, `the ${param === 'messages' ? "chat template's prompt" : 'prompt'} (${text.length} characters, at least ${atLeast} tokens) leaves no room for a completion in the model's context of ${maxPositions} tokens`, 'invalid_request_error', param);
  }
  const ids = await thread.encode(text);
  return 'prompt' in input ? tokenizer.withBos(ids) : ids;
}
