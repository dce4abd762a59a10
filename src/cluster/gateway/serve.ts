import { context, trace } from '@opentelemetry/api';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { TokenLogprob } from '../../kernels/sampling.ts';
import { StopMatcher } from '../../models/stop-strings.ts';
import type { StreamDecoder } from '../../models/tokenizer.ts';
import type { JobData, RequestOutcome } from '../coordinator.ts';
import { injectHeaders, tracer } from '../tracing.ts';
import { errorBody, HttpError } from './errors.ts';
import { LogprobFormat, TextOffsets } from './logprobs.ts';
import type { GatewayOptions } from './options.ts';
import { apiFinishReason, responseShapes } from './responses.ts';
import { EventStream } from './sse.ts';
import type { Backend, Submitted } from './submit.ts';
import { recordOutcome, usage } from './usage.ts';

export interface ServeOptions extends Pick<GatewayOptions, 'tokenizer' | 'metrics' | 'model'> {
  readonly backend: Backend;
  /** Requests in flight before 503 + Retry-After (each choice of a request counts as one). */
  readonly maxInFlight: number;
}

/** How a request is answered. */
export interface Answer {
  readonly chat: boolean;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /** Stop strings: each choice's text ends before the first one. */
  readonly stop: readonly string[];
  /** Return log probabilities (the jobs ask the coordinator for them). */
  readonly logprobs: boolean;
  /** Completions' echo: the prompt's text before each choice's. */
  readonly echo?: string;
}

/** One choice of a request: its job, and its text as it arrives. */
class Choice {
  readonly text: StreamDecoder;
  readonly stops: StopMatcher | undefined;
  generated = 0;
  /** Text not yet sent (all of it, when not streaming). */
  pending = '';
  /** Log probabilities of the counted tokens not yet sent (all of them, when not streaming). */
  logprobs: TokenLogprob[] = [];
  /** Where the next token's text begins in this choice's text (completions' text_offset). */
  offsets = new TextOffsets();
  submitted: Submitted | undefined;
  outcome: RequestOutcome | undefined;
  /** Resolves at this choice's first tokens (its prompt is then prefilled where its target session runs). */
  readonly started: Promise<void>;
  private start!: () => void;

  constructor(
    readonly index: number,
    readonly data: JobData,
    options: ServeOptions,
    stop: readonly string[],
  ) {
    this.text = options.tokenizer.stream();
    this.stops = stop.length ? new StopMatcher(stop) : undefined;
    this.started = new Promise((resolve) => (this.start = resolve));
  }

  /** Takes new tokens: the text they complete, cut at a stop string (the count ends at the token that completed it). */
  push(tokens: readonly number[], logprobs: readonly TokenLogprob[] | undefined): string {
    this.start();
    let delta = '';
    let counted = tokens.length;
    if (!this.stops) {
      delta = this.text.push(tokens);
    } else {
      counted = 0;
      for (const t of tokens) {
        if (this.stops.stopped) break;
        counted++;
        delta += this.stops.push(this.text.push([t]));
      }
      if (this.stops.stopped) this.submitted?.cancel(); // the rest is not wanted (a round may have run past the stop)
    }
    this.generated += counted;
    if (logprobs) this.logprobs.push(...logprobs.slice(0, counted));
    return delta;
  }

  /** The text held back at the end (none after a stop string). */
  tail(): string {
    if (this.stops?.stopped) return '';
    return this.stops ? this.stops.push(this.text.flush()) + this.stops.flush() : this.text.flush();
  }

  get finish(): string {
    return this.stops?.stopped ? 'stop' : apiFinishReason(this.outcome!.finishReason);
  }
}

/**
 * Serves requests to the end: admission (over `maxInFlight` a 503 with Retry-After), each choice's
 * job submitted and followed, its tokens turned into text by the tokenizer's streaming decoder, cut
 * at the first stop string, with the target's log probabilities when asked, and answered whole or as
 * SSE (each choice's chunks carry its index); a client that goes away cancels every choice.
 * `inFlight()` is how many jobs are being served now.
 */
