import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const FAST = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];
const PER_TOKEN = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1];

/** The coordinator's appends to requests' token logs in Redis (LogWriter). */
export function logAppendHistogram(registry: Registry): Histogram {
  return new Histogram({ name: 'cascade_log_append_seconds', help: "Wall time of the coordinator's appends to a request's token log in Redis (written behind the passes: one in flight, taking the rounds finished meanwhile)", buckets: FAST, registers: [registry] });
}

/**
 * A coordinator's actor calls' round trips: each call's wall time minus the actor's own handler time
 * (frame v7's `serveMs`), i.e. NATS, framing and scheduling, labelled `kind` = draft or verify.
 */
export function actorRoundTripHistogram(registry: Registry): Histogram<'kind'> {
  return new Histogram({ name: 'cascade_actor_round_trip_seconds', help: "Actor call wall time minus the actor's handler time (NATS, framing, scheduling), by the kind of actor", labelNames: ['kind'], buckets: FAST, registers: [registry] });
}

/** A coordinator's failed request attempts, by the error's class and whether it was the request's last (`final`: the request failed). */
export function failedAttemptsCounter(registry: Registry): Counter<'error' | 'final'> {
  return new Counter({ name: 'cascade_request_attempts_failed_total', help: "Request attempts that failed in a coordinator, by the error's class; final=\"true\" when the request failed for good, \"false\" when BullMQ retries it", labelNames: ['error', 'final'], registers: [registry] });
}

/** A coordinator's actor calls that failed in transport, by the kind of actor called and why: `timeout` (the call timeout passed: a frozen, partitioned or overloaded actor), `no-responders` (nothing serves the subject: the actor is gone), `closed` (a frame over the payload limit, or a NATS error) or `silent` (the instance's heartbeats stopped mid-call: ActorLiveness). */
export function actorCallsFailedCounter(registry: Registry): Counter<'kind' | 'reason'> {
  return new Counter({ name: 'cascade_actor_calls_failed_total', help: 'Actor calls that failed in transport, by the kind of actor called and reason (timeout: the call timeout passed; no-responders: no actor serves the subject; closed: a frame over the payload limit or a NATS error; silent: the instance stopped sending heartbeats mid-call); a session call that failed is tried once more, its session placed again, before its drafter is dropped or the request attempt fails', labelNames: ['kind', 'reason'], registers: [registry] });
}

