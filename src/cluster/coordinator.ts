import { randomBytes } from 'node:crypto';
import { context, type Span } from '@opentelemetry/api';
import { Queue, UnrecoverableError, Worker, type Job, type Processor, type QueueOptions, type WorkerOptions as BullWorkerOptions } from 'bullmq';
import { z } from 'zod';
import { runDrafting, type CascadeResult } from '../engine/cascade.ts';
import { MagLevel, type CascadeLevel } from '../engine/levels.ts';
import { CascadeError, InvalidArgumentError, LevelUnavailableError } from '../errors.ts';
import type { MagTables } from '../kernels/maxgram.ts';
import { VERIFICATIONS, type Verification } from '../kernels/noise.ts';
import { DRAFTINGS, type Drafting } from '../engine/async-cascade.ts';
import { deriveSeed, seed64 } from '../kernels/rng.ts';
import { MAX_TOP_LOGPROBS } from '../kernels/sampling.ts';
import { quantile } from '../kernels/stats.ts';
import { drafterKind } from '../models/family.ts';
import { encode } from './messages.ts';
import { logRedisEvents, openRedis, parseRedis, QUEUE_SOCKET_TIMEOUT_MS, queuePrefix, throttledErrorLog, type RedisClient, type RedisDeployment } from './redis-connection.ts';
import { logLine } from './log.ts';
import { LogWriter } from './log-writer.ts';
import { RequestSupersededError, type RequestLog } from './redis-store.ts';
import { ActorError, RemoteFeatureLevel, RemoteLevel } from './remote-level.ts';
import { extractContext, inSpan } from './tracing.ts';
import type { ActorLiveness } from './liveness.ts';
import { subjects, type Subscription, type Transport, type TransportError } from './transport.ts';
import { describeIssues } from '../issues.ts';

/** The BullMQ queue requests enter (SPEC §6). */
export const QUEUE_NAME = 'cascade-requests';

/** A request as it travels through the queue; validated again by the coordinator that takes it. */
export const JobData = z.object({
  requestId: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, 'request ids use letters, digits, - and _'),
  promptIds: z.array(z.number().int().min(0)).min(1),
  maxTokens: z.number().int().min(1),
  /** Strict: a sampling field this coordinator does not know would otherwise be dropped silently, and the output would no longer be what was asked. */
  sampling: z
    .object({
      temperature: z.number().min(0),
      topK: z.number().int().min(0),
      topP: z.number().gt(0).max(1),
      minP: z.number().min(0).max(1).optional(),
      repetitionPenalty: z.number().gt(0).optional(),
      presencePenalty: z.number().min(-2).max(2).optional(),
      frequencyPenalty: z.number().min(-2).max(2).optional(),
      logitBias: z.record(z.string().regex(/^\d{1,10}$/).refine((id) => Number(id) <= 0xffffffff, 'token ids are below 2^32'), z.number().min(-100).max(100)).optional(),
    })
    .strict(),
  seed: z.number().int({ error: 'seed must be an integer of at most 53 bits' }),
  stopAtEos: z.boolean().default(true),
  /** Drafters largest first; 'mag' only last. */
  drafters: z.array(z.string().min(1)),
  /** A fixed K matrix, or 'auto' (the adaptive schedule). */
  kMatrix: z.union([z.literal('auto'), z.array(z.array(z.number().int().min(0)))]),
  lenience: z.number().min(1),
  /** MaG first's minimum match length (CascadeConfig.magFirst); unset = off. */
  magFirst: z.number().int().min(1).optional(),
  /** How sampled drafts are verified (Verification); unset = rejection (what jobs from gateways before the field meant). */
  verification: z.enum(VERIFICATIONS as [Verification, ...Verification[]]).optional(),
  /** serial (unset) or async drafting: the first neural drafter's actor runs ahead while the target's verifies (runCascadeAsync). */
  drafting: z.enum(DRAFTINGS as [Drafting, ...Drafting[]]).optional(),
  /** true: async drafting also drafts outcome branches (RunOptions.outcomeBranches); unset = the speculation alone. */
  outcomeBranches: z.literal(true).optional(),
  /** true: async drafting runs the second neural drafter as a level below the first (RunOptions.levelBelow); unset = MaG alone below it. */
  levelBelow: z.literal(true).optional(),
  /** Record each token's log probability under the target's distribution with this many alternatives (OpenAI's logprobs / top_logprobs); unset = none. */
  logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).optional(),
  /** W3C trace context of the request's gateway span. */
  trace: z.record(z.string(), z.string()).default({}),
  enqueuedAt: z.number(),
});
export type JobData = z.infer<typeof JobData>;

