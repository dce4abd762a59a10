import { existsSync, readFileSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import OpenAI from 'openai';
import { startNats, startRedis, type LocalServer } from '../cluster/local-servers.ts';
import { spawnRole, type RoleProcess } from '../cluster/processes.ts';
import { startGatewayRole } from '../cluster/roles.ts';
import type { SpanRecord } from '../cluster/tracing.ts';
import { checkCascade, generateCascade, type DrafterSpec } from '../engine/cascade.ts';
import { generateAutoregressive } from '../engine/generate.ts';
import { planCascade } from '../engine/presets.ts';
import { GREEDY } from '../kernels/sampling.ts';
import { drafterKind, loadMagTables, loadFamily } from '../models/family.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import type { Drafting } from '../engine/async-cascade.ts';
import { formatTable, median, quantile, writeJson } from './report.ts';
import { requestTimeline, timelineSvg } from './timeline.ts';
import { loadWorkload, type Workload } from './workloads.ts';

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
  /** Where the target's verify actor runs: its own processes (`separate`, the default) or inside the coordinator (`colocated`: `cascade coordinator --verifier`). */
  readonly layout?: Layout;
  /** More flags for each verify actor (`separate` only), e.g. `--multi-step-ms 40`. */
  readonly verifierFlags?: readonly string[];
}

/** Cluster layouts: the verify actor in its own process, or in the coordinator's (`cascade coordinator --verifier`). */
export const LAYOUTS = ['separate', 'colocated'] as const;
export type Layout = (typeof LAYOUTS)[number];

/** A greedy completion: text, completion tokens, wall seconds, time per output token after the first (ms). */
export interface Completion {
  readonly text: string;
  readonly tokens: number;
  readonly seconds: number;
  readonly tpotMs: number;
  /** Target passes of the request (as many as tokens for target-only decoding). */
  readonly passes: number;
}

/**
 * A cluster on this machine for benchmarks: nats-server and redis-server on free ports, one OS
 * process per actor and a coordinator (hosting the verify actor under the `colocated` layout), the
 * gateway in this process. `complete` streams one greedy
 * completion through the openai client (the request's `cascade` field as given; default the
 * gateway's); `stop` stops everything.
 */
export async function startBenchCluster(o: BenchClusterOptions): Promise<{ complete: (prompt: string, cascade?: Record<string, unknown>) => Promise<Completion>; stop: () => Promise<void> }> {
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
    const colocated = o.layout === 'colocated';
    roles.push(
      ...(await Promise.all([
        ...(colocated ? [] : times(o.verifiers).map(() => spawnRole(['actor', 'verify', ...common, ...(o.verifierFlags ?? [])], env))),
        ...family.drafters.flatMap((d) => times(o.draftInstances).map(() => spawnRole(['actor', 'draft', '--model', d, ...common], env))),
        spawnRole(['coordinator', ...common, '--redis', redis.url, '--concurrency', String(o.concurrency), ...(colocated ? ['--verifier'] : [])], env),
      ])),
    );
    o.onReady?.();
    gateway = await startGatewayRole({ models: o.models, nats: nats.url, redis: [redis.url], port: 0, maxInFlight: 1024 });
  } catch (err) {
    await stop();
    throw err;
  }
  const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const complete = async (prompt: string, cascade?: Record<string, unknown>): Promise<Completion> => {
    const t0 = performance.now();
    let ttft = 0;
    let text = '';
    let tokens = 0;
    let passes = 0;
    const body = { model: family.target, prompt, max_tokens: o.maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true }, ...(cascade ? { cascade } : {}) };
    for await (const chunk of (await client.completions.create(body as never)) as unknown as AsyncIterable<OpenAI.Completions.Completion>) {
      const piece = chunk.choices[0]?.text ?? '';
      if (piece && !ttft) ttft = performance.now() - t0;
      text += piece;
      if (chunk.usage) {
        tokens = chunk.usage.completion_tokens;
        passes = (chunk.usage as unknown as { cascade?: { target_passes: number } }).cascade?.target_passes ?? tokens;
      }
    }
    return completion(text, tokens, passes, t0, ttft);
  };
  return { complete, stop };
}

