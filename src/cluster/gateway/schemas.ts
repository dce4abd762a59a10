import { z } from 'zod';
import { MODES } from '../../engine/presets.ts';
import { VERIFICATIONS, type Verification } from '../../kernels/noise.ts';
import { DRAFTINGS, type Drafting } from '../../engine/async-cascade.ts';
import { MAX_TOP_LOGPROBS } from '../../kernels/sampling.ts';
import { CHAT_ROLES } from '../../models/chat-template.ts';
import { HttpError } from './errors.ts';
import { describeIssues } from '../../issues.ts';

/** The cascade extension of a request body (OpenAI fields stay standard). */
const CascadeFields = z
  .object({
    mode: z.enum(MODES).optional(),
    drafters: z.array(z.string().min(1)).optional(),
    k_matrix: z.union([z.literal('auto'), z.array(z.array(z.number().int().min(0)))]).optional(),
    lenience: z.number().min(1).optional(),
    mag_first: z.number().int().min(1).optional(),
    verification: z.enum(VERIFICATIONS as [Verification, ...Verification[]]).optional(),
    drafting: z.enum(DRAFTINGS as [Drafting, ...Drafting[]]).optional(),
    outcome_branches: z.boolean().optional(),
    level_below: z.boolean().optional(),
  })
  .strict()
  .optional();

/** Token id → bias, as OpenAI sends logit_bias (JSON object keys are strings). */
const LogitBias = z.record(z.string(), z.number().min(-100).max(100)).superRefine((bias, ctx) => {
  // checked here, not as the record's key schema, whose own message ("Invalid key in record") hides this one
  for (const id of Object.keys(bias)) {
    if (!/^(0|[1-9]\d{0,9})$/.test(id) || Number(id) > 0xffffffff) ctx.addIssue({ code: 'custom', path: [id], message: 'logit_bias keys are token ids below 2^32, written without leading zeros ("013" and "13" would be one token)' });
  }
});

/** Most choices (`n`) one request may ask for: each is a request of its own to the cluster. */
export const MAX_CHOICES = 16;

const Sampling = {
  model: z.string().optional(),
  max_tokens: z.number().int().min(1).optional(),
  max_completion_tokens: z.number().int().min(1).optional(),
  temperature: z.number().min(0).max(2).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  top_k: z.number().int().min(0).optional(),
  // vLLM's extensions, and OpenAI's penalties: logits processors every cascade level applies
  min_p: z.number().min(0).max(1).optional(),
  repetition_penalty: z.number().gt(0).optional(),
  presence_penalty: z.number().min(-2).max(2).optional(),
  frequency_penalty: z.number().min(-2).max(2).optional(),
  logit_bias: LogitBias.optional(),
  seed: z.number().int({ error: 'seed must be an integer of at most 53 bits' }).optional(),
  stream: z.boolean().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).strict().optional(),
  // choices: n jobs of one prompt, each with its own seed (seed + index when the request gives one)
  n: z.number().int().min(1).max(MAX_CHOICES, `n may be at most ${MAX_CHOICES}`).optional(),
  user: z.string().optional(),
  // stop strings (OpenAI: up to 4), cut exactly where target-only decoding's text would stop
  // (one string is a list of one, so that the limit and emptiness are named whichever form is sent)
  stop: z.preprocess((v) => (typeof v === 'string' ? [v] : v), z.array(z.string().min(1, 'a stop string may not be empty')).max(4, 'at most 4 stop strings')).optional(),
  cascade: CascadeFields,
};

/** stream_options only with stream: true, as vLLM checks it (OpenAI refuses it too); an empty object is no option. */
const streamOptionsNeedStream = (b: { stream?: boolean; stream_options?: object }) => b.stream === true || b.stream_options === undefined || Object.keys(b.stream_options).length === 0;
const STREAM_OPTIONS_ISSUE = { message: 'stream_options is only allowed with stream: true', path: ['stream_options'] };