/** What the coordinator knows of the family: names and MaG's table, never weights. */
export interface ClusterFamily {
  readonly target: string;
  readonly eosIds: readonly number[];
  readonly magTables?: MagTables;
  /** The smallest context (positions) of the family's models: every round's drafts stay inside it. */
  readonly maxPositions?: number;
  /** The feature drafter's name (EAGLE), which runs beside the target in its verify actors (RemoteFeatureLevel). */
  readonly eagle?: string;
}

export interface CoordinatorOptions {
  readonly transport: Transport;
  readonly log: RequestLog;
  readonly family: ClusterFamily;
  /** Per actor call. */
  readonly callTimeoutMs?: number;
  /** Actors' heartbeats: a call to an instance that falls silent is given up before `callTimeoutMs` and its session placed again (ActorLiveness); unset = the timeout alone. */
  readonly liveness?: ActorLiveness;
  /** Called with each actor call's round trip (ms: its wall time minus the actor's handler time), for a metric. */
  readonly onRoundTrip?: (kind: 'draft' | 'verify', ms: number) => void;
  /** Called with each actor call that failed in transport (no responders, the call timeout, closed: a payload over the limit, a NATS error, or silent: the instance's heartbeats stopped), by the kind of actor called (a feature drafter's calls go to the verify actor), for a metric. */
  readonly onCallFailed?: (kind: 'draft' | 'verify', reason: TransportError['reason']) => void;
  /** Called with each append's wall time to a request's token log (ms), for a metric. */
  readonly onLogAppend?: (ms: number) => void;
  /** Told, one line each, what an operator reads in a role's log: a request resumed after another attempt, a drafter dropped. */
  readonly onEvent?: (line: string) => void;
}

/** The result stored in Redis and returned as the job's value. */
export interface RequestOutcome {
  readonly finishReason: string;
  readonly generatedTokens: number;
  readonly resumedFrom: number;
  readonly failovers: string[];
  readonly queueSeconds: number;
  readonly stats: CascadeResult['stats'] | undefined;
  /** The actor calls' round trips (wall time minus the actor's handler time: NATS, framing, scheduling), ms; absent without calls. */
  readonly roundTripMs?: { readonly calls: number; readonly p50: number; readonly p99: number };
  /**
   * The token log's appends to Redis (ms; absent without any): how many (written behind the passes,
   * one in flight at a time, each taking the rounds finished meanwhile), p50/p99 of their wall time,
   * and how long the request waited for appends still in flight after its last pass (`waitMs`).
   */
  readonly logAppends?: { readonly calls: number; readonly p50: number; readonly p99: number; readonly waitMs: number };
}

/**
 * Drives one request's cascade across actors (SPEC §6): places a session per level, runs the rounds
 * with the same loop as embedded mode, records every round's tokens in Redis (LogWriter) before
 * streaming them on `cascade.stream.<request>`, drops a drafter whose actors are gone (down to MaG or the target
 * alone) instead of failing, and stops at cancellation. A retried request resumes after the tokens
 * already recorded, so the stream never loses or repeats a token. Each attempt claims the request's
 * log first: when a newer attempt has claimed it (a BullMQ stall hand-over while this one still
 * runs), this attempt's next append or finish is refused and it stops with RequestSupersededError,
 * publishing nothing more, so the log and the stream stay one attempt's continuation.
 */
