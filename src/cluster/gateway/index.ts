import Fastify, { type FastifyInstance } from 'fastify';
import { bearerAuth } from './auth.ts';
import { templateMessages } from './chat.ts';
import { HttpError, sendError } from './errors.ts';
import { buildJob, choiceJobs } from './job.ts';
import { TokenizerThread } from '../../models/tokenizer-thread.ts';
import type { GatewayOptions } from './options.ts';
import { ChatBody, CompletionBody, parse, stopStrings } from './schemas.ts';
import { requestServer } from './serve.ts';
import { clusterBackend, type Backend } from './submit.ts';

export type { GatewayOptions } from './options.ts';
export type { Backend, OnTokens, Submitted } from './submit.ts';
export { API_SAMPLING, checkRowBudget } from './job.ts';
export { apiFinishReason } from './responses.ts';

/**
 * `cascade serve`: the OpenAI-compatible HTTP gateway (SPEC §7). Requests are validated, tokenized
 * and put on the BullMQ queue; a coordinator streams the tokens back over NATS; the gateway turns
 * them into text (SSE when streaming). Over `maxInFlight` it answers 503 with Retry-After; a client
 * that disconnects cancels its request (the coordinator stops and frees the actors' KV).
 */
export function buildGateway(options: GatewayOptions): FastifyInstance {
  const { metrics, model } = options;
  const backend = options.backend ?? clusterOf(options);
  const requests = requestServer({ ...options, backend, maxInFlight: options.maxInFlight ?? 64 });
  const tokenizerThread = new TokenizerThread(options.tokenizer);
  const jobOptions = { ...options, tokenizerThread, maxPayload: backend.maxPayload, draftings: backend.draftings };
  const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024 });
  app.addHook('onClose', () => tokenizerThread.close());

  // every answer counted once its connection is done with it, streamed (hijacked) ones and refusals
  // included: cascade_requests_total counts only requests that reached generation
  app.addHook('onRequest', async (req, reply) => {
    // a client gone before any answer was sent: `aborted`, not the default status 200
    reply.raw.once('close', () => metrics.http.inc({ method: req.method, route: req.routeOptions.url ?? 'unmatched', status: reply.raw.headersSent ? String(reply.raw.statusCode) : 'aborted' }));
  });
  app.addHook('onRequest', bearerAuth(options.apiKeys ?? []));

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    if (err instanceof HttpError) return sendError(reply, err);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    return sendError(reply, new HttpError(status, status === 500 ? `internal error: ${err.message}` : err.message, status === 500 ? 'server_error' : 'invalid_request_error'));
  });

  // an unknown route or method gets OpenAI's error body, as api.openai.com answers it
  app.setNotFoundHandler((req, reply) => sendError(reply, new HttpError(404, `Invalid URL (${req.method} ${req.url.split('?')[0]})`)));

  app.get('/live', async () => ({ status: 'ok' }));

  app.get('/health', async (_req, reply) => {
    try {
      const detail = (await options.health?.()) ?? {};
      return { status: 'ok', model: model.target, inFlight: requests.inFlight(), ...detail };
    } catch (err) {
      return reply.code(503).send({ status: 'unavailable', message: (err as Error).message });
    }
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  const served = { id: model.target, object: 'model', created: 0, owned_by: 'cascade-cluster', drafters: model.drafters, ...(model.eagle ? { feature_drafter: model.eagle } : {}), max_model_len: model.maxPositions };
  app.get('/v1/models', async () => ({ object: 'list', data: [served] }));
  // the openai client's models.retrieve
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (req) => {
    if (req.params.id !== model.target) throw new HttpError(404, `model "${req.params.id}" is not served here (this gateway serves "${model.target}")`, 'invalid_request_error', 'model');
    return served;
  });

  app.post('/v1/completions', async (req, reply) => {
    const body = parse(CompletionBody, req.body);
    const p = body.prompt;
    const first = Array.isArray(p) ? p[0]! : p;
    const input = typeof first === 'string' ? { prompt: first } : { promptIds: Array.isArray(first) ? first : (p as number[]) };
    if (body.echo && body.logprobs !== undefined) throw new HttpError(400, "echo with logprobs is not supported: the prompt's own log probabilities are not computed (send one of them)", 'invalid_request_error', 'echo');
    const job = await buildJob(jobOptions, body, input);
    // echo: the prompt as given, or the text of its token ids
    const echo = body.echo ? ('prompt' in input ? input.prompt : options.tokenizer.decode(input.promptIds)) : undefined;
    await requests.serveRequest(req, reply, choiceJobs(job, body.n ?? 1, body.seed !== undefined), {
      chat: false,
      stream: body.stream ?? false,
      includeUsage: body.stream_options?.include_usage ?? false,
      stop: stopStrings(body.stop),
      logprobs: body.logprobs !== undefined,
      ...(echo !== undefined ? { echo } : {}),
    });
    return reply;
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const body = parse(ChatBody, req.body);
    const job = await buildJob(jobOptions, body, { messages: templateMessages(body.messages) });
    await requests.serveRequest(req, reply, choiceJobs(job, body.n ?? 1, body.seed !== undefined), {
      chat: true,
      stream: body.stream ?? false,
      includeUsage: body.stream_options?.include_usage ?? false,
      stop: stopStrings(body.stop),
      logprobs: body.logprobs ?? false,
    });
    return reply;
  });

  return app;
}

/** The cluster's backend from the options' transport, queue and log (all three needed). */
function clusterOf(options: GatewayOptions): Backend {
  const { transport, queue, log } = options;
  if (!transport || !queue || !log) throw new Error('the gateway needs a backend, or the cluster\'s transport, queue and log');
  return clusterBackend({ transport, queue, log, timeoutMs: options.requestTimeoutMs ?? 600_000, onRequeue: () => options.metrics.requeued.inc() });
}
