import type { RequestOutcome } from '../coordinator.ts';
import type { GatewayMetrics } from '../metrics.ts';

/**
 * A response's `usage`: OpenAI's token counts, and `cascade` (the coordinator's round statistics:
 * target passes, drafted and accepted tokens, acceptance by draft position, failovers, seconds queued)
 * where the outcome has them.
 */
export function usage(outcome: RequestOutcome | undefined, promptTokens: number, completionTokens: number) {
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
    s.draftedByPosition.forEach((d, i) => {
      metrics.draftedByPosition.inc({ position: String(i) }, d);
      metrics.acceptedByPosition.inc({ position: String(i) }, s.acceptedByPosition[i] ?? 0);
    });
  }
  for (const level of outcome.failovers) metrics.failovers.inc({ level });
}