export class Coordinator {
  readonly counters = { requests: 0, failovers: 0, resumed: 0 };

  constructor(private readonly options: CoordinatorOptions) {}

  private publish(requestId: string, event: Parameters<typeof encode>[0]): void {
    try {
      this.options.transport.publish(subjects.stream(requestId), encode(event));
    } catch {
      // the stream is best effort; the tokens are in Redis
    }
  }

  async run(raw: unknown, attempt = 0): Promise<RequestOutcome> {
    const parsed = JobData.safeParse(raw);
    if (!parsed.success) throw new InvalidArgumentError(`malformed request: ${describeIssues(parsed.error)}`);
    const job = parsed.data;
    return inSpan('coordinator.request', extractContext(job.trace), { 'cascade.request': job.requestId, 'cascade.attempt': attempt }, (span) => this.drive(job, span));
  }

  private async drive(job: JobData, span: Span): Promise<RequestOutcome> {
    const { transport, log, family } = this.options;
    this.counters.requests++;
    const queueSeconds = Math.max(0, (Date.now() - job.enqueuedAt) / 1000);
    span.setAttribute('cascade.queue_seconds', queueSeconds);
    const fence = await log.claim(job.requestId);
    // The actors' sessions of this attempt: the fence alone does not make them unique, since a claim
    // a failover lost is given again (the log holds fence 0, so the next claim is 1 once more), and a
    // retried attempt must not open the session an earlier one left on an actor
    const attempt = `${job.requestId}-${fence}-${randomBytes(4).toString('hex')}`;
    span.setAttribute('cascade.fence', fence);
    const stored = await log.result(job.requestId);
    const recorded = await log.read(job.requestId);
    if (recorded.length) {
      this.counters.resumed++;
      this.options.onEvent?.(`request ${job.requestId}: resumed after the ${recorded.length} tokens an earlier attempt recorded (claim ${fence} of its log)`);
      const logprobs = job.logprobs === undefined ? [] : await log.readLogprobs(job.requestId, job.logprobs);
      this.publish(job.requestId, { type: 'tokens', offset: 0, tokens: recorded, ...(logprobs.length ? { logprobs } : {}) });
    }
    if (stored) {
      const outcome = JSON.parse(stored) as RequestOutcome;
      this.publish(job.requestId, { type: 'done', finishReason: outcome.finishReason, stats: JSON.stringify(outcome) });
      return outcome;
    }
    const remaining = job.maxTokens - recorded.length;
    const failovers: string[] = [];
    let roundTrips: number[][] = [];
    let writes: readonly number[] = [];
    let logWaitMs = 0;
    let result: CascadeResult | undefined;
    let finishReason = 'length';
    if (remaining > 0) {
      let cancelled = false;
      const cancelSub: Subscription = transport.subscribe(subjects.cancel(job.requestId), () => (cancelled = true));
      const verification = job.verification ?? 'rejection';
      const invariant = verification === 'invariant';
      // Invariant: noise is keyed by absolute position, so a resumed request keeps the request's seed
      // and continues exactly as an uninterrupted one. Rejection: a fresh stream for the rest.
      const seed = invariant ? seed64(job.seed) : seed64(job.seed) + BigInt(recorded.length);
      // Under rejection every level samples with its own stream: levels sharing one seed would draw
      // correlated numbers (a drafter's sample and the target's acceptance test), biasing the output.
      // Under invariant every level draws with the same noise by design.
      const eagle = family.eagle !== undefined && job.drafters.includes(family.eagle);
      // each actor call that failed in transport is counted; one placing its session again is logged here,
      // one given up where its level is dropped or its attempt fails
      const callFailed =
        (kind: 'draft' | 'verify', called: string) =>
        (reason: TransportError['reason'], message: string, next: string | undefined): void => {
          this.options.onCallFailed?.(kind, reason);
          if (next) this.options.onEvent?.(`request ${job.requestId}: a call to the ${called} failed (${message}); ${next}`);
        };
      const remote = (name: string, tag: string, stream: number) =>
        new RemoteLevel(transport, name, `${attempt}-${tag}`, {
          ...(stream === 0 && eagle ? { eagle } : {}),
          sampling: job.sampling,
          seed: invariant ? seed : deriveSeed(seed, stream),
          verification,
          timeoutMs: this.options.callTimeoutMs,
          ...(this.options.liveness ? { liveness: this.options.liveness } : {}),
          target: stream === 0,
          promptLength: job.promptIds.length,
          ...(stream === 0 && job.logprobs !== undefined ? { logprobs: job.logprobs } : {}),
          onRoundTrip: (ms) => this.options.onRoundTrip?.(stream === 0 ? 'verify' : 'draft', ms),
          onCallFailed: callFailed(stream === 0 ? 'verify' : 'draft', `${name} actor`),
        });
      const top = remote(family.target, 't', 0);
      const feature = (name: string) =>
        new RemoteFeatureLevel(transport, name, top, {
          timeoutMs: this.options.callTimeoutMs,
          ...(this.options.liveness ? { liveness: this.options.liveness } : {}),
          onRoundTrip: (ms) => this.options.onRoundTrip?.('draft', ms),
          onCallFailed: callFailed('verify', `${family.target} actor's ${name}`),
        });
      const drafters: CascadeLevel[] = job.drafters.map((d, i) => {
        const kind = drafterKind(family, d);
        return kind === 'mag' ? new MagLevel({ ...family.magTables }) : kind === 'eagle' ? feature(d) : remote(d, `d${i}`, i + 1);
      });
      roundTrips = [top, ...drafters].flatMap((l) => (l instanceof RemoteLevel || l instanceof RemoteFeatureLevel ? [l.roundTripsMs] : []));
      // The log is written behind the loop: a round's tokens are queued and the next pass starts (2-4%
      // more tokens/s than waiting for each append, bench/results/log-writes); they stream once recorded.
      // A failed append stops the writer, and the next push (the next round) throws it.
      const writer = new LogWriter(log, job.requestId, fence, recorded.length, job.logprobs, (offset, tokens, logprobs) =>
        this.publish(job.requestId, { type: 'tokens', offset, tokens, ...(logprobs ? { logprobs } : {}) }),
      );
      writes = writer.appendMs;
      try {
        result = await runDrafting(
          top,
          drafters,
          { kMatrix: job.kMatrix, lenience: job.lenience, drafting: job.drafting ?? 'serial', magFirst: job.magFirst },
          { promptIds: [...job.promptIds, ...recorded], maxTokens: remaining, sampling: job.sampling, seed, verification, stopAtEos: job.stopAtEos, promptLength: job.promptIds.length, ...(job.logprobs !== undefined ? { logprobs: job.logprobs } : {}) },
          {
            eosIds: family.eosIds,
            maxPositions: family.maxPositions,
            onTokens: async (fresh, logprobs) => {
              writer.push(fresh, logprobs);
            },
            onLevelFailure: (level, err) => {
              if (level === top || !(err instanceof LevelUnavailableError)) return false;
              failovers.push(level.name);
              this.counters.failovers++;
              this.options.onEvent?.(`request ${job.requestId}: dropped drafter ${level.name} (${err.message}); going on without it`);
              span.addEvent('cascade.level_dropped', { 'cascade.level': level.name, 'cascade.reason': err.message });
              return true;
            },
            // a stopped writer ends the run before its next round (its error is thrown by settle below)
            cancelled: () => cancelled || writer.stopped,
            outcomeBranches: job.outcomeBranches,
            levelBelow: job.levelBelow,
            inRound: (round, run) => inSpan('cascade.round', context.active(), { 'cascade.round': round }, run),
          },
        );
        finishReason = result.finishReason;
        const waited = performance.now();
        await writer.settle();
        logWaitMs = performance.now() - waited;
      } catch (err) {
        // an append in flight lands (or is refused) before the attempt ends; a refusal says a newer
        // attempt runs the request, which outranks what failed here (this attempt must not report it failed)
        const refused = await writer.settle().then(() => undefined, (e: unknown) => e);
        if (refused instanceof RequestSupersededError) throw refused;
        if (err instanceof ActorError && /: invalid:/.test(err.message)) throw new InvalidArgumentError(err.message, { cause: err });
        throw err;
      } finally {
        await cancelSub.close();
        for (const ms of writes) this.options.onLogAppend?.(ms);
      }
    }
    const outcome: RequestOutcome = {
      finishReason,
      generatedTokens: recorded.length + (result?.tokenIds.length ?? 0),
      resumedFrom: recorded.length,
      failovers,
      queueSeconds,
      stats: result?.stats,
      ...roundTripSummary(roundTrips.flat()),
      ...(writes.length ? { logAppends: { ...summary(writes), waitMs: logWaitMs } } : {}),
    };
    await log.finish(job.requestId, fence, JSON.stringify(outcome));
    this.publish(job.requestId, { type: 'done', finishReason, stats: JSON.stringify(outcome) });
    return outcome;
  }

