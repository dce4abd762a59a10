import { existsSync, readFileSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startNats, startRedis, type LocalServer } from '../cluster/local-servers.ts';
import { spawnRole, type RoleProcess } from '../cluster/processes.ts';
import { startGatewayRole } from '../cluster/roles.ts';
import type { SpanRecord } from '../cluster/tracing.ts';
import { generateCascade } from '../engine/cascade.ts';
import { generateAutoregressive } from '../engine/generate.ts';
import { planCascade } from '../engine/presets.ts';
import { GREEDY } from '../kernels/sampling.ts';
import { loadBigram, loadFamily } from '../models/family.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { formatTable, median, writeJson } from './report.ts';
import { loadWorkload } from './workloads.ts';

export interface BenchClusterOptions {
  readonly models: string;
  readonly maxTokens: number;
  /** Requests a coordinator drives at once. */
  readonly concurrency: number;
  /** Verifier actor processes, and actor processes per drafter (1 each by default). */
  readonly verifiers?: number;
  readonly draftInstances?: number;
  /** Environment of every role process. */
  readonly env?: Record<string, string>;
  /** Called once the roles are up, before the gateway starts in this process. */
  readonly onReady?: () => void;
}

/** A greedy completion through the gateway: text, completion tokens, wall seconds. */
export interface Completion {
  readonly text: string;
  readonly tokens: number;
  readonly seconds: number;
}

/**
 * A cluster on this machine for benchmarks: nats-server and redis-server on free ports, one OS
 * process per actor and a coordinator, the gateway in this process. `complete` sends one greedy
 * completion (default cascade); `stop` stops everything.
 */
export async function startBenchCluster(o: BenchClusterOptions): Promise<{ complete: (prompt: string) => Promise<Completion>; stop: () => Promise<void> }> {
  const family = loadFamily(o.models);
  const servers: LocalServer[] = [];
  const roles: RoleProcess[] = [];
  let gateway: Awaited<ReturnType<typeof startGatewayRole>> | undefined;
  const stop = async () => {
    await gateway?.stop().catch(() => undefined);
    await Promise.all(roles.map((r) => r.stop()));
    await Promise.all(servers.map((s) => s.stop()));
  };
  try {
    const [nats, redis] = await Promise.all([startNats(), startRedis()]);
    servers.push(nats, redis);
    const env = o.env ?? {};
    const common = ['--models', o.models, '--nats', nats.url];
    const times = (n: number | undefined) => Array.from({ length: n ?? 1 });
    roles.push(
      ...(await Promise.all([
        ...times(o.verifiers).map(() => spawnRole(['actor', 'verify', ...common], env)),
        ...family.drafters.flatMap((d) => times(o.draftInstances).map(() => spawnRole(['actor', 'draft', '--model', d, ...common], env))),
        spawnRole(['coordinator', ...common, '--redis', redis.url, '--concurrency', String(o.concurrency)], env),
      ])),
    );
    o.onReady?.();
    gateway = await startGatewayRole({ models: o.models, nats: nats.url, redis: [redis.url], port: 0, maxInFlight: 1024 });
  } catch (err) {
    await stop();
    throw err;
  }
  const url = `${gateway.url}/v1/completions`;
  const complete = async (prompt: string): Promise<Completion> => {
    const t0 = performance.now();
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, max_tokens: o.maxTokens, temperature: 0 }) });
    const body = (await res.json()) as { choices: { text: string }[]; usage: { completion_tokens: number }; error?: { message: string } };
    if (!res.ok) throw new Error(`gateway answered ${res.status}: ${body.error?.message}`);
    return { text: body.choices[0]!.text, tokens: body.usage.completion_tokens, seconds: (performance.now() - t0) / 1000 };
  };
  return { complete, stop };
}

export interface ClusterBenchOptions {
  readonly models: string;
  readonly prompts: number;
  readonly maxTokens: number;
  readonly repeats: number;
  readonly concurrency: readonly number[];
  readonly out: string;
}

/**
 * `cascade bench cluster`: the same greedy csd requests embedded (one process, no servers) and
 * through a cluster on this machine (nats-server, redis-server, one OS process per actor and a
 * coordinator, the gateway here), side by side in one run; then aggregate throughput at several
 * concurrencies, and a latency breakdown per request from the trace spans. Every single-stream
 * output of both paths is checked against target-only decoding (the target alone), the oracle of
 * greedy exactness: never against the other path's cascade.
 */