export interface ClusterBenchOptions {
  readonly models: string;
  readonly prompts: number;
  readonly maxTokens: number;
  readonly repeats: number;
  /** Concurrent requests of the aggregate runs (none: skipped). */
  readonly concurrency: readonly number[];
  /** Held-out prompt sets measured single stream (bench/prompts). */
  readonly workloads: readonly Workload[];
  /** Drafting modes compared, embedded and in the cluster. */
  readonly draftings: readonly Drafting[];
  readonly out: string;
  /** Draw one traced request's timeline per drafting mode as SVG (FILE, and FILE-<mode>.svg for the others). */
  readonly timeline?: string;
  /** The cascade's drafters by name (the API's cascade.drafters; default: csd's, the family's drafters and MaG). */
  readonly drafters?: readonly string[];
  /** Folder of the prompt sets, WORKLOAD.jsonl (default: bench/prompts). */
  readonly promptsDir?: string;
  /** Cluster layouts measured side by side, each its own cluster (default: separate). Concurrency runs and the traced breakdown use the first. */
  readonly layouts?: readonly Layout[];
}

/** One workload's single-stream figures: medians over repeats, every repeat's, TPOT quantiles, exactness against target-only decoding. */
interface SingleStream {
  readonly workload: Workload;
  readonly prompts: number;
  readonly tokensPerSecond: Record<string, number>;
  readonly runs: Record<string, number[]>;
  /** Generated tokens per target pass (1 for target-only decoding). */
  readonly tokensPerPass: Record<string, number>;
  readonly tpotMs: Record<string, { p50: number; p99: number }>;
  readonly equalsTargetOnly: Record<string, boolean>;
}

/** One single-stream path: target-only decoding, or the cascade embedded or through a cluster (`cluster`: separate layout, `colocated`) under a drafting mode. */
type Path = 'ar' | `embedded/${Drafting}` | `${ClusterPath}/${Drafting}`;
type ClusterPath = 'cluster' | 'colocated';
const pathOf = (layout: Layout): ClusterPath => (layout === 'separate' ? 'cluster' : 'colocated');

/**
 * `cascade bench cluster`: greedy requests single stream, side by side in one run: target-only
 * decoding (ar) and csd embedded (one process, no servers) and through a cluster on this machine
 * (nats-server, redis-server, one OS process per actor and a coordinator, the gateway here), each
 * under every drafting mode (serial rounds, async drafting). The order of the paths rotates each
 * repeat; tokens/s are medians over repeats; TPOT is per request. Every cascade output is checked
 * against target-only decoding, the oracle of greedy exactness (never against another cascade).
 * Then aggregate throughput at several concurrencies, and per drafting mode a latency breakdown and
 * the actor calls' network time from OpenTelemetry spans of a cluster restarted with tracing on
 * (spans cost time, so nothing above is measured with them); `timeline` draws one such request.
 */
