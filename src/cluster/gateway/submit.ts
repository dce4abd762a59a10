import type { TokenLogprob } from '../../kernels/sampling.ts';
import { jobOptions, type JobData, type RequestOutcome } from '../coordinator.ts';
import { decode, encode } from '../messages.ts';
import { subjects } from '../transport.ts';
import { HttpError } from './errors.ts';
import type { GatewayOptions } from './options.ts';
import { DRAFTINGS, type Drafting } from '../../engine/async-cascade.ts';

/** A request's view of the coordinator's stream: tokens in order, deduplicated by offset. */
export interface Submitted {
  readonly requestId: string;
  readonly promptTokens: number;
  /** Resolves with the outcome; tokens arrive through onTokens first. */
  readonly done: Promise<RequestOutcome>;
  cancel(): void;
}

/** A job's tokens as they come: new ids, and their log probabilities when the job asks for them. */
export type OnTokens = (tokens: readonly number[], logprobs: readonly TokenLogprob[] | undefined) => void;

/**
 * Where the gateway's jobs run: the cluster (clusterBackend: the BullMQ queue, a coordinator, NATS
 * and Redis) or this process (embedded.ts, `cascade serve --embedded`).
 */
export interface Backend {
  /** Starts a job; `onTokens` sees each new token once, in order. Throws HttpError 503 when it cannot be queued. */
  submit(data: JobData, onTokens: OnTokens): Promise<Submitted>;
  /** The largest message between the levels (sampled drafts' rows must fit one), where they cross a transport. */
  readonly maxPayload?: number;
  /** Drafting modes the backend runs (default serial only). */
  readonly draftings?: readonly Drafting[];
}

/** What following a job needs: where its tokens stream, the queue it goes on, the log it is recorded in, and how long it may take. */
export interface SubmitOptions extends Required<Pick<GatewayOptions, 'transport' | 'queue' | 'log'>> {
  /** Longest a request may take, end to end. */
  readonly timeoutMs: number;
  /** Called when a request's job was found gone from the queue and added again (see submit). */
  readonly onRequeue?: (requestId: string) => void;
}

/**
 * How long a request's stream must be quiet before the gateway looks up its job (submit): longer than
 * a round's pass, so that a job a coordinator is running is not looked up for nothing.
 */
export const JOB_LOOKUP_QUIET_MS = 5000;

/** The cluster as a Backend: jobs go on the BullMQ queue and their tokens come back over NATS (submit). */
export function clusterBackend(options: SubmitOptions): Backend {
  return { submit: (data, onTokens) => submit(options, data, onTokens), maxPayload: options.transport.maxPayload, draftings: DRAFTINGS };
}

/**
 * Enqueues a job and follows its stream; `onTokens` sees each new token once, in order, with its log
 * probability when the job asks for them.
 */