export async function benchCluster(o: ClusterBenchOptions): Promise<void> {
  const family = loadFamily(o.models);
  const models = family.dir;
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  const spanFile = join(out, 'cluster-spans.jsonl');
  rmSync(spanFile, { force: true });
  delete process.env.CASCADE_TRACE_FILE;
  const prompts = loadWorkload('code').slice(0, o.prompts).map((p) => p.prompt);
  const plan = planCascade({ mode: 'csd' }, family.drafters);
  const log = (s: string) => process.stderr.write(`${s}\n`);

  // embedded: the engine in this process
  const sessions = new FamilySessions(family, {});
  const target = await sessions.get(family.target);
  const tokenizer = TextTokenizer.load(target.spec.tokenizerPath);
  const targetOnly: string[] = [];
  for (const p of prompts) targetOnly.push(tokenizer.decode((await generateAutoregressive(target, { promptIds: tokenizer.encode(p), maxTokens: o.maxTokens, sampling: GREEDY, seed: 0 })).tokenIds));
  const drafters = await Promise.all(plan.drafters.map(async (d) => (d === 'mag' ? { kind: 'mag' as const, bigram: loadBigram(family) } : { kind: 'model' as const, session: await sessions.get(d) })));
  const embedded = async (prompt: string): Promise<Completion> => {
    const t0 = performance.now();
    const r = await generateCascade(target, { drafters, kMatrix: plan.kMatrix, lenience: 1 }, { promptIds: tokenizer.encode(prompt), maxTokens: o.maxTokens, sampling: GREEDY, seed: 0 });
    return { text: tokenizer.decode(r.tokenIds), tokens: r.tokenIds.length, seconds: (performance.now() - t0) / 1000 };
  };

  const startCluster = (traced: boolean) =>
    startBenchCluster({ models, maxTokens: o.maxTokens, concurrency: Math.max(...o.concurrency), env: traced ? { CASCADE_TRACE_FILE: spanFile } : {}, onReady: () => traced && (process.env.CASCADE_TRACE_FILE = spanFile) });

  let running: Awaited<ReturnType<typeof startCluster>> | undefined;
  try {
    log('starting nats-server, redis-server, actors and a coordinator (tracing off) …');
    running = await startCluster(false);
    const cluster = running.complete;
    // warm both paths (first ONNX runs, connections)
    await embedded(prompts[0]!);
    await cluster(prompts[0]!);

    // single stream, side by side, alternating order each repeat
    const rate = { embedded: [] as number[], cluster: [] as number[] };
    const exact = { embedded: true, cluster: true };
    for (let r = 0; r < o.repeats; r++) {
      const order = r % 2 ? (['cluster', 'embedded'] as const) : (['embedded', 'cluster'] as const);
      for (const which of order) {
        const results: Completion[] = [];
        for (const p of prompts) results.push(await (which === 'embedded' ? embedded(p) : cluster(p)));
        rate[which].push(results.reduce((a, c) => a + c.tokens, 0) / results.reduce((a, c) => a + c.seconds, 0));
        if (results.some((c, i) => c.text !== targetOnly[i])) exact[which] = false;
      }
      log(`repeat ${r + 1}/${o.repeats}: embedded ${rate.embedded.at(-1)!.toFixed(1)} tok/s, cluster ${rate.cluster.at(-1)!.toFixed(1)} tok/s`);
    }

    // aggregate throughput under concurrency
    const loads: { concurrency: number; tokensPerSecond: number; requests: number; p50LatencyS: number }[] = [];
    for (const c of o.concurrency) {
      const perRepeat: number[] = [];
      const latencies: number[] = [];
      const total = Math.max(prompts.length, 2 * c);
      for (let r = 0; r < o.repeats; r++) {
        let next = 0;
        let tokens = 0;
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: c }, async () => {
            while (next < total) {
              const res = await cluster(prompts[next++ % prompts.length]!);
              tokens += res.tokens;
              latencies.push(res.seconds);
            }
          }),
        );
        perRepeat.push(tokens / ((performance.now() - t0) / 1000));
      }
      loads.push({ concurrency: c, tokensPerSecond: median(perRepeat), requests: total, p50LatencyS: median(latencies) });
      log(`concurrency ${c}: ${median(perRepeat).toFixed(1)} tok/s aggregate`);
    }

    await running.stop();
    running = undefined;

    // latency breakdown: the same single-stream requests through a traced cluster (spans cost time,
    // so the throughput above was measured without them)
    log('restarting the cluster with tracing on for the latency breakdown …');
    running = await startCluster(true);
    await running.complete(prompts[0]!);
    const traceStart = Date.now();
    for (const p of prompts) await running.complete(p);
    const traceEnd = Date.now();
    await new Promise((r) => setTimeout(r, 300)); // let the other processes' last spans land
    const breakdown = latencyBreakdown(readSpans(spanFile), traceStart, traceEnd, family.target);
    const e = median(rate.embedded);
    const c1 = median(rate.cluster);
    const record = {
      machine: 'this machine (see bench/results/README.md)',
      workload: `code prompts (${prompts.length}), greedy, ${o.maxTokens} tokens, csd ${JSON.stringify(plan.kMatrix)} over ${plan.drafters.join(', ')}`,
      repeats: o.repeats,
      singleStream: { embeddedTokensPerSecond: e, clusterTokensPerSecond: c1, ratio: c1 / e, equalsTargetOnly: exact, embeddedRuns: rate.embedded, clusterRuns: rate.cluster },
      concurrency: loads,
      latencyBreakdownMs: breakdown,
    };
    writeJson(out, 'cluster', record);
    const table1 = formatTable(
      ['path', 'concurrency', 'tokens/s', 'x embedded', 'greedy = target-only'],
      [['embedded', 1, e, 1, exact.embedded ? 'yes' : 'NO'], ['cluster', 1, c1, c1 / e, exact.cluster ? 'yes' : 'NO'], ...loads.filter((l) => l.concurrency !== 1).map((l) => ['cluster (aggregate)', l.concurrency, l.tokensPerSecond, l.tokensPerSecond / e, '-'])],
    );
    const table2 = formatTable(
      ['part of a request (median ms)', 'ms', '% of e2e'],
      Object.entries(breakdown.medians).map(([k, v]) => [k, v, breakdown.medians.e2e ? (100 * v) / breakdown.medians.e2e : 0]),
    );
    const md = `# Cluster benchmark\n\n${record.workload}; medians of ${o.repeats} repeats.\n\n\`\`\`\n${table1}\n\`\`\`\n\nLatency breakdown of single-stream cluster requests (${breakdown.requests} requests through the same cluster restarted with tracing on), from OpenTelemetry spans:\n\n\`\`\`\n${table2}\n\`\`\`\n\n${BREAKDOWN_DEFINITIONS}\n`;
    writeFileSync(join(out, 'cluster.md'), md);
    process.stdout.write(`${table1}\n\n${table2}\n\nwrote ${join(out, 'cluster.json')} and cluster.md\n`);
  } finally {
    await running?.stop();
    await sessions.close();
  }
}

