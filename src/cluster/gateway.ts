import { randomUUID, timingSafeEqual } from 'node:crypto';
import { context, trace } from '@opentelemetry/api';
import type { Queue } from 'bullmq';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { z } from 'zod';
import { DRAFT_TOP_K, MAX_WANT } from '../actors/model-actor.ts';
import { checkCascade } from '../engine/cascade.ts';
import { MODES, planCascade, type KSchedule } from '../engine/presets.ts';
import { DEFAULT_MAX_DRAFT } from '../engine/schedule.ts';
import { InvalidArgumentError } from '../errors.ts';
import { withProcessors, type SamplingParams } from '../kernels/sampling.ts';
import { resolveSampling, type GenerationDefaults } from '../models/generation-config.ts';
import type { TextTokenizer } from '../models/tokenizer.ts';
import { StopMatcher } from '../models/stop-strings.ts';
import { checkVocabularySizes } from '../models/vocabulary.ts';
import { jobOptions, type JobData, type RequestOutcome } from './coordinator.ts';
import { decode, encode, rowBytes } from './messages.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { RequestLog } from './redis-store.ts';
import { injectHeaders, tracer } from './tracing.ts';
import { subjects, type Transport } from './transport.ts';

export interface GatewayOptions {
  readonly transport: Transport;
  readonly queue: Queue;
  readonly log: RequestLog;
  /** The target's tokenizer: its add_bos_token encodes completions' prompts, its chat template chats. */
  readonly tokenizer: TextTokenizer;
  readonly metrics: GatewayMetrics;
  /**
   * The family: the model id served, its drafters (for modes), context length, and the target's
   * sampling defaults (its generation_config.json), which fill what a request leaves out before the
   * API's own defaults do (API_SAMPLING), and its vocabulary (sampled drafts' rows must fit a message).
   */
  readonly model: {
    readonly target: string;
    readonly drafters: readonly string[];
    readonly maxPositions?: number;
    readonly generation?: GenerationDefaults;
    /** The target's vocab_size. */
    readonly vocabSize?: number;
    /** Every model's vocab_size by name (target and drafters), to check a request's drafter order. */
    readonly vocabSizes?: Readonly<Record<string, number>>;
  };
  /** Accepted bearer keys; empty = no authentication (local use only). */
  readonly apiKeys?: readonly string[];
  /** Requests in flight before 503 + Retry-After. */
  readonly maxInFlight?: number;
  /** Longest a request may take, end to end. */
  readonly requestTimeoutMs?: number;
  /** Default decoding mode of requests that name none. */
  readonly defaultMode?: (typeof MODES)[number];
  /** Health: resolves when NATS and Redis answer. */
  readonly health?: () => Promise<Record<string, unknown>>;
}

/** The cascade extension of a request body (OpenAI fields stay standard). */
const CascadeFields = z
  .object({
    mode: z.enum(MODES).optional(),
    drafters: z.array(z.string().min(1)).optional(),
    k_matrix: z.union([z.literal('auto'), z.array(z.array(z.number().int().min(0)))]).optional(),
    lenience: z.number().min(1).optional(),
  })
  .strict()
  .optional();

/** Token id → bias, as OpenAI sends logit_bias (JSON object keys are strings). */
const LogitBias = z.record(z.string().regex(/^\d{1,10}$/, 'logit_bias keys are token ids').refine((id) => Number(id) <= 0xffffffff, 'logit_bias keys are token ids below 2^32'), z.number().min(-100).max(100));

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
  seed: z.number().int().refine(Number.isSafeInteger, 'seed must be an integer of at most 53 bits').optional(),
  stream: z.boolean().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).optional(),
  n: z.literal(1).optional(),
  user: z.string().optional(),
  // stop strings (OpenAI: up to 4), cut exactly where target-only decoding's text would stop
  // (one string is a list of one, so that the limit and emptiness are named whichever form is sent)
  stop: z.preprocess((v) => (typeof v === 'string' ? [v] : v), z.array(z.string().min(1, 'a stop string may not be empty')).max(4, 'at most 4 stop strings')).optional(),
  // accepted where they change nothing: no log probabilities, no echo
  logprobs: z.literal(false, { error: 'log probabilities are not returned yet: send logprobs false or leave it out' }).optional(),
  top_logprobs: z.literal(0, { error: 'log probabilities are not returned yet: send top_logprobs 0 or leave it out' }).optional(),
  echo: z.literal(false).optional(),
  cascade: CascadeFields,
};