export async function submit(options: SubmitOptions, data: JobData, onTokens: OnTokens): Promise<Submitted> {
  const { transport, queue, log, timeoutMs } = options;
  let have = 0;
  let queued = false;
  let ended = false;
  let missing = 0;
  let lastHeard = Date.now();
  let settle!: { resolve: (o: RequestOutcome) => void; reject: (e: Error) => void };
  const done = new Promise<RequestOutcome>((resolve, reject) => (settle = { resolve, reject }));
  const take = (offset: number, tokens: readonly number[], logprobs: readonly TokenLogprob[] | undefined) => {
    if (offset + tokens.length <= have) return;
    if (offset > have) {
      // a stream message was lost (NATS core is at-most-once): the tokens are in Redis
      void recorded()
        .then(([all, lps]) => take(0, all, lps))
        .catch((err: Error) => settle.reject(err));
      return;
    }
    if (data.logprobs !== undefined && logprobs?.length !== tokens.length) throw new Error(`the coordinator streamed ${tokens.length} tokens with ${logprobs?.length ?? 0} log probabilities`);
    const fresh = tokens.slice(have - offset);
    have += fresh.length;
    onTokens(fresh, logprobs?.slice(logprobs.length - fresh.length));
  };
  /** The tokens (and log probabilities) recorded in Redis. */
  const recorded = () => Promise.all([log.read(data.requestId), data.logprobs === undefined ? undefined : log.readLogprobs(data.requestId, data.logprobs)] as const);
  const sub = transport.subscribe(subjects.stream(data.requestId), (frame) => {
    lastHeard = Date.now();
    try {
      const m = decode(frame);
      if (m.type === 'tokens') take(m.offset, m.tokens, m.logprobs);
      else if (m.type === 'done') {
        const outcome = JSON.parse(m.stats) as RequestOutcome;
        const finish = () =>
          have >= outcome.generatedTokens
            ? settle.resolve(outcome)
            : void recorded()
                .then(([all, lps]) => (take(0, all, lps), settle.resolve(outcome)))
                .catch((err: Error) => settle.reject(err));
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
    ended = true;
    try {
      transport.publish(subjects.cancel(data.requestId), encode({ type: 'close', session: data.requestId }));
    } catch {
      // NATS is down: the request runs to its end and is dropped then
    }
    // a job still waiting in the queue is removed there, and no coordinator will ever answer it: it ends here
    void queue
      .remove(data.requestId)
      .then((removed) => {
        if (removed === 1) settle.resolve({ finishReason: 'cancelled', generatedTokens: have, resumedFrom: 0, failovers: [], queueSeconds: (Date.now() - data.enqueuedAt) / 1000, stats: undefined });
      })
      .catch(() => undefined);
  };
  // The stream is at-most-once (a NATS restart loses messages): every second, a request whose
  // stream went quiet is looked up in Redis, where the coordinator records tokens and the result.
  // Its job is looked up too, once the stream has been quiet for JOB_LOOKUP_QUIET_MS. Redis
  // replicates asynchronously, so a master that dies within moments of a write can take it along: a
  // job added (or retried) just before its queue's master failed is gone from the promoted replica,
  // and no coordinator would ever run it again. A job whose key is missing on two looks a second
  // apart is added again with the same id, at the front of the queue; the coordinator that takes it
  // resumes after what the request log holds (or finds its result), and tokens stream by offset, so
  // none is shown twice. (A job removed from the queue by hand while its gateway follows it comes
  // back the same way: cancel a request through the API instead.)
  // A job BullMQ holds as finished while the log has no result lost its ending the other way: the
  // 'done' or 'failed' message went the way of a NATS restart and the result's write the way of a
  // failover of the log's master. A completed job's return value is the outcome; when the log lost
  // tokens with the result, the job is run again (removed, then added), resuming after what the log
  // holds. A job that failed for good fails the request with its reason.
  const lookUpJob = async (): Promise<void> => {
    const backend = queue.getBackend();
    // small fields of the job's record in one HMGET: not `data`, which holds the prompt, nor
    // getJobState, which scans the waiting list; BullMQ sets `timestamp` on every job it stores
    const [timestamp, finishedOn, returnValue, failedReason] = await (await backend.client).hmget(backend.toKey(data.requestId), 'timestamp', 'finishedOn', 'returnvalue', 'failedReason');
    if (timestamp != null && finishedOn == null) return void (missing = 0); // waiting or running
    if (timestamp == null) {
      if (++missing < 2) return;
    } else if (returnValue == null) {
      return void settle.reject(new HttpError(500, `generation failed: ${failedReason ?? 'the job failed without a reason'}`, 'server_error'));
    } else {
      let outcome: RequestOutcome | undefined;
      try {
        outcome = JSON.parse(returnValue) as RequestOutcome;
      } catch {
        // refused below
      }
      if (typeof outcome?.generatedTokens !== 'number') return void settle.reject(new HttpError(500, `the job completed without an outcome: ${returnValue.slice(0, 200)}`, 'server_error'));
      const [all, lps] = await recorded();
      if (Math.max(have, all.length) >= outcome.generatedTokens) {
        take(0, all, lps);
        return void settle.resolve(outcome);
      }
      // the log lost tokens with its result: the job runs again (a locked job is not removed: a coordinator holds it)
      if (ended || (await queue.remove(data.requestId)) !== 1) return;
    }
    missing = 0;
    if (ended) return;
    await queue.add('generate', data, { ...jobOptions(data.requestId), lifo: true });
    options.onRequeue?.(data.requestId);
  };
  let looking = false;
  const poll = setInterval(() => {
    const quiet = Date.now() - lastHeard;
    if (quiet < 1000 || looking) return;
    looking = true;
    void log
      .result(data.requestId)
      .then(async (result) => {
        if (result) {
          const [all, lps] = await recorded();
          take(0, all, lps);
          settle.resolve(JSON.parse(result) as RequestOutcome);
          return;
        }
        if (!queued || ended || quiet < JOB_LOOKUP_QUIET_MS) return void (missing = 0);
        await lookUpJob();
      })
      .catch(() => undefined)
      .finally(() => (looking = false));
  }, 1000);
  poll.unref();
  try {
    await queue.add('generate', data, jobOptions(data.requestId));
    queued = true;
  } catch (err) {
    clearTimeout(timer);
    clearInterval(poll);
    await sub.close();
    throw new HttpError(503, `the request queue is unavailable: ${(err as Error).message}`, 'server_error', null, { 'retry-after': '2' });
  }
  const finished = done.finally(() => {
    ended = true;
    clearTimeout(timer);
    clearInterval(poll);
    void sub.close();
  });
  finished.catch(() => undefined);
  return { requestId: data.requestId, promptTokens: data.promptIds.length, done: finished, cancel };
}