  /** Tells the stream the request failed for good. */
  failed(requestId: string, message: string): void {
    this.publish(requestId, { type: 'failed', message });
  }
}

const summary = (ms: readonly number[]) => ({ calls: ms.length, p50: quantile(ms, 0.5), p99: quantile(ms, 0.99) });

/** p50/p99 of a request's actor round trips (ms), or nothing without calls. */
function roundTripSummary(ms: readonly number[]): Pick<RequestOutcome, 'roundTripMs'> {
  return ms.length ? { roundTripMs: summary(ms) } : {};
}

/**
 * BullMQ's connection and key prefix for a deployment (`--redis`: a URL, or a list of one). One
 * server: connection options (BullMQ owns the connection). A Redis Cluster: a Cluster client, which
 * `close` ends after the queue or worker, and the braced prefix `{bull}` (queuePrefix), since every
 * key of a BullMQ queue must share one slot. Blocking commands never give up, as BullMQ requires.
 */
export function queueConnection(redis: string | readonly string[] | RedisDeployment): { connection: RedisClient | { url: string; maxRetriesPerRequest: null; socketTimeout: number }; prefix: string; close(): Promise<void> } {
  const deployment = typeof redis === 'object' && 'kind' in redis ? redis : parseRedis(redis as string | readonly string[]);
  const prefix = queuePrefix(deployment);
  if (deployment.kind === 'server') return { connection: { url: deployment.url, maxRetriesPerRequest: null, socketTimeout: QUEUE_SOCKET_TIMEOUT_MS }, prefix, close: async () => undefined };
  const client = openRedis(deployment, { queue: true });
  logRedisEvents(client, 'queue');
  return { connection: client, prefix, close: async () => void (await client.quit().catch(() => client.disconnect())) };
}