export async function benchCluster(o: ClusterBenchOptions): Promise<void> {
  const family = loadFamily(o.models);
  const models = family.dir;
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  const spanFile = join(out, 'cluster-spans.jsonl');
  rmSync(spanFile, { force: true });
  delete process.env.CASCADE_TRACE_FILE;
  const plan = planCascade({ mode: 'csd', drafters: o.drafters }, family.drafters, family.eagle ? [family.eagle] : []);
  const cascade = { mode: 'csd', ...(o.drafters ? { drafters: o.drafters } : {}) };
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const workloads = o.workloads.map((w) => ({ name: w, prompts: loadWorkload(w, o.promptsDir).slice(0, o.prompts).map((p) => p.prompt) }));
  const layouts: readonly [Layout, ...Layout[]] = o.layouts?.length ? (o.layouts as [Layout, ...Layout[]]) : ['separate'];
  const paths: Path[] = ['ar', ...o.draftings.map((d) => `embedded/${d}` as const), ...layouts.flatMap((l) => o.draftings.map((d) => `${pathOf(l)}/${d}` as const))];

  // embedded: the engine in this process
  const sessions = new FamilySessions(family, {});
  const target = await sessions.get(family.target);
  const tokenizer = TextTokenizer.load(target.spec.tokenizerPath);
  const drafters: DrafterSpec[] = await Promise.all(
    plan.drafters.map(async (d): Promise<DrafterSpec> => {
      const kind = drafterKind(family, d);
      return kind === 'mag' ? { kind, tables: loadMagTables(family, target.spec.vocabSize) } : { kind, session: await sessions.get(d) };
    }),
  );
  for (const drafting of o.draftings) checkCascade({ drafters, kMatrix: plan.kMatrix, lenience: 1, drafting });
  const embedded = async (prompt: string, drafting?: Drafting): Promise<Completion> => {
    const t0 = performance.now();
    let ttft = 0;
    const onTokens = () => void (ttft ||= performance.now() - t0);
    const req = { promptIds: tokenizer.encode(prompt), maxTokens: o.maxTokens, sampling: GREEDY, seed: 0 };
    const r = drafting ? await generateCascade(target, { drafters, kMatrix: plan.kMatrix, lenience: 1, drafting }, req, onTokens) : await generateAutoregressive(target, req, onTokens);
    return completion(tokenizer.decode(r.tokenIds), r.tokenIds.length, 'rounds' in r.stats ? (r.stats as { rounds: number }).rounds : r.tokenIds.length, t0, ttft);
  };
  const targetOnly = new Map<string, string>();
  for (const w of workloads) for (const p of w.prompts) targetOnly.set(p, (await embedded(p)).text);

  const startCluster = (traced: boolean, layout: Layout) =>
    startBenchCluster({ models, maxTokens: o.maxTokens, concurrency: Math.max(1, ...o.concurrency), layout, env: traced ? { CASCADE_TRACE_FILE: spanFile } : {}, onReady: () => traced && (process.env.CASCADE_TRACE_FILE = spanFile) });

  let running: Awaited<ReturnType<typeof startCluster>> | undefined;
  const others: Awaited<ReturnType<typeof startCluster>>[] = [];
  try {
    log(`starting nats-server, redis-server, actors and a coordinator (tracing off; layout ${layouts.join(', ')}) …`);
    running = await startCluster(false, layouts[0]);
    const clusters = new Map<ClusterPath, (prompt: string, cascade?: Record<string, unknown>) => Promise<Completion>>([[pathOf(layouts[0]), running.complete]]);
    for (const l of layouts.slice(1)) {
      const c = await startCluster(false, l);
      others.push(c);
      clusters.set(pathOf(l), c.complete);
    }
    const cluster = running.complete;
    const run = (path: Path, prompt: string): Promise<Completion> => {
      const [where, drafting] = path.split('/') as ['ar' | 'embedded' | ClusterPath, Drafting | undefined];
      return where === 'ar' || where === 'embedded' ? embedded(prompt, drafting) : clusters.get(where)!(prompt, { ...cascade, drafting });
    };
    // warm every path (first ONNX runs, connections, the actors' sessions)
    for (const path of paths) await run(path, workloads[0]!.prompts[0]!);

    const singleStream: SingleStream[] = [];
    for (const w of workloads) {
      const rate = Object.fromEntries(paths.map((p) => [p, [] as number[]])) as Record<Path, number[]>;
      const tpot = Object.fromEntries(paths.map((p) => [p, [] as number[]])) as Record<Path, number[]>;
      const perPass = Object.fromEntries(paths.map((p) => [p, [] as number[]])) as Record<Path, number[]>;
      const exact = Object.fromEntries(paths.map((p) => [p, true])) as Record<Path, boolean>;
      for (let r = 0; r < o.repeats; r++) {
        const order = paths.map((_, i) => paths[(i + r) % paths.length]!);
        for (const path of order) {
          const results: Completion[] = [];
          for (const p of w.prompts) results.push(await run(path, p));
          rate[path].push(results.reduce((a, c) => a + c.tokens, 0) / results.reduce((a, c) => a + c.seconds, 0));
          tpot[path].push(...results.filter((c) => c.tokens > 1).map((c) => c.tpotMs));
          perPass[path].push(results.reduce((a, c) => a + c.tokens, 0) / Math.max(1, results.reduce((a, c) => a + c.passes, 0)));
          if (results.some((c, i) => c.text !== targetOnly.get(w.prompts[i]!))) exact[path] = false;
        }
        log(`${w.name} repeat ${r + 1}/${o.repeats}: ${paths.map((p) => `${p} ${rate[p].at(-1)!.toFixed(1)}`).join(', ')} tok/s`);
      }
      const tokensPerSecond = Object.fromEntries(paths.map((p) => [p, median(rate[p])])) as Record<Path, number>;
      const tpotMs = Object.fromEntries(paths.map((p) => [p, { p50: quantile(tpot[p], 0.5), p99: quantile(tpot[p], 0.99) }]));
      const tokensPerPass = Object.fromEntries(paths.map((p) => [p, median(perPass[p])]));
      singleStream.push({ workload: w.name, prompts: w.prompts.length, tokensPerSecond, runs: rate, tokensPerPass, tpotMs, equalsTargetOnly: exact });
    }

    // aggregate throughput under concurrency, per drafting mode
    const loads: { drafting: Drafting; concurrency: number; tokensPerSecond: number; requests: number; p50LatencyS: number }[] = [];
    const prompts = workloads[0]!.prompts;
    for (const drafting of o.draftings) {
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
                const res = await cluster(prompts[next++ % prompts.length]!, { ...cascade, drafting });
                tokens += res.tokens;
                latencies.push(res.seconds);
              }
            }),
          );
          perRepeat.push(tokens / ((performance.now() - t0) / 1000));
        }
        loads.push({ drafting, concurrency: c, tokensPerSecond: median(perRepeat), requests: total, p50LatencyS: median(latencies) });
        log(`${drafting}, concurrency ${c}: ${median(perRepeat).toFixed(1)} tok/s aggregate`);
      }
    }

    await running.stop();
    running = undefined;
    await Promise.all(others.splice(0).map((c) => c.stop()));

    // per drafting mode: the same single-stream requests through a traced cluster
    log('restarting the cluster with tracing on for the latency breakdown …');
    running = await startCluster(true, layouts[0]);
    const traced: Partial<Record<Drafting, { from: number; to: number }>> = {};
    for (const drafting of o.draftings) {
      await running.complete(prompts[0]!, { ...cascade, drafting });
      const from = Date.now();
      for (const p of prompts) await running.complete(p, { ...cascade, drafting });
      traced[drafting] = { from, to: Date.now() };
    }
    await new Promise((r) => setTimeout(r, 300)); // let the other processes' last spans land
    const spans = readSpans(spanFile);
    const breakdown = Object.fromEntries(o.draftings.map((d) => [d, latencyBreakdown(spans, traced[d]!.from, traced[d]!.to, family.target)]));
    // speedups over embedded serial rounds when they ran, else over target-only decoding
    const serial = paths.includes('embedded/serial');
    const base = (s: SingleStream) => (serial ? s.tokensPerSecond['embedded/serial']! : s.tokensPerSecond.ar!);
    const record = {
      machine: 'this machine (see bench/results/README.md)',
      method: `csd ${JSON.stringify(plan.kMatrix)} over ${plan.drafters.join(', ')} (serial rounds; async drafting: the first neural drafter runs ahead, MaG extends, K implicit), greedy, ${o.maxTokens} tokens`,
      layouts: layouts.map((l) => `${pathOf(l)}: ${l === 'separate' ? 'the verify actor in its own process' : 'the verify actor inside the coordinator (cascade coordinator --verifier)'}`),
      aggregateAndBreakdownLayout: layouts[0],
      repeats: o.repeats,
      singleStream,
      concurrency: loads,
      latencyBreakdownMs: breakdown,
    };
    writeJson(out, 'cluster', record);
    // the pictures after the record: a picture that cannot be written loses no measurement
    const timelines: string[] = [];
    if (o.timeline) {
      for (const [i, d] of o.draftings.entries()) {
        const file = i === 0 ? resolve(o.timeline) : resolve(o.timeline).replace(/(\.svg)?$/i, `-${d}.svg`);
        const pick = longestTrace(spans, traced[d]!.from, traced[d]!.to);
        if (!pick) continue;
        mkdirSync(dirname(file), { recursive: true });
        writeFileSync(file, timelineSvg(requestTimeline(spans, pick), `one greedy csd request, ${d} drafting, through the cluster (${o.maxTokens} tokens)`));
        timelines.push(file);
      }
    }
    const tables = singleStream.map((s) => {
      const t = formatTable(
        ['path', 'tokens/s', 'x ar', ...(serial ? ['x embedded serial'] : []), 'tokens/pass', 'TPOT p50 ms', 'TPOT p99 ms', 'greedy = target-only'],
        paths.map((p) => [p, s.tokensPerSecond[p]!, s.tokensPerSecond[p]! / s.tokensPerSecond.ar!, ...(serial ? [s.tokensPerSecond[p]! / base(s)] : []), s.tokensPerPass[p]!, s.tpotMs[p]!.p50, s.tpotMs[p]!.p99, p === 'ar' ? '-' : s.equalsTargetOnly[p] ? 'yes' : 'NO']),
      );
      return `## ${s.workload} (${s.prompts} held-out prompts, single stream)\n\n\`\`\`\n${t}\n\`\`\``;
    });
    const loadTable = loads.length
      ? formatTable(['drafting', 'concurrency', 'tokens/s (aggregate)', 'p50 latency s'], loads.map((l) => [l.drafting, l.concurrency, l.tokensPerSecond, l.p50LatencyS]))
      : '';
    const parts = [...new Set(Object.values(breakdown).flatMap((b) => Object.keys(b.medians)))];
    const table2 = formatTable(['part of a request (median ms)', ...o.draftings], parts.map((k) => [k, ...o.draftings.map((d) => breakdown[d]!.medians[k] ?? '-')]));
    const md = `# Cluster benchmark\n\n${record.method}; medians of ${o.repeats} repeat${o.repeats === 1 ? '' : 's'}.\n\n${tables.join('\n\n')}\n\n${loadTable ? `## Aggregate throughput (${workloads[0]!.name} prompts)\n\n\`\`\`\n${loadTable}\n\`\`\`\n\n` : ''}## Latency breakdown\n\nSingle-stream cluster requests (${workloads[0]!.name} prompts) through the same cluster restarted with tracing on, from OpenTelemetry spans:\n\n\`\`\`\n${table2}\n\`\`\`\n\n${BREAKDOWN_DEFINITIONS}\n${timelines.map((f) => `\n![${basename(f)}](${relative(out, f)})\n`).join('')}`;
    writeFileSync(join(out, 'cluster.md'), md);
    process.stdout.write(`${tables.join('\n\n')}\n\n${loadTable ? `${loadTable}\n\n` : ''}${table2}\n\nwrote ${join(out, 'cluster.json')} and cluster.md${timelines.length ? `, ${timelines.join(', ')}` : ''}\n`);
  } finally {
    await running?.stop();
    await Promise.all(others.map((c) => c.stop()));
    await sessions.close();
  }
}

