import type { usage } from './usage.ts';

type Usage = ReturnType<typeof usage>;

/**
 * The API's finish_reason for the engine's: `stop` (EOS) and `length` (max_tokens) as OpenAI's, and
 * a request cancelled before either (its cancel subject, a client gone) as `abort`, vLLM's word:
 * never `length`, which clients read as "ask for more".
 */
export function apiFinishReason(reason: string): 'stop' | 'length' | 'abort' {
  if (reason === 'stop' || reason === 'length') return reason;
  if (reason === 'cancelled') return 'abort';
  throw new Error(`the coordinator reported an unknown finish reason "${reason}"`);
}

/**
 * One request's answers in OpenAI's shapes, one choice (index 0): a chat's `chat.completion` and its
 * `chat.completion.chunk`s, or a completion's `text_completion` (its chunks too); `id`, `created`
 * (Unix seconds) and `model` are the same in each.
 */
export function responseShapes(chat: boolean, id: string, created: number, model: string) {
  const object = chat ? 'chat.completion' : 'text_completion';
  return {
    /** A stream chunk with the next text, and on the last one the finish reason. */
    chunk: (delta: string, finish: string | null) =>
      chat
        ? { id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta: delta ? { content: delta } : {}, finish_reason: finish }] }
        : { id, object, created, model, choices: [{ index: 0, text: delta, finish_reason: finish, logprobs: null }] },
    /** A chat stream's first chunk, as OpenAI sends it: the role, so that even a reply with no text has one. */
    role: () => ({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }),
    /** A stream's usage chunk (stream_options.include_usage), after the last choice. */
    usage: (u: Usage) => ({ id, object: chat ? 'chat.completion.chunk' : object, created, model, choices: [], usage: u }),
    /** The whole answer of a request that did not stream. */
    body: (content: string, finish: string, u: Usage) => {
      const choice = chat ? { index: 0, message: { role: 'assistant', content }, finish_reason: finish, logprobs: null } : { index: 0, text: content, finish_reason: finish, logprobs: null };
      return { id, object, created, model, choices: [choice], usage: u };
    },
  };
}
