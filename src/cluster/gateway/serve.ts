import { context, trace } from '@opentelemetry/api';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { StopMatcher } from '../../models/stop-strings.ts';
import type { JobData, RequestOutcome } from '../coordinator.ts';
import { injectHeaders, tracer } from '../tracing.ts';
import { HttpError } from './errors.ts';
import type { GatewayOptions } from './options.ts';
import { apiFinishReason, responseShapes } from './responses.ts';
import { EventStream } from './sse.ts';
import { submit, type SubmitOptions, type Submitted } from './submit.ts';
import { recordOutcome, usage } from './usage.ts';

export interface ServeOptions extends SubmitOptions, Pick<GatewayOptions, 'tokenizer' | 'metrics' | 'model'> {
  /** Requests in flight before 503 + Retry-After. */
  readonly maxInFlight: number;
}

/**
 * Serves requests to the end: admission (over `maxInFlight` a 503 with Retry-After), the job
 * submitted and followed, its tokens turned into text by the tokenizer's streaming decoder, cut at
 * the first stop string, and answered whole or as SSE; a client that goes away cancels its request.
 * `inFlight()` is how many are being served now.
 */
export function requestServer(options: ServeOptions) {
  const { tokenizer, metrics, model, maxInFlight } = options;
  let inFlight = 0;

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
    const shapes = responseShapes(chat, id, created, model.target);
    const events = new EventStream(reply.raw);
    let generated = 0;
    let firstAt: number | undefined;
    let lastAt = startedAt;
    let pending = '';
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
        if (delta) events.write(shapes.chunk(delta, null));
      } else pending += delta;
    };
    let submitted: Submitted | undefined;
    const onClose = () => {
      events.closed = true;
      submitted?.cancel();
    };
    try {
      submitted = await submit(options, data, onTokens);
      if (stops?.stopped) submitted.cancel();
      // the response's 'close' before it finished = the client went away
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) onClose();
      });
      if (stream) {
        reply.hijack();
        events.open();
        if (chat) events.write(shapes.role());
      }
      let outcome: RequestOutcome;
      try {
        outcome = await submitted.done;
      } catch (err) {
        if (!stream) throw err;
        events.write({ error: { message: (err as Error).message, type: 'server_error' } });
        events.end();
        metrics.requests.inc({ status: 'error' });
        span.recordException(err as Error);
        return;
      }
      const byStop = stops?.stopped ?? false;
      const tail = byStop ? '' : stops ? stops.push(text.flush()) + stops.flush() : text.flush();
      const finish = byStop ? 'stop' : apiFinishReason(outcome.finishReason);
      recordOutcome(metrics, outcome, data.promptIds.length, generated, startedAt, firstAt);
      metrics.requests.inc({ status: outcome.finishReason === 'cancelled' && !byStop ? 'cancelled' : 'ok' });
      if (stream) {
        events.write(shapes.chunk(tail, finish));
        if (includeUsage) events.write(shapes.usage(usage(outcome, data.promptIds.length, generated)));
        events.done();
        return;
      }
      await reply.send(shapes.body(pending + tail, finish, usage(outcome, data.promptIds.length, generated)));
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

  return { serveRequest, inFlight: () => inFlight };
}
