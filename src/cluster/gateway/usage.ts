import type { CascadeStats } from '../../engine/cascade.ts';
import type { RequestOutcome } from '../coordinator.ts';
import type { GatewayMetrics } from '../metrics.ts';

/**
 * A response's `usage`: OpenAI's token counts (the prompt once, the completion tokens of every
 * choice), and `cascade` (the coordinator's round statistics, summed over the choices: target
 * passes, drafted and accepted tokens, acceptance by draft position, failovers, the longest wait in
 * the queue, and with MaG first the rounds MaG drafted alone) where the outcomes have them.
 */
export function usage(outcomes: readonly (RequestOutcome | undefined)[], promptTokens: number, completionTokens: number) {
  const ran = outcomes.filter((o): o is RequestOutcome & { stats: NonNullable<RequestOutcome['stats']> } => o?.stats !== undefined);
  const sum = (f: (o: (typeof ran)[number]) => number) => ran.reduce((a, o) => a + f(o), 0);
  const positions = Math.max(0, ...ran.map((o) => o.stats.draftedByPosition.length));
  const rounds = sum((o) => o.stats.rounds);
  const accepted = sum((o) => o.stats.acceptedTokens);
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    cascade: ran.length
      ? {
          target_passes: rounds,
          drafted_tokens: sum((o) => o.stats.draftedTokens),
          accepted_tokens: accepted,
          mean_acceptance_length: rounds ? (accepted + rounds) / rounds : 0,
          acceptance_by_position: Array.from({ length: positions }, (_, i) => sum((o) => o.stats.acceptedByPosition[i] ?? 0) / Math.max(1, sum((o) => o.stats.draftedByPosition[i] ?? 0))),
          resumed_from: sum((o) => o.resumedFrom),
          dropped_levels: [...new Set(ran.flatMap((o) => o.failovers))],
          queue_seconds: Math.max(...ran.map((o) => o.queueSeconds)),
          target_busy_fraction: Math.max(0, ...ran.map((o) => targetBusyFraction(o.stats) ?? 0)),
          ...(ran.some((o) => o.stats.drafting) ? { wasted_drafts: sum((o) => o.stats.drafting?.wastedDrafts ?? 0), pre_draft_hit_rate: sum((o) => (o.stats.drafting?.preDraftHitRate ?? 0) * o.stats.rounds) / Math.max(1, rounds), drafter_paused_passes: sum((o) => o.stats.drafting?.drafterPausedPasses ?? 0), outcome_drafts: sum((o) => o.stats.drafting?.outcomeDrafts ?? 0), outcome_hits: sum((o) => o.stats.drafting?.outcomeHits ?? 0), pipelined_drafts: sum((o) => o.stats.drafting?.pipelinedDrafts ?? 0), pipelined_accepted: sum((o) => o.stats.drafting?.pipelinedAccepted ?? 0), below_drafts: sum((o) => o.stats.drafting?.belowDrafts ?? 0), below_accepted: sum((o) => o.stats.drafting?.belowAccepted ?? 0) } : {}),
          ...(ran.some((o) => o.stats.magFirstRounds !== undefined) ? { mag_first_rounds: sum((o) => o.stats.magFirstRounds ?? 0) } : {}),
          ...roundTrips(ran),
          ...logAppends(ran),
        }
      : undefined,
  };
}

/** The actor calls' round trips (cluster only): the largest p50 and p99 of the choices, ms. */
function roundTrips(ran: readonly RequestOutcome[]) {
  const r = ran.flatMap((o) => (o.roundTripMs ? [o.roundTripMs] : []));
  return r.length ? { actor_round_trip_ms: { p50: Math.max(...r.map((x) => x.p50)), p99: Math.max(...r.map((x) => x.p99)) } } : {};
}

/** The coordinator's appends to the token log (cluster only): all the choices' calls, the largest p50 and p99 and wait after the last pass, ms. */
function logAppends(ran: readonly RequestOutcome[]) {
  const r = ran.flatMap((o) => (o.logAppends ? [o.logAppends] : []));
  return r.length ? { log_append_ms: { calls: r.reduce((a, x) => a + x.calls, 0), p50: Math.max(...r.map((x) => x.p50)), p99: Math.max(...r.map((x) => x.p99)), wait: Math.max(...r.map((x) => x.waitMs)) } } : {};
}

/** The target's forward time over the request's generation time (the target is the first model of `models`). */
function targetBusyFraction(s: CascadeStats): number | undefined {
  if (s.drafting) return s.drafting.targetBusyFraction;
  const target = Object.values(s.models)[0];
  return target && s.seconds > 0 ? Math.min(1, target.forwardMs / 1000 / s.seconds) : undefined;
}

/**
 * Records a finished request in the gateway's Prometheus metrics: end-to-end and queue seconds, token
 * counts, time per output token after the first (`firstAt`, a performance.now() like `startedAt`),
 * tokens per second, drafts and acceptance by position, failovers by level.
 */
export function recordOutcome(metrics: GatewayMetrics, outcome: RequestOutcome, promptTokens: number, generated: number, startedAt: number, firstAt: number | undefined): void {
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
    if (s.rounds) metrics.acceptedPerPass.observe((s.acceptedTokens + s.rounds) / s.rounds);
    const busy = targetBusyFraction(s);
    if (busy !== undefined) metrics.targetBusy.observe(busy);
    if (s.drafting) {
      metrics.wastedDrafts.inc(s.drafting.wastedDrafts);
      metrics.preDraftHits.observe(s.drafting.preDraftHitRate);
      metrics.drafterPausedPasses.inc(s.drafting.drafterPausedPasses);
      metrics.outcomeDrafts.inc(s.drafting.outcomeDrafts);
      metrics.outcomeHits.inc(s.drafting.outcomeHits);
      metrics.pipelinedDrafts.inc({ result: 'reviewed' }, s.drafting.pipelinedDrafts);
      metrics.pipelinedDrafts.inc({ result: 'accepted' }, s.drafting.pipelinedAccepted);
    }
    s.draftedByPosition.forEach((d, i) => {
      metrics.draftedByPosition.inc({ position: String(i) }, d);
      metrics.acceptedByPosition.inc({ position: String(i) }, s.acceptedByPosition[i] ?? 0);
    });
  }
  for (const level of outcome.failovers) metrics.failovers.inc({ level });
}
