import test from 'ava';
import { runChaos, SCENARIOS } from '../src/bench/chaos.ts';
import { MODELS_DIR } from './helpers/family.ts';
import { testRedisKind } from './helpers/redis.ts';

/**
 * The chaos suite's shortened CI profile (the full one is `cascade chaos`: 20 streams of 32 tokens).
 * Each scenario: concurrent greedy streams while a process is killed, paused or restarted, then a
 * recovery wave. Every request must complete (a retry after an explicit error allowed) with the
 * greedy text of target-only decoding (the target model alone, not the cluster's own no-fault run),
 * and no actor may hold a session once the idle timeout has passed. With CASCADE_TEST_REDIS=cluster
 * the cluster keeps its state in a Redis Cluster, and restart-redis is a master's failover.
 */
test('chaos - every fault scenario keeps every request, with the greedy output of target-only decoding and no leaked sessions', async (t) => {
  const lines: string[] = [];
  const results = await runChaos({ models: MODELS_DIR, scenarios: SCENARIOS, concurrency: 4, maxTokens: 16, out: '', log: (l) => lines.push(l), redis: testRedisKind() });
  t.is(results.length, SCENARIOS.length);
  for (const r of results) {
    t.is(r.completed, r.requests, `${r.scenario}: every request completed (${lines.join(' / ')})`);
    t.is(r.identical, r.requests, `${r.scenario}: greedy output identical to target-only decoding`);
    t.is(r.recoveryCompleted, r.requests, `${r.scenario}: the recovery wave completed with target-only output`);
    t.is(r.leakedSessions, 0, `${r.scenario}: no actor holds a session afterwards`);
  }
});