/** How deep a request body may nest (its deepest field, a chat message's content part, is 4 levels down). */
const MAX_DEPTH = 32;

/**
 * A request body with its null fields dropped, at any depth (`max_tokens: null`, `stop: null`, a
 * message's `name: null`, `stream_options.include_usage: null`): clients send null for "unset",
 * which OpenAI and vLLM accept. HttpError 400 past MAX_DEPTH.
 */

function withoutNulls(body: unknown, depth = 0): unknown {
  // no field of the API nests deeper than a few levels; a body that does would only run the validators out of stack
  if (depth > MAX_DEPTH) throw new HttpError(400, `invalid request: the body nests deeper than ${MAX_DEPTH} levels`);
  if (Array.isArray(body)) return body.map((v) => withoutNulls(v, depth + 1));
  if (body === null || typeof body !== 'object') return body;
  return Object.fromEntries(Object.entries(body).flatMap(([k, v]) => (v === null ? [] : [[k, withoutNulls(v, depth + 1)]])));
}

/** A prompt of token ids, as the OpenAI API takes it (`prompt: number[]`, or one such list in a list), fed as it is. */
const TokenIds = z.array(z.number().int().min(0)).min(1);
export const CompletionBody = z
  .object({
    ...Sampling,
    prompt: z.union([z.string().min(1, 'prompt is empty: there is no token to continue from'), z.array(z.string().min(1)).length(1), TokenIds, z.array(TokenIds).length(1)], {
      error: (issue) =>
        issue.input === undefined
          ? 'prompt is required'
          : 'prompt must be a non-empty string, token ids, or a list holding one of those (one prompt per request: send several as several requests, or use n for several completions of one)',
    }),
    /** Completions' log probabilities: how many alternatives per token (OpenAI allows 0..5, vLLM more; 0 = the token's own only). */
    logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).optional(),
    /** The prompt's text before the completion's. */
    echo: z.boolean().optional(),
  })
  .strict()
  .refine(streamOptionsNeedStream, STREAM_OPTIONS_ISSUE);
export type CompletionBody = z.infer<typeof CompletionBody>;
/**
 * A chat message's content: a string, or OpenAI's array of content parts, whose text parts are
 * joined; any other part (an image, audio, a file) is refused naming its type.
 */
export const Content = z.union([
  z.string(),
  z.array(
    z.object({ type: z.string(), text: z.string().optional() }).passthrough().superRefine((part, ctx) => {
      if (part.type !== 'text') ctx.addIssue({ code: 'custom', message: `content parts of type "${part.type}" are not supported (text only)` });
      else if (part.text === undefined) ctx.addIssue({ code: 'custom', message: 'a text content part needs its text', path: ['text'] });
    }),
  ),
], { error: (issue) => (issue.input === undefined ? undefined : 'expected a string or an array of text parts ({"type": "text", "text": ...})') });
export type Content = z.infer<typeof Content>;

/** A chat message: one of OpenAI's roles (CHAT_ROLES), its content, and the fields tool messages carry. */
export const Message = z
  .object({ role: z.enum(CHAT_ROLES), content: Content, name: z.string().optional(), tool_call_id: z.string().optional() })
  .strict();
export type Message = z.infer<typeof Message>;
export const ChatBody = z
  .object({
    ...Sampling,
    messages: z.array(Message, { error: (issue) => (issue.input === undefined ? 'messages is required (a chat request; /v1/completions takes a prompt)' : undefined) }).min(1),
    /** Chat's log probabilities: whether to return them, and how many alternatives per token. */
    logprobs: z.boolean().optional(),
    top_logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).optional(),
  })
  .strict()
  .refine((b) => !b.top_logprobs || b.logprobs === true, { message: 'top_logprobs needs logprobs: true', path: ['top_logprobs'] })
  .refine(streamOptionsNeedStream, STREAM_OPTIONS_ISSUE);
export type ChatBody = z.infer<typeof ChatBody>;