const BREAKDOWN_DEFINITIONS = `Definitions: *queue* = gateway received → coordinator started (HTTP, BullMQ enqueue and pick-up);
*draft:<model>* = time the coordinator spent in calls to that drafter's actors; *verify* = the same for
the target; *actor compute* = time inside the actors' handlers (model forward and acceptance);
*network+serialisation* = actor calls minus actor compute (frames, NATS, scheduling); *coordinator other* =
the coordinator's request span minus its actor calls (MaG, Redis writes, stream publishing);
*e2e* = the gateway's request span.`;

function readSpans(path: string): SpanRecord[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as SpanRecord);
}

/** Per-request latency parts from spans of traces started in [from, to]. */
export function latencyBreakdown(spans: readonly SpanRecord[], from: number, to: number, target: string) {
  const byTrace = new Map<string, SpanRecord[]>();
  for (const s of spans) byTrace.set(s.traceId, [...(byTrace.get(s.traceId) ?? []), s]);
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const parts: Record<string, number[]> = {};
  const add = (k: string, v: number) => (parts[k] ??= []).push(v);
  let requests = 0;
  for (const trace of byTrace.values()) {
    const root = trace.find((s) => s.name === 'gateway.request');
    const coord = trace.filter((s) => s.name === 'coordinator.request').sort((a, b) => a.startMs - b.startMs)[0];
    if (!root || !coord || root.startMs < from || root.startMs > to) continue;
    requests++;
    const levelMs: Record<string, number> = {};
    let calls = 0;
    let compute = 0;
    for (const s of trace) {
      if (s.name.startsWith('level.')) {
        const level = String(s.attributes['cascade.level']);
        const key = level === target ? 'verify' : `draft:${level}`;
        levelMs[key] = (levelMs[key] ?? 0) + (s.endMs - s.startMs);
        calls += s.endMs - s.startMs;
      } else if (s.name.startsWith('actor.') && s.parentSpanId && byId.get(s.parentSpanId)?.name.startsWith('level.')) {
        compute += s.endMs - s.startMs;
      }
    }
    add('queue', Math.max(0, coord.startMs - root.startMs));
    for (const [k, v] of Object.entries(levelMs)) add(k, v);
    add('actor compute', compute);
    add('network+serialisation', Math.max(0, calls - compute));
    add('coordinator other', Math.max(0, coord.endMs - coord.startMs - calls));
    add('e2e', root.endMs - root.startMs);
  }
  const medians: Record<string, number> = {};
  for (const [k, v] of Object.entries(parts)) medians[k] = median(v);
  return { requests, medians };
}