/**
 * A request body with its null fields dropped, at any depth (`max_tokens: null`, `stop: null`, a
 * message's `name: null`, `stream_options.include_usage: null`): clients send null for "unset",
 * which OpenAI and vLLM accept.
 */
function withoutNulls(body: unknown): unknown {
  if (Array.isArray(body)) return body.map(withoutNulls);
  if (body === null || typeof body !== 'object') return body;
  return Object.fromEntries(Object.entries(body).flatMap(([k, v]) => (v === null ? [] : [[k, withoutNulls(v)]])));
}

/** A prompt of token ids, as the OpenAI API takes it (`prompt: number[]`, or one such list in a list), fed as it is. */
const TokenIds = z.array(z.number().int().min(0)).min(1);
const CompletionBody = z.object({ ...Sampling, prompt: z.union([z.string().min(1), z.array(z.string().min(1)).length(1), TokenIds, z.array(TokenIds).length(1)]) }).strict();
/**
 * A chat message's content: a string, or OpenAI's array of content parts, whose text parts are
 * joined; any other part (an image, audio, a file) is refused naming its type.
 */
const Content = z.union([
  z.string(),
  z.array(
    z.object({ type: z.string(), text: z.string().optional() }).passthrough().superRefine((part, ctx) => {
      if (part.type !== 'text' || part.text === undefined) ctx.addIssue({ code: 'custom', message: `content parts of type "${part.type}" are not supported (text only)` });
    }),
  ),
]);
const joinContent = (c: z.infer<typeof Content>): string => (typeof c === 'string' ? c : c.map((p) => p.text!).join(''));