export interface WorkerOptions {
  /** The deployment: a Redis URL or a Redis Cluster's `redis+cluster://` seeds (redis-connection.ts). */
  readonly redis: string | readonly string[] | RedisDeployment;
  /** Requests one coordinator drives at once. */
  readonly concurrency?: number;
  /** How long a job's lock lasts without renewal: a dead coordinator's request is retried after it. */
  readonly lockDurationMs?: number;
  /** Called for each failed attempt (not a superseded one) with the error's class name, and whether it was the request's last. */
  readonly onAttemptFailed?: (error: string, final: boolean) => void;
}

/**
 * A coordinator as a BullMQ worker. A job that throws is retried with backoff (the queue's
 * attempts); bad input is not retried. A coordinator that dies mid-request stops renewing the lock:
 * BullMQ's stalled-job check hands the request to another worker, which resumes from Redis.
 */
export function startCoordinatorWorker(coordinator: Coordinator, options: WorkerOptions): Worker {
  const lockDuration = options.lockDurationMs ?? 10_000;
  const { connection, prefix, close } = queueConnection(options.redis);
  const worker = new ClosingWorker(close,
    QUEUE_NAME,
    async (job: Job) => {
      try {
        return await coordinator.run(job.data, job.attemptsMade);
      } catch (err) {
        if (err instanceof RequestSupersededError) {
          // The job now belongs to the newer attempt: BullMQ refuses this attempt's (lock-less)
          // failure, and the request must not be reported failed while the newer attempt runs it.
          process.stderr.write(`request ${err.request} attempt ${job.attemptsMade + 1} stopped: ${err.message}\n`);
          throw err;
        }
        const last = err instanceof InvalidArgumentError || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
        // the project's own errors say what happened in their message; anything else gets its stack
        const why = err instanceof CascadeError ? `${err.name}: ${err.message}` : ((err as Error).stack ?? String(err));
        logLine(`request ${String(job.data?.requestId ?? job.id)} attempt ${job.attemptsMade + 1} of ${job.opts.attempts ?? 1} failed${last ? ' for good' : ', will retry'}: ${why}`);
        options.onAttemptFailed?.((err as Error).name ?? 'Error', last);
        if (last) coordinator.failed(String(job.data?.requestId ?? job.id), (err as Error).message);
        if (err instanceof InvalidArgumentError) throw new UnrecoverableError((err as Error).message);
        throw err;
      }
    },
    {
      connection,
      prefix,
      concurrency: options.concurrency ?? 8,
      lockDuration,
      stalledInterval: Math.max(500, Math.floor(lockDuration / 2)),
      maxStalledCount: 3,
    },
  );
  worker.on('error', throttledErrorLog('BullMQ worker (coordinator)')); // connection errors: ioredis reconnects
  return worker;
}