/**
 * The gateway's Prometheus metrics (SPEC §7). Definitions:
 * - TTFT: request received → first generated token streamed (queue time included).
 * - ITL: gap between streamed chunks divided by the tokens in the later chunk (a cascade emits
 *   several tokens per target pass, so a chunk's tokens share its gap).
 * - TPOT: (end-to-end − TTFT) / (generated − 1), per request.
 * - queue time: enqueued → a coordinator took the request (from the coordinator's record).
 * - drafts: target passes that reviewed a drafted block; draft tokens: tokens those blocks held;
 *   accepted tokens: drafts the target accepted; by position: the same split by draft position.
 * - KV use: sessions the coordinators hold open on actors (one per neural level per request).
 * - accepted tokens per target pass: (accepted drafts + passes) / passes, per request.
 * - target busy fraction: the target's forward time over the request's generation time, per request
 *   (how much of the request the target was computing; the rest it waited for drafts, the network or the queue).
 * - wasted drafts: tokens an async drafter drafted on prefixes that died (async drafting only).
 * - pre-draft hit rate: target passes whose block began with drafts the async drafter made during
 *   the pass before, beyond its outcome, over passes, per request (async drafting only).
 * - drafter paused passes, outcome branch drafts and hits: the async loop's counts (usage.cascade's
 *   drafter_paused_passes, outcome_drafts, outcome_hits).
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly ttft = new Histogram({ name: 'cascade_time_to_first_token_seconds', help: 'Request received to first generated token streamed', buckets: LATENCY, registers: [this.registry] });
  readonly itl = new Histogram({ name: 'cascade_inter_token_latency_seconds', help: 'Gap between streamed chunks per token of the chunk', buckets: PER_TOKEN, registers: [this.registry] });
  readonly tpot = new Histogram({ name: 'cascade_time_per_output_token_seconds', help: '(end-to-end - TTFT) / (generated tokens - 1) per request', buckets: PER_TOKEN, registers: [this.registry] });
  readonly e2e = new Histogram({ name: 'cascade_e2e_request_latency_seconds', help: 'Request received to response finished', buckets: LATENCY, registers: [this.registry] });
  readonly queue = new Histogram({ name: 'cascade_queue_time_seconds', help: 'Enqueued to taken by a coordinator', buckets: LATENCY, registers: [this.registry] });
  readonly tokensPerSecond = new Histogram({ name: 'cascade_request_tokens_per_second', help: 'Generated tokens per second of each request', buckets: [1, 5, 10, 25, 50, 100, 250, 500, 1000], registers: [this.registry] });
  readonly promptTokens = new Counter({ name: 'cascade_prompt_tokens_total', help: 'Prompt tokens of finished requests', registers: [this.registry] });
  readonly generationTokens = new Counter({ name: 'cascade_generation_tokens_total', help: 'Generated tokens of finished requests', registers: [this.registry] });
  readonly drafts = new Counter({ name: 'cascade_drafts_total', help: 'Target passes that reviewed a drafted block', registers: [this.registry] });
  readonly draftTokens = new Counter({ name: 'cascade_draft_tokens_total', help: 'Drafted tokens the target reviewed', registers: [this.registry] });
  readonly acceptedTokens = new Counter({ name: 'cascade_accepted_tokens_total', help: 'Drafted tokens the target accepted', registers: [this.registry] });
  readonly acceptedByPosition = new Counter({ name: 'cascade_accepted_tokens_by_position_total', help: 'Accepted drafted tokens by draft position', labelNames: ['position'], registers: [this.registry] });
  readonly draftedByPosition = new Counter({ name: 'cascade_draft_tokens_by_position_total', help: 'Drafted tokens by draft position', labelNames: ['position'], registers: [this.registry] });
  readonly requests = new Counter({ name: 'cascade_requests_total', help: 'Finished requests by outcome', labelNames: ['status'], registers: [this.registry] });
  readonly http = new Counter({ name: 'cascade_http_requests_total', help: 'HTTP requests answered, by method, route (unmatched: no route) and status code (aborted: the client left before any answer), refused ones (400, 401, 404, 503) included', labelNames: ['method', 'route', 'status'], registers: [this.registry] });
  readonly inFlight = new Gauge({ name: 'cascade_requests_in_flight', help: 'Requests accepted and not finished', registers: [this.registry] });
  readonly kvSessions = new Gauge({ name: 'cascade_kv_sessions', help: 'Actor sessions (KV caches) held for requests in flight', registers: [this.registry] });
  readonly failovers = new Counter({ name: 'cascade_failovers_total', help: 'Drafter levels dropped mid-request because no actor answered', labelNames: ['level'], registers: [this.registry] });
  readonly acceptedPerPass = new Histogram({ name: 'cascade_accepted_tokens_per_target_pass', help: 'Tokens emitted per target pass (accepted drafts + its own), per request', buckets: [1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8], registers: [this.registry] });
  readonly targetBusy = new Histogram({ name: 'cascade_target_busy_fraction', help: 'Target forward time over generation time, per request', buckets: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1], registers: [this.registry] });
  readonly preDraftHits = new Histogram({ name: 'cascade_pre_draft_hit_rate', help: 'Fraction of target passes whose block the async drafter had drafted during the pass before, per request', buckets: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1], registers: [this.registry] });
  readonly wastedDrafts = new Counter({ name: 'cascade_wasted_drafts_total', help: 'Tokens drafted on prefixes that died (async drafting)', registers: [this.registry] });
  readonly drafterPausedPasses = new Counter({ name: 'cascade_drafter_paused_passes_total', help: 'Target passes run while the async drafter rested for not paying', registers: [this.registry] });
  readonly outcomeDrafts = new Counter({ name: 'cascade_outcome_branch_drafts_total', help: 'Tokens the async drafter drafted on outcome branches (pre-drafted rejection outcomes)', registers: [this.registry] });
  readonly outcomeHits = new Counter({ name: 'cascade_outcome_branch_hits_total', help: 'Outcome branches adopted: the target rejected a draft and emitted the drafter\'s runner-up', registers: [this.registry] });
  readonly pipelinedDrafts = new Counter({ name: 'cascade_pipelined_drafts_total', help: 'MaG\'s drafts (or the neural level below\'s, under level_below) the async drafter reviewed on its speculation (result="reviewed") and accepted (result="accepted"): the pipeline below the drafter', labelNames: ['result'], registers: [this.registry] });
  readonly requeued = new Counter({ name: 'cascade_jobs_requeued_total', help: 'Requests whose job was gone from the queue (a Redis failover lost a write no replica had) and was added again', registers: [this.registry] });
  readonly rejected = new Counter({ name: 'cascade_rejected_total', help: 'Requests refused (503) because the gateway was saturated', registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'cascade_gateway_' });
  }
}
