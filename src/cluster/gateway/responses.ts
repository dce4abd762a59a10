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

/** One choice of a whole answer: its text, finish reason and log probabilities (null when not asked for). */
export interface ChoiceResult {
  readonly text: string;
  readonly finish: string;
  readonly logprobs: unknown;
}

/**
 * One request's answers in OpenAI's shapes: a chat's `chat.completion` and its
 * `chat.completion.chunk`s, or a completion's `text_completion` (its chunks too); `id`, `created`
 * (Unix seconds) and `model` are the same in each, and each choice carries its `index`.
 */
export function responseShapes(chat: boolean, id: string, created: number, model: string) {
  const object = chat ? 'chat.completion' : 'text_completion';
  return {
    /** A stream chunk of choice `index` with its next text (and those tokens' log probabilities), and on its last one the finish reason. */
    chunk: (index: number, delta: string, finish: string | null, logprobs: unknown = null) =>
      chat
        ? { id, object: 'chat.completion.chunk', created, model, choices: [{ index, delta: delta ? { content: delta } : {}, logprobs, finish_reason: finish }] }
        : { id, object, created, model, choices: [{ index, text: delta, finish_reason: finish, logprobs }] },
    /** A chat stream's first chunk of a choice, as OpenAI sends it: the role, so that even a reply with no text has one. */
    role: (index: number) => ({ id, object: 'chat.completion.chunk', created, model, choices: [{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] }),
    /** A stream's usage chunk (stream_options.include_usage), after the last choice. */
    usage: (u: Usage) => ({ id, object: chat ? 'chat.completion.chunk' : object, created, model, choices: [], usage: u }),
    /** The whole answer of a request that did not stream. */
    body: (choices: readonly ChoiceResult[], u: Usage) => ({
      id,
      object,
      created,
      model,
      choices: choices.map((c, index) =>
        chat ? { index, message: { role: 'assistant', content: c.text }, finish_reason: c.finish, logprobs: c.logprobs } : { index, text: c.text, finish_reason: c.finish, logprobs: c.logprobs },
      ),
      usage: u,
    }),
  };
}