/** A completion's figures; TPOT = (e2e − TTFT) / (tokens − 1). */
function completion(text: string, tokens: number, passes: number, t0: number, ttftMs: number): Completion {
  const e2e = performance.now() - t0;
  return { text, tokens, passes, seconds: e2e / 1000, tpotMs: tokens > 1 ? (e2e - ttftMs) / (tokens - 1) : NaN };
}

/** The trace of the longest gateway request started in [from, to] (epoch ms). */
function longestTrace(spans: readonly SpanRecord[], from: number, to: number): string | undefined {
  const roots = spans.filter((s) => s.name === 'gateway.request' && s.startMs >= from && s.startMs <= to);
  return roots.sort((a, b) => b.endMs - b.startMs - (a.endMs - a.startMs))[0]?.traceId;
}

const BREAKDOWN_DEFINITIONS = `Definitions: *queue* = gateway received → coordinator started (HTTP, BullMQ enqueue and pick-up);
*draft:<model>* = time the coordinator spent in calls to that drafter's actors; *verify* = the same for
the target; *actor compute* = time inside the actors' handlers (model forward and acceptance);
*network+serialisation* = actor calls minus actor compute (frames, NATS, scheduling); *coordinator other* =
the coordinator's request span minus its actor calls (MaG, Redis writes, stream publishing; 0 when
calls overlap, as under async drafting, where the draft and verify parts also add up to more than
e2e); *network per actor call* = one call's span minus the actor's handler span (the NATS round trip
with framing and scheduling), quantiles over every call; *e2e* = the gateway's request span.`;

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
  const roundTrips: number[] = [];
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
        const call = byId.get(s.parentSpanId)!;
        roundTrips.push(Math.max(0, call.endMs - call.startMs - (s.endMs - s.startMs)));
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
  medians['network per actor call p50'] = quantile(roundTrips, 0.5);
  medians['network per actor call p99'] = quantile(roundTrips, 0.99);
  return { requests, medians };
}