/** OpenAI's roles: `developer` is the system role of newer models; `tool` messages go to the chat template as they are. */
const Message = z
  .object({ role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']), content: Content, name: z.string().optional(), tool_call_id: z.string().optional() })
  .strict();
const ChatBody = z
  .object({
    ...Sampling,
    messages: z.array(Message).min(1),
  })
  .strict();

/** `stop` as a list (a string, a list, or unset). */
const stopStrings = (stop: string | readonly string[] | undefined): readonly string[] => (stop === undefined ? [] : typeof stop === 'string' ? [stop] : stop);

/** The messages as the chat template takes them: content joined, `developer` as `system`. */
const templateMessages = (messages: readonly z.infer<typeof Message>[]) =>
  messages.map((m) => ({ role: m.role === 'developer' ? 'system' : m.role, content: joinContent(m.content), ...(m.name !== undefined ? { name: m.name } : {}) }));

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = 'invalid_request_error',
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function sendError(reply: FastifyReply, err: HttpError): FastifyReply {
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  return reply.code(err.status).send({ error: { message: err.message, type: err.type, param: err.param, code: err.status } });
}

/** K entries are how many tokens a drafter is asked for at once: at most MAX_WANT, what an actor's propose takes. */
function checkKBound(kMatrix: KSchedule): void {
  if (kMatrix === 'auto') return;
  kMatrix.forEach((row, r) =>
    row.forEach((k, c) => {
      if (k > MAX_WANT) throw new InvalidArgumentError(`cascade.k_matrix[${r}][${c}] is ${k}: a K entry may be at most ${MAX_WANT}, the most tokens one drafter call proposes`);
    }),
  );
}

/**
 * A sampled request's drafts travel with their q rows: a reviewer is sent up to the largest K entry's
 * worth at once (DEFAULT_MAX_DRAFT under K auto), each a draft actor's top DRAFT_TOP_K, sparse (see
 * messages.ts). Those rows must fit the budget RemoteLevel gives them, half the transport's payload
 * limit; a K matrix that cannot is refused here rather than sent one-hot (exact, but it would waste
 * the drafts). Greedy requests carry token ids only.
 */
export function checkRowBudget(kMatrix: KSchedule, sampling: SamplingParams, vocabSize: number, maxPayload: number): void {
  if (sampling.temperature === 0) return;
  const drafts = kMatrix === 'auto' ? DEFAULT_MAX_DRAFT : Math.max(0, ...kMatrix.flat());
  const entries = Math.min(vocabSize, sampling.topK > 0 ? Math.min(sampling.topK, DRAFT_TOP_K) : DRAFT_TOP_K);
  const bytes = 4 + drafts * rowBytes(vocabSize, entries);
  const budget = Math.floor(maxPayload / 2);
  if (bytes > budget) {
    const fits = Math.floor((budget - 4) / rowBytes(vocabSize, entries));
    throw new InvalidArgumentError(
      `cascade.k_matrix drafts up to ${drafts} tokens a round, whose distributions (${entries} entries each over a vocabulary of ${vocabSize}) take ${bytes} bytes: ` +
        `over the ${budget} bytes a message may give them (half the transport's ${maxPayload}-byte payload limit). ` +
        (fits > 0 ? `Use K entries of at most ${fits}, or raise NATS's max_payload` : `Not one sampled draft fits: raise NATS's max_payload`),
    );
  }
}

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
 * The API's sampling defaults, OpenAI's (temperature 1, no top-p or top-k filter), for what neither
 * the request nor the model's generation_config.json says.
 */
export const API_SAMPLING: SamplingParams = { temperature: 1, topP: 1, topK: 0 };

/**
 * A request's prompt ids: a completion's prompt through the tokenizer's add_bos_token convention, a
 * chat's messages through the model's chat template; a template that refuses them (or its absence) is a 400.
 */
function promptIdsOf(tokenizer: TextTokenizer, input: { prompt: string } | { promptIds: readonly number[] } | { messages: readonly { role: string; content: string; name?: string }[] }): number[] {
  if ('prompt' in input) return tokenizer.encodePrompt(input.prompt);
  // token ids are fed as they are (no BOS added), as `cascade generate --prompt-ids` and vLLM feed them
  if ('promptIds' in input) return [...input.promptIds];
  try {
    return tokenizer.encodeChat(input.messages);
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new HttpError(400, err.message, 'invalid_request_error', 'messages');
    throw err;
  }
}


/** A request's view of the coordinator's stream: tokens in order, deduplicated by offset. */
interface Submitted {
  readonly requestId: string;
  readonly promptTokens: number;
  /** Resolves with the outcome; tokens arrive through onTokens first. */
  readonly done: Promise<RequestOutcome>;
  cancel(): void;
}

/**
 * `cascade serve`: the OpenAI-compatible HTTP gateway (SPEC §7). Requests are validated, tokenized
 * and put on the BullMQ queue; a coordinator streams the tokens back over NATS; the gateway turns
 * them into text (SSE when streaming). Over `maxInFlight` it answers 503 with Retry-After; a client
 * that disconnects cancels its request (the coordinator stops and frees the actors' KV).
 */
export function buildGateway(options: GatewayOptions): FastifyInstance {
  const { transport, queue, log, tokenizer, metrics, model } = options;
  const maxInFlight = options.maxInFlight ?? 64;
  const timeoutMs = options.requestTimeoutMs ?? 600_000;
  const keys = (options.apiKeys ?? []).map((k) => Buffer.from(k));
  let inFlight = 0;
  const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024 });

  app.addHook('onRequest', async (req, reply) => {
    if (!keys.length || req.url === '/health' || req.url === '/live' || req.url === '/metrics') return;
    const header = req.headers.authorization ?? '';
    const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '');
    if (!keys.some((k) => k.length === given.length && timingSafeEqual(k, given))) {
      return sendError(reply, new HttpError(401, 'missing or invalid API key (send Authorization: Bearer <key>)', 'authentication_error'));
    }
  });

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    if (err instanceof HttpError) return sendError(reply, err);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    return sendError(reply, new HttpError(status, status === 500 ? `internal error: ${err.message}` : err.message, status === 500 ? 'server_error' : 'invalid_request_error'));
  });

  app.get('/live', async () => ({ status: 'ok' }));

  app.get('/health', async (_req, reply) => {
    try {
      const detail = (await options.health?.()) ?? {};
      return { status: 'ok', model: model.target, inFlight, ...detail };
    } catch (err) {
      return reply.code(503).send({ status: 'unavailable', message: (err as Error).message });
    }
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: model.target, object: 'model', created: 0, owned_by: 'cascade-cluster', drafters: model.drafters, max_model_len: model.maxPositions }],
  }));

  function parse<T>(schema: z.ZodType<T>, body: unknown): T {
    const r = schema.safeParse(withoutNulls(body));
    if (!r.success) {
      const issue = r.error.issues[0]!;
      throw new HttpError(400, `invalid request: ${z.prettifyError(r.error)}`, 'invalid_request_error', issue.path.join('.') || null);
    }
    return r.data;
  }

  /** Validates the decoding settings and builds the job; throws HttpError 400 on bad input. */
  function job(body: z.infer<typeof CompletionBody> | z.infer<typeof ChatBody>, input: Parameters<typeof promptIdsOf>[1]): JobData {
    if (body.model && body.model !== model.target) throw new HttpError(404, `model "${body.model}" is not served here (this gateway serves "${model.target}")`, 'invalid_request_error', 'model');
    const promptIds = promptIdsOf(tokenizer, input);
    if (!promptIds.length) throw new HttpError(400, 'the prompt is empty', 'invalid_request_error', 'prompt');
    const outside = model.vocabSize === undefined ? undefined : promptIds.find((id) => id >= model.vocabSize!);
    if (outside !== undefined) throw new HttpError(400, `prompt token id ${outside} is outside the vocabulary of ${model.vocabSize} tokens`, 'invalid_request_error', 'prompt');
    // unset: the rest of the context, as vLLM (16 where the context is unknown)
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? (model.maxPositions !== undefined ? Math.max(1, model.maxPositions - promptIds.length) : 16);
    if (model.maxPositions !== undefined && promptIds.length + maxTokens > model.maxPositions) {
      throw new HttpError(400, `prompt (${promptIds.length} tokens) plus max_tokens (${maxTokens}) exceeds the model's context of ${model.maxPositions} tokens`, 'invalid_request_error', 'max_tokens');
    }
    const sampling = withProcessors(resolveSampling({ temperature: body.temperature, topP: body.top_p, topK: body.top_k }, model.generation, API_SAMPLING), {
      minP: body.min_p,
      repetitionPenalty: body.repetition_penalty,
      presencePenalty: body.presence_penalty,
      frequencyPenalty: body.frequency_penalty,
      logitBias: body.logit_bias && Object.fromEntries(Object.entries(body.logit_bias).map(([id, v]) => [Number(id), v])),
    });
    const biasOutside = model.vocabSize === undefined ? undefined : Object.keys(sampling.logitBias ?? {}).find((id) => Number(id) >= model.vocabSize!);
    if (biasOutside !== undefined) throw new HttpError(400, `logit_bias names token id ${biasOutside}, outside the vocabulary of ${model.vocabSize} tokens`, 'invalid_request_error', 'logit_bias');
    let plan;
    try {
      plan = planCascade(
        { mode: body.cascade?.mode ?? options.defaultMode ?? 'csd', drafters: body.cascade?.drafters, kMatrix: body.cascade?.k_matrix, lenience: body.cascade?.lenience },
        model.drafters,
      );
      // shape checks only: the drafters are remote, so stand-ins carry their kind
      checkKBound(plan.kMatrix); // first: a K entry over the limit is named whatever the matrix's shape
      checkCascade({ drafters: plan.drafters.map((d) => (d === 'mag' ? { kind: 'mag' } : ({ kind: 'model' } as never))), kMatrix: plan.kMatrix, lenience: plan.lenience });
      const neural = plan.drafters.filter((d) => d !== 'mag');
      if (model.vocabSize !== undefined && neural.length) checkRowBudget(plan.kMatrix, sampling, model.vocabSize, transport.maxPayload);
      // a request may order the drafters itself: each must be at most as wide as the models above it
      const sizes = model.vocabSizes;
      if (sizes) checkVocabularySizes({ name: model.target, vocabSize: sizes[model.target]! }, neural.map((name) => ({ name, vocabSize: sizes[name]! })));
    } catch (err) {
      throw new HttpError(400, (err as Error).message, 'invalid_request_error', 'cascade');
    }
    return {
      requestId: `req-${randomUUID()}`,
      promptIds,
      maxTokens,
      sampling,
      seed: body.seed ?? Math.floor(Math.random() * 2 ** 53),
      stopAtEos: true,
      drafters: [...plan.drafters],
      kMatrix: plan.kMatrix === 'auto' ? 'auto' : plan.kMatrix.map((r) => [...r]),
      lenience: plan.lenience,
      trace: {},
      enqueuedAt: Date.now(),
    };
  }

  /** Enqueues a job and follows its stream; `onTokens` sees each new token once, in order. */
  async function submit(data: JobData, onTokens: (tokens: readonly number[]) => void): Promise<Submitted> {
    let have = 0;
    let lastHeard = Date.now();
    let settle!: { resolve: (o: RequestOutcome) => void; reject: (e: Error) => void };
    const done = new Promise<RequestOutcome>((resolve, reject) => (settle = { resolve, reject }));
    const take = (offset: number, tokens: readonly number[]) => {
      if (offset + tokens.length <= have) return;
      if (offset > have) {
        // a stream message was lost (NATS core is at-most-once): the tokens are in Redis
        void log.read(data.requestId).then((all) => take(0, all));
        return;
      }
      const fresh = tokens.slice(have - offset);
      have += fresh.length;
      onTokens(fresh);
    };
    const sub = transport.subscribe(subjects.stream(data.requestId), (frame) => {
      lastHeard = Date.now();
      try {
        const m = decode(frame);
        if (m.type === 'tokens') take(m.offset, m.tokens);
        else if (m.type === 'done') {
          const outcome = JSON.parse(m.stats) as RequestOutcome;
          const finish = () => (have >= outcome.generatedTokens ? settle.resolve(outcome) : void log.read(data.requestId).then((all) => (take(0, all), settle.resolve(outcome)), settle.reject));
          finish();
        } else if (m.type === 'failed') settle.reject(new HttpError(500, `generation failed: ${m.message}`, 'server_error'));
      } catch (err) {
        settle.reject(err as Error);
      }
    });
    if ('flush' in transport) await (transport as { flush(): Promise<void> }).flush();
    const timer = setTimeout(() => {
      cancel();
      settle.reject(new HttpError(504, `the request did not finish within ${timeoutMs} ms`, 'server_error'));
    }, timeoutMs);
    const cancel = () => {
      try {
        transport.publish(subjects.cancel(data.requestId), encode({ type: 'close', session: data.requestId }));
      } catch {
        // NATS is down: the request runs to its end and is dropped then
      }
      void queue.remove(data.requestId).catch(() => undefined);
    };
    // The stream is at-most-once (a NATS restart loses messages): every second, a request whose
    // stream went quiet is looked up in Redis, where the coordinator records tokens and the result.
    const poll = setInterval(() => {
      if (Date.now() - lastHeard < 1000) return;
      void log
        .result(data.requestId)
        .then(async (result) => {
          if (!result) return;
          take(0, await log.read(data.requestId));
          settle.resolve(JSON.parse(result) as RequestOutcome);
        })
        .catch(() => undefined);
    }, 1000);
    poll.unref();
    try {
      await queue.add('generate', data, jobOptions(data.requestId));
    } catch (err) {
      clearTimeout(timer);
      clearInterval(poll);
      await sub.close();
      throw new HttpError(503, `the request queue is unavailable: ${(err as Error).message}`, 'server_error', null, { 'retry-after': '2' });
    }
    const finished = done.finally(() => {
      clearTimeout(timer);
      clearInterval(poll);
      void sub.close();
    });
    finished.catch(() => undefined);
    return { requestId: data.requestId, promptTokens: data.promptIds.length, done: finished, cancel };
  }

  function usage(outcome: RequestOutcome | undefined, promptTokens: number, completionTokens: number) {
    const s = outcome?.stats;
    return {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
      cascade: s
        ? {
            target_passes: s.rounds,
            drafted_tokens: s.draftedTokens,
            accepted_tokens: s.acceptedTokens,
            mean_acceptance_length: s.meanAcceptanceLength,
            acceptance_by_position: s.acceptedByPosition.map((a, i) => a / Math.max(1, s.draftedByPosition[i]!)),
            resumed_from: outcome!.resumedFrom,
            dropped_levels: outcome!.failovers,
            queue_seconds: outcome!.queueSeconds,
          }
        : undefined,
    };
  }

  function record(outcome: RequestOutcome, promptTokens: number, generated: number, startedAt: number, firstAt: number | undefined): void {
    const e2e = (performance.now() - startedAt) / 1000;
    metrics.e2e.observe(e2e);
    metrics.queue.observe(outcome.queueSeconds);
    metrics.promptTokens.inc(promptTokens);
    metrics.generationTokens.inc(generated);
    if (firstAt !== undefined && generated > 1) metrics.tpot.observe((e2e - (firstAt - startedAt) / 1000) / (generated - 1));
    if (e2e > 0) metrics.tokensPerSecond.observe(generated / e2e);
    const s = outcome.stats;
    if (s) {
      metrics.drafts.inc(s.draftedTokens > 0 ? s.rounds : 0);
      metrics.draftTokens.inc(s.draftedTokens);
      metrics.acceptedTokens.inc(s.acceptedTokens);
      s.draftedByPosition.forEach((d, i) => {
        metrics.draftedByPosition.inc({ position: String(i) }, d);
        metrics.acceptedByPosition.inc({ position: String(i) }, s.acceptedByPosition[i] ?? 0);
      });
    }
    for (const level of outcome.failovers) metrics.failovers.inc({ level });
  }

  async function serveRequest(req: FastifyRequest, reply: FastifyReply, data: JobData, chat: boolean, stream: boolean, includeUsage: boolean, stop: readonly string[] = []): Promise<void> {
    if (inFlight >= maxInFlight) {
      metrics.rejected.inc();
      throw new HttpError(503, `the server is at capacity (${maxInFlight} requests in flight); retry shortly`, 'server_error', null, { 'retry-after': '1' });
    }
    inFlight++;
    metrics.inFlight.inc();
    metrics.kvSessions.inc(data.drafters.filter((d) => d !== 'mag').length + 1);
    const startedAt = performance.now();
    const span = tracer.startSpan('gateway.request', { attributes: { 'cascade.request': data.requestId, 'cascade.stream': stream, 'cascade.prompt_tokens': data.promptIds.length } });
    data.trace = injectHeaders(trace.setSpan(context.active(), span));
    const text = tokenizer.stream();
    const stops = stop.length ? new StopMatcher(stop) : undefined;
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${data.requestId.slice(4)}`;
    const created = Math.floor(Date.now() / 1000);
    const object = chat ? 'chat.completion' : 'text_completion';
    let generated = 0;
    let firstAt: number | undefined;
    let lastAt = startedAt;
    let pending = '';
    let closed = false;
    const chunk = (delta: string, finish: string | null) =>
      chat
        ? { id, object: 'chat.completion.chunk', created, model: model.target, choices: [{ index: 0, delta: delta ? { content: delta } : {}, finish_reason: finish }] }
        : { id, object, created, model: model.target, choices: [{ index: 0, text: delta, finish_reason: finish, logprobs: null }] };
    const write = (obj: unknown) => {
      if (!closed) reply.raw.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    const onTokens = (tokens: readonly number[]) => {
      const now = performance.now();
      if (firstAt === undefined) {
        firstAt = now;
        metrics.ttft.observe((now - startedAt) / 1000);
      } else metrics.itl.observe((now - lastAt) / 1000 / tokens.length);
      lastAt = now;
      let delta = '';
      if (!stops) {
        generated += tokens.length;
        delta = text.push(tokens);
      } else {
        // token by token: the count ends at the token that completed a stop string
        for (const t of tokens) {
          if (stops.stopped) break;
          generated++;
          delta += stops.push(text.push([t]));
        }
        if (stops.stopped) submitted?.cancel(); // the rest is not wanted (a round may have run past the stop)
      }
      if (stream) {
        if (delta) write(chunk(delta, null));
      } else pending += delta;
    };
    let submitted: Submitted | undefined;
    const onClose = () => {
      closed = true;
      submitted?.cancel();
    };
    try {
      submitted = await submit(data, onTokens);
      if (stops?.stopped) submitted.cancel();
      // the response's 'close' before it finished = the client went away
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) onClose();
      });
      if (stream) {
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
        // as OpenAI does: the role comes first, so that even a reply with no text has one
        if (chat) write({ id, object: 'chat.completion.chunk', created, model: model.target, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] });
      }
      let outcome: RequestOutcome;
      try {
        outcome = await submitted.done;
      } catch (err) {
        if (!stream) throw err;
        write({ error: { message: (err as Error).message, type: 'server_error' } });
        reply.raw.end();
        metrics.requests.inc({ status: 'error' });
        span.recordException(err as Error);
        return;
      }
      const byStop = stops?.stopped ?? false;
      const tail = byStop ? '' : stops ? stops.push(text.flush()) + stops.flush() : text.flush();
      const finish = byStop ? 'stop' : apiFinishReason(outcome.finishReason);
      record(outcome, data.promptIds.length, generated, startedAt, firstAt);
      metrics.requests.inc({ status: outcome.finishReason === 'cancelled' && !byStop ? 'cancelled' : 'ok' });
      if (stream) {
        write(chunk(tail, finish));
        if (includeUsage) write({ id, object: chat ? 'chat.completion.chunk' : object, created, model: model.target, choices: [], usage: usage(outcome, data.promptIds.length, generated) });
        if (!closed) reply.raw.end('data: [DONE]\n\n');
        return;
      }
      const content = pending + tail;
      const choice = chat ? { index: 0, message: { role: 'assistant', content }, finish_reason: finish, logprobs: null } : { index: 0, text: content, finish_reason: finish, logprobs: null };
      await reply.send({ id, object, created, model: model.target, choices: [choice], usage: usage(outcome, data.promptIds.length, generated) });
    } catch (err) {
      metrics.requests.inc({ status: 'error' });
      span.recordException(err as Error);
      throw err;
    } finally {
      span.setAttribute('cascade.generated_tokens', generated);
      span.end();
      inFlight--;
      metrics.inFlight.dec();
      metrics.kvSessions.dec(data.drafters.filter((d) => d !== 'mag').length + 1);
    }
  }

  app.post('/v1/completions', async (req, reply) => {
    const body = parse(CompletionBody, req.body);
    const p = body.prompt;
    const first = Array.isArray(p) ? p[0]! : p;
    const input = typeof first === 'string' ? { prompt: first } : { promptIds: Array.isArray(first) ? first : (p as number[]) };
    await serveRequest(req, reply, job(body, input), false, body.stream ?? false, body.stream_options?.include_usage ?? false, stopStrings(body.stop));
    return reply;
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const body = parse(ChatBody, req.body);
    await serveRequest(req, reply, job(body, { messages: templateMessages(body.messages) }), true, body.stream ?? false, body.stream_options?.include_usage ?? false, stopStrings(body.stop));
    return reply;
  });

  return app;
}