/** The gateway's side of the queue (`redis`: as WorkerOptions.redis). */
export function openQueue(redis: string | readonly string[] | RedisDeployment): Queue {
  const { connection, prefix, close } = queueConnection(redis);
  const queue = new ClosingQueue(close, QUEUE_NAME, { connection, prefix });
  queue.on('error', throttledErrorLog('BullMQ queue'));
  return queue;
}

/** A Worker that also ends the connection it was given (a Cluster client: BullMQ leaves shared clients open). */
class ClosingWorker extends Worker {
  constructor(
    private readonly closeConnection: () => Promise<void>,
    name: string,
    processor: Processor,
    opts: BullWorkerOptions,
  ) {
    super(name, processor, opts);
  }

  override async close(force?: boolean): Promise<void> {
    await super.close(force);
    await this.closeConnection();
  }
}

/** A Queue that also ends the connection it was given. */
class ClosingQueue extends Queue {
  constructor(
    private readonly closeConnection: () => Promise<void>,
    name: string,
    opts: QueueOptions,
  ) {
    super(name, opts);
  }

  override async close(): Promise<void> {
    await super.close();
    await this.closeConnection();
  }
}

/**
 * Job options: the request id as the job id (no duplicates), and retries with exponential backoff:
 * 1, 2, 4 and 8 s between 5 attempts, so that a request outlasts a verifier that stops answering for
 * some seconds (a GC pause, a busy host, a restart), which an attempt notices at once once NATS has
 * dropped the verifier ("no responders"). (3 attempts 250 ms apart were spent in under a second.)
 */
export const jobOptions = (requestId: string, attempts = 5) => ({
  jobId: requestId,
  attempts,
  backoff: { type: 'exponential' as const, delay: 1000 },
  removeOnComplete: 1000,
  removeOnFail: 1000,
});