export function requestServer(options: ServeOptions) {
  const { tokenizer, metrics, model, maxInFlight } = options;
  const format = new LogprobFormat(tokenizer);
  let inFlight = 0;

  async function serveRequest(req: FastifyRequest, reply: FastifyReply, jobs: readonly JobData[], answer: Answer): Promise<void> {
    // n choices are n requests in flight: more than the server ever takes would wait for capacity forever
    if (jobs.length > maxInFlight) throw new HttpError(400, `n = ${jobs.length} choices are ${jobs.length} requests in flight, more than this server takes at once (--max-in-flight ${maxInFlight})`, 'invalid_request_error', 'n');
    if (inFlight + jobs.length > maxInFlight) {
      metrics.rejected.inc();
      throw new HttpError(503, `the server is at capacity (${maxInFlight} requests in flight); retry shortly`, 'server_error', null, { 'retry-after': '1' });
    }
    const { chat, stream } = answer;
    const sessions = jobs.reduce((a, d) => a + d.drafters.filter((x) => x !== 'mag').length + 1, 0);
    inFlight += jobs.length;
    metrics.inFlight.inc(jobs.length);
    metrics.kvSessions.inc(sessions);
    const first = jobs[0]!;
    const startedAt = performance.now();
    const span = tracer.startSpan('gateway.request', { attributes: { 'cascade.request': first.requestId, 'cascade.stream': stream, 'cascade.prompt_tokens': first.promptIds.length, 'cascade.choices': jobs.length } });
    const traceHeaders = injectHeaders(trace.setSpan(context.active(), span));
    const choices = jobs.map((data, i) => {
      data.trace = traceHeaders;
      return new Choice(i, data, options, answer.stop);
    });
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${first.requestId.slice(4)}`;
    const shapes = responseShapes(chat, id, Math.floor(Date.now() / 1000), model.target);
    const events = new EventStream(reply.raw);
    const echo = answer.echo ?? '';
    for (const c of choices) c.offsets = new TextOffsets(echo.length);
    let firstAt: number | undefined;
    let lastAt = startedAt;
    /** The log probabilities of `c` not sent yet, in the request's shape (null when not asked for), and forgets them. */
    const takeLogprobs = (c: Choice, orNull = false) => {
      if (!answer.logprobs || (orNull && !c.logprobs.length)) return null;
      const list = c.logprobs;
      c.logprobs = [];
      return chat ? format.chat(list) : format.completion(list, c.offsets);
    };
    const onTokens = (c: Choice) => (tokens: readonly number[], logprobs: readonly TokenLogprob[] | undefined) => {
      const now = performance.now();
      if (firstAt === undefined) {
        firstAt = now;
        metrics.ttft.observe((now - startedAt) / 1000);
      } else metrics.itl.observe((now - lastAt) / 1000 / tokens.length);
      lastAt = now;
      const delta = c.push(tokens, logprobs);
      if (!stream) c.pending += delta;
      // a chunk goes out with text; log probabilities of tokens whose text is held back wait for the next one
      else if (delta) events.write(shapes.chunk(c.index, delta, null, takeLogprobs(c)));
    };
    const cancelAll = () => choices.forEach((c) => c.submitted?.cancel());
    /** Waits until every queued choice has ended (cancelled ones end at their next round). */
    const settled = async () => void (await Promise.allSettled(choices.map((c) => c.submitted?.done)));
    let opened = false;
    try {
      // the response's 'close' before it finished = the client went away (listened for before any job is queued)
      reply.raw.on('close', () => {
        if (reply.raw.writableFinished) return;
        events.closed = true;
        cancelAll();
      });
      const enqueue = async (c: Choice) => {
        c.submitted = await options.backend.submit(c.data, onTokens(c));
        if (events.closed || c.stops?.stopped) c.submitted.cancel();
      };
      // Choice 0 first; the others once it has tokens, so that their prefills find its prompt's KV
      // in the verifier's prefix cache (a request of n choices prefills its prompt once per verifier).
      await enqueue(choices[0]!);
      if (stream) {
        reply.hijack();
        opened = true;
        // the role (chat) and the echo come first, before any text that arrived while the jobs were submitted
        events.open(choices.flatMap((c) => [...(chat ? [shapes.role(c.index)] : []), ...(echo ? [shapes.chunk(c.index, echo, null)] : [])]));
      }
      if (choices.length > 1) {
        await Promise.race([choices[0]!.started, choices[0]!.submitted!.done.then(() => undefined, () => undefined)]);
        for (const c of choices.slice(1)) if (!events.closed) await enqueue(c);
        if (events.closed) return await settled(); // the client went away while the choices were submitted: all cancelled
      }
      const results = await Promise.allSettled(
        choices.map(async (c) => {
          c.outcome = await c.submitted!.done;
          recordOutcome(metrics, c.outcome, c.data.promptIds.length, c.generated, startedAt, firstAt);
          metrics.requests.inc({ status: c.outcome.finishReason === 'cancelled' && !c.stops?.stopped ? 'cancelled' : 'ok' });
          if (stream) events.write(shapes.chunk(c.index, c.tail(), c.finish, takeLogprobs(c, true)));
        }),
      );
      const failed = results.find((s): s is PromiseRejectedResult => s.status === 'rejected');
      if (failed) throw failed.reason;
      const used = usage(
        choices.map((c) => c.outcome),
        first.promptIds.length,
        choices.reduce((a, c) => a + c.generated, 0),
      );
      if (stream) {
        if (answer.includeUsage) events.write(shapes.usage(used));
        events.done();
        return;
      }
      await reply.send(shapes.body(choices.map((c) => ({ text: echo + c.pending + c.tail(), finish: c.finish, logprobs: takeLogprobs(c) })), used));
    } catch (err) {
      cancelAll();
      metrics.requests.inc({ status: 'error' });
      span.recordException(err as Error);
      await settled(); // the other choices stop at their next round: their slots are free only then
      if (!opened) throw err;
      // the stream is open (its 200 sent): the error is its last event before [DONE], as vLLM ends one
      events.write(errorBody(err as Error));
      events.done();
    } finally {
      span.setAttribute('cascade.generated_tokens', choices.reduce((a, c) => a + c.generated, 0));
      span.end();
      inFlight -= jobs.length;
      metrics.inFlight.dec(jobs.length);
      metrics.kvSessions.dec(sessions);
    }
  }

  return { serveRequest, inFlight: () => inFlight };
}