/** `stop` as a list (a string, a list, or unset). */
export const stopStrings = (stop: string | readonly string[] | undefined): readonly string[] => (stop === undefined ? [] : typeof stop === 'string' ? [stop] : stop);

/**
 * OpenAI request parameters this server knows and does not implement, with why: a client that sends
 * one is told so by name (not that the parameter is unknown), and nothing is silently ignored.
 */
const FUNCTION_CALLING = 'function calling is not supported by this server (it parses no tool calls from the output)';
const UNSUPPORTED: Readonly<Record<string, string>> = {
  tools: `${FUNCTION_CALLING}: send no tools (or tools: [])`,
  tool_choice: `${FUNCTION_CALLING}: leave tool_choice out (or send "none")`,
  parallel_tool_calls: FUNCTION_CALLING,
  functions: FUNCTION_CALLING,
  function_call: FUNCTION_CALLING,
  response_format: 'structured output is not supported by this server: it decodes free text only (no constrained decoding); leave response_format out or send {"type": "text"}',
  best_of: 'best_of is not supported by this server: use n for several completions, each its own request',
  suffix: 'suffix (insertion) is not supported by this server: the models complete left to right only',
  prediction: 'predicted outputs are not supported by this server (its drafters predict the output already: cascade field, docs/api.md)',
  audio: 'audio output is not supported by this server: text only',
  modalities: 'output modalities other than text are not supported by this server',
  store: 'stored completions are not supported by this server (it keeps no completion after answering it): leave store out or send false',
  metadata: 'metadata tags stored completions, which this server does not keep: send an object of strings (taken and dropped) or leave it out',
  service_tier: 'this server has one service tier: leave service_tier out or send "auto" or "default"',
  reasoning_effort: 'reasoning_effort is for reasoning models: the served model has no reasoning mode',
};

/** Values of UNSUPPORTED parameters that ask for what this server does anyway: taken, and dropped. */
const NO_OP: Readonly<Record<string, (value: unknown) => boolean>> = {
  tools: (v) => Array.isArray(v) && v.length === 0,
  functions: (v) => Array.isArray(v) && v.length === 0,
  tool_choice: (v) => v === 'none',
  function_call: (v) => v === 'none',
  parallel_tool_calls: (v) => typeof v === 'boolean',
  response_format: (v) => JSON.stringify(v) === '{"type":"text"}',
  modalities: (v) => Array.isArray(v) && v.every((m) => m === 'text'),
  store: (v) => v === false,
  metadata: (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string'),
  service_tier: (v) => v === 'auto' || v === 'default',
};

/** `body` without the UNSUPPORTED parameters whose values change nothing (NO_OP); any other of them is a 400 naming it. */
function withoutUnsupported(body: unknown): unknown {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return body;
  const kept: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(body)) {
    const why = UNSUPPORTED[key];
    if (!why) kept[key] = value;
    else if (!NO_OP[key]?.(value)) throw new HttpError(400, `invalid request: ${why}`, 'invalid_request_error', key);
  }
  return kept;
}

/** `body` (nulls dropped) validated against `schema`; a body that fails is a 400 naming the first bad field. */
export function parse<T>(schema: z.ZodType<T>, body: unknown): T {
  // Fastify hands a text/plain body over as a string
  if (typeof body === 'string') throw new HttpError(400, 'invalid request: the request body must be a JSON object, sent with content-type: application/json', 'invalid_request_error', null);
  const r = schema.safeParse(withoutUnsupported(withoutNulls(body)));
  if (!r.success) {
    const issue = r.error.issues[0]!;
    // an unknown field is the param at fault, as OpenAI names it
    const param = z.core.toDotPath(issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0]!] : issue.path);
    throw new HttpError(400, `invalid request: ${describeIssues(r.error, { noun: 'parameter', root: 'the request body' })}`, 'invalid_request_error', param || null);
  }
  return r.data;
}
