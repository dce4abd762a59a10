import { generateCascade, type DrafterSpec } from '../engine/cascade.ts';
import { defaultKMatrix, type KSchedule } from '../engine/presets.ts';
import type { MagTables } from '../kernels/maxgram.ts';
import { GREEDY } from '../kernels/sampling.ts';
import { BatchingSession, DEFAULT_BATCHING } from '../models/batching-session.ts';
import { loadFamily } from '../models/family.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import type { ModelSession } from '../models/session.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { candidates } from './cascade.ts';
import { formatTable, median, writeJson } from './report.ts';
import { simulate, type PassCost, type SimulationParams } from './simulate.ts';
import { loadWorkload, splitWorkload, type Workload } from './workloads.ts';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startNats } from '../cluster/local-servers.ts';
import { NatsTransport } from '../cluster/nats-transport.ts';
import { startBenchCluster } from './cluster.ts';

export interface ScaleBenchOptions {
  readonly models: string;
  readonly out: string;
  readonly workloads: readonly Workload[];
  /** Prompts per workload measured in the auto comparison (the first N of each set). */
  readonly prompts: number;
  /** Prompts the fixed-K sweep tunes on (the last N of each set, never measured; see splitWorkload). */
  readonly sweepPrompts: number;
  readonly maxTokens: number;
  readonly repeats: number;
  readonly concurrency: readonly number[];
  readonly threads: number;
  /** Also measure a cluster on this machine as actors are added (needs nats-server and redis-server). */
  readonly cluster: boolean;
}

const log = (msg: string) => process.stderr.write(msg + '\n');

/** A cascade over sessions (batched or not): drafter names (family members or mag) and K. */
interface Shape {
  readonly name: string;
  readonly drafters: readonly string[];
  readonly kMatrix: KSchedule;
}

interface Models {
  readonly target: ModelSession;
  readonly drafters: ReadonlyMap<string, ModelSession>;
  readonly magTables: MagTables;
}

interface Totals {
  tokens: number;
  rounds: number;
  drafted: number;
  draftMs: number;
  seconds: number;
  chosen: Record<string, number>;
  /** Generated token ids by prompt index. */
  outputs: number[][];
}

function specs(m: Models, drafters: readonly string[]): DrafterSpec[] {
  return drafters.map((d) => (d === 'mag' ? { kind: 'mag', tables: m.magTables } : { kind: 'model', session: m.drafters.get(d)! }));
}

/** Runs every prompt with `concurrency` requests in flight; wall time of the whole set. */
async function runSet(m: Models, shape: Shape, prompts: readonly number[][], maxTokens: number, concurrency: number): Promise<Totals> {
  const totals: Totals = { tokens: 0, rounds: 0, drafted: 0, draftMs: 0, seconds: 0, chosen: {}, outputs: [] };
  let next = 0;
  const t0 = performance.now();
  const client = async () => {
    while (next < prompts.length) {
      const index = next++;
      const promptIds = prompts[index]!;
      const r = await generateCascade(m.target, { drafters: specs(m, shape.drafters), kMatrix: shape.kMatrix, lenience: 1 }, { promptIds, maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });
      totals.tokens += r.tokenIds.length;
      totals.outputs[index] = r.tokenIds;
      totals.rounds += r.stats.rounds;
      totals.drafted += r.stats.draftedTokens;
      for (const [name, s] of Object.entries(r.stats.models)) if (name !== m.target.spec.name) totals.draftMs += s.forwardMs;
      for (const [k, n] of Object.entries(r.stats.schedule ?? {})) totals.chosen[k] = (totals.chosen[k] ?? 0) + n;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, client));
  totals.seconds = (performance.now() - t0) / 1000;
  return totals;
}

const rate = (t: Totals) => t.tokens / t.seconds;
const sameOutputs = (a: readonly number[][], b: readonly number[][]) => a.length === b.length && a.every((x, i) => JSON.stringify(x) === JSON.stringify(b[i]));
const topChoice = (chosen: Record<string, number>) => Object.entries(chosen).sort((a, b) => b[1] - a[1])[0]?.[0] ?? '-';

/** Every fixed K the sweep tries: each cascade shape of `cascade bench cascade` with its K candidates. */
function fixedShapes(familyDrafters: readonly string[]): Shape[] {
  const csd = [...familyDrafters, 'mag'];
  const out: Shape[] = [];
  for (const d of familyDrafters) for (const K of candidates('sd', [d])) out.push({ name: `sd:${d}`, drafters: [d], kMatrix: K });
  for (const K of candidates('mag', ['mag'])) out.push({ name: 'mag', drafters: ['mag'], kMatrix: K });
  for (const kind of ['csd', 'csd-horizontal', 'csd-vertical'] as const) for (const K of candidates(kind, csd)) out.push({ name: kind, drafters: csd, kMatrix: K });
  return out;
}

interface AutoResult {
  readonly workload: string;
  readonly best: { name: string; kMatrix: KSchedule; tokensPerSecond: number };
  readonly auto: { tokensPerSecond: number; mostUsedK: string };
  readonly ar: number;
  readonly ratio: number;
  /** Greedy outputs of the best fixed K and of auto equal ar's on every prompt and repeat. */
  readonly identicalToAr: boolean;
  readonly sweep: { name: string; kMatrix: KSchedule; tokensPerSecond: number }[];
}

/** Part 1: `auto` against the best fixed K of a sweep over every cascade shape, per workload (greedy, one request at a time). */
async function autoVersusSweep(m: Models, o: ScaleBenchOptions, tok: TextTokenizer, familyDrafters: readonly string[]): Promise<AutoResult[]> {
  const results: AutoResult[] = [];
  const csd = [...familyDrafters, 'mag'];
  for (const w of o.workloads) {
    const split = splitWorkload(w, o.prompts, o.sweepPrompts);
    const prompts = split.measure.map((p) => tok.encode(p.prompt));
    const tuning = split.tune.map((p) => tok.encode(p.prompt));
    log(`[auto vs sweep: ${w}] sweeping ${fixedShapes(familyDrafters).length} fixed K on ${tuning.length} prompts, measuring on ${prompts.length} others`);
    const sweep = [];
    for (const s of fixedShapes(familyDrafters)) sweep.push({ name: s.name, kMatrix: s.kMatrix, tokensPerSecond: rate(await runSet(m, s, tuning, o.maxTokens, 1)) });
    const top = sweep.reduce((a, b) => (b.tokensPerSecond > a.tokensPerSecond ? b : a));
    const best: Shape = { name: top.name, drafters: top.name === 'mag' ? ['mag'] : top.name.startsWith('sd:') ? [top.name.slice(3)] : csd, kMatrix: top.kMatrix };
    const auto: Shape = { name: 'auto', drafters: csd, kMatrix: 'auto' };
    const ar: Shape = { name: 'ar', drafters: [], kMatrix: [] };
    const runs: Record<string, number[]> = { best: [], auto: [], ar: [] };
    const chosen: Record<string, number> = {};
    const outputs: number[][][] = [];
    let reference: number[][] | undefined;
    for (let r = 0; r < o.repeats; r++) {
      const order = r % 2 ? [ar, auto, best] : [ar, best, auto];
      for (const s of order) {
        const t = await runSet(m, s, prompts, o.maxTokens, 1);
        if (s === ar) reference ??= t.outputs;
        else outputs.push(t.outputs);
        runs[s === best ? 'best' : s.name]!.push(rate(t));
        if (s === auto) for (const [k, n] of Object.entries(t.chosen)) chosen[k] = (chosen[k] ?? 0) + n;
      }
    }
    const res: AutoResult = {
      workload: w,
      best: { name: best.name, kMatrix: best.kMatrix, tokensPerSecond: median(runs.best!) },
      auto: { tokensPerSecond: median(runs.auto!), mostUsedK: topChoice(chosen) },
      ar: median(runs.ar!),
      ratio: median(runs.auto!) / median(runs.best!),
      identicalToAr: outputs.every((x) => sameOutputs(x, reference!)),
      sweep,
    };
    log(`  best fixed ${best.name} ${JSON.stringify(best.kMatrix)} ${res.best.tokensPerSecond.toFixed(1)} tokens/s; auto ${res.auto.tokensPerSecond.toFixed(1)} (${(100 * res.ratio).toFixed(1)}%)`);
    results.push(res);
  }
  return results;
}

interface LoadRow {
  readonly concurrency: number;
  readonly batching: boolean;
  readonly speculation: 'off' | 'on' | 'auto';
  readonly tokensPerSecond: number;
  readonly tokensPerRound: number;
  readonly draftedPerRound: number;
  readonly draftMsPerRound: number;
  readonly meanBatch: number;
  readonly mostUsedK: string;
  /** Every request's greedy output equals target-only decoding of it alone. */
  readonly identicalToAr: boolean;
}

/** Part 2: aggregate tokens/s with 1..N sessions in flight, batching on/off, speculation off/on/auto. */
async function underLoad(inner: Models, o: ScaleBenchOptions, tok: TextTokenizer, familyDrafters: readonly string[]): Promise<{ rows: LoadRow[] }> {
  const prompts = [...loadWorkload('code'), ...loadWorkload('english')].map((p) => tok.encode(p.prompt));
  const csd = [...familyDrafters, 'mag'];
  const shapes: [LoadRow['speculation'], Shape][] = [
    ['off', { name: 'ar', drafters: [], kMatrix: [] }],
    ['on', { name: 'csd', drafters: csd, kMatrix: defaultKMatrix(csd) }],
    ['auto', { name: 'auto', drafters: csd, kMatrix: 'auto' }],
  ];
  const wrap = (maxBatch: number): Models & { batched: BatchingSession } => {
    const batched = new BatchingSession(inner.target, { maxBatch });
    return { target: batched, batched, drafters: new Map([...inner.drafters].map(([k, s]) => [k, new BatchingSession(s, { maxBatch })])), magTables: inner.magTables };
  };
  const batchedModels = wrap(16);
  const rows: LoadRow[] = [];
  const alone: number[][] = [];
  for (const c of o.concurrency) {
    const set = Array.from({ length: Math.max(8, 2 * c) }, (_, i) => prompts[i % prompts.length]!);
    // target-only outputs of each request alone, the reference every row is checked against
    for (let i = alone.length; i < set.length; i++) alone.push((await runSet(inner, { name: 'ar', drafters: [], kMatrix: [] }, [set[i]!], o.maxTokens, 1)).outputs[0]!);
    for (const batching of [false, true]) {
      for (const [speculation, shape] of shapes) {
        const xs: (Totals & { meanBatch: number })[] = [];
        for (let r = 0; r < o.repeats; r++) {
          const models = batching ? batchedModels : wrap(1);
          const before = { ...models.batched.counters };
          const t = await runSet(models, shape, set, o.maxTokens, c);
          const passes = models.batched.counters.passes - before.passes;
          xs.push({ ...t, meanBatch: passes ? (models.batched.counters.forwards - before.forwards) / passes : 1 });
        }
        const mid = [...xs].sort((a, b) => rate(a) - rate(b))[xs.length >> 1]!;
        const identicalToAr = xs.every((x) => sameOutputs(x.outputs, alone.slice(0, set.length)));
        const row: LoadRow = {
          concurrency: c,
          batching,
          speculation,
          tokensPerSecond: median(xs.map(rate)),
          tokensPerRound: mid.tokens / mid.rounds,
          draftedPerRound: mid.drafted / mid.rounds,
          draftMsPerRound: mid.draftMs / mid.rounds,
          meanBatch: mid.meanBatch,
          identicalToAr,
          mostUsedK: speculation === 'auto' ? topChoice(mid.chosen) : '',
        };
        log(`  ${c} sessions, batching ${batching ? 'on' : 'off'}, speculation ${speculation}: ${row.tokensPerSecond.toFixed(1)} tokens/s (mean verifier batch ${row.meanBatch.toFixed(1)})`);
        rows.push(row);
      }
    }
  }
  return { rows };
}

/**
 * Fits the target's pass cost, fixed + per sequence + per token, from passes over 1..16 sequences
 * of about `past` cached tokens scoring 1 or 4 new tokens each (medians of 3; every pass is rolled
 * back). A single sequence runs the unbatched path, so the fit compares batching with not batching.
 */
async function calibrateVerifier(target: ModelSession, past: number): Promise<PassCost & { points: { sequences: number; tokens: number; ms: number }[] }> {
  const vocab = target.spec.vocabSize;
  const ids = Array.from({ length: 16 }, (_, i) => Array.from({ length: past + 3 * i }, (_, j) => (j * 31 + i * 7 + 1) % vocab));
  for (const [i, x] of ids.entries()) await target.forward({ seqId: `calibrate-${i}`, inputIds: x }, 'last');
  const points: { sequences: number; tokens: number; ms: number }[] = [];
  try {
    for (const b of [1, 2, 4, 8, 16]) {
      for (const s of [1, 4]) {
        const xs: number[] = [];
        for (let r = 0; r < 3; r++) {
          const items = ids.slice(0, b).map((x, i) => ({ seqId: `calibrate-${i}`, inputIds: x.slice(0, s), keep: x.length }));
          const t0 = performance.now();
          await target.forwardBatch(items, 'all');
          xs.push(performance.now() - t0);
        }
        points.push({ sequences: b, tokens: b * s, ms: median(xs) });
      }
    }
  } finally {
    for (let i = 0; i < ids.length; i++) await target.release(`calibrate-${i}`);
  }
  return { ...leastSquares3(points), points };
}

/** Least squares for ms = fixed + sequenceMs × sequences + tokenMs × tokens (coefficients clamped at 0). */
function leastSquares3(points: readonly { sequences: number; tokens: number; ms: number }[]): PassCost {
  const rows = points.map((p) => [1, p.sequences, p.tokens]);
  const A = [0, 1, 2].map((i) => [0, 1, 2].map((j) => rows.reduce((a, r) => a + r[i]! * r[j]!, 0)));
  const y = [0, 1, 2].map((i) => rows.reduce((a, r, k) => a + r[i]! * points[k]!.ms, 0));
  // Gaussian elimination on the 3×3 normal equations
  for (let c = 0; c < 3; c++) {
    for (let r = c + 1; r < 3; r++) {
      const f = A[r]![c]! / A[c]![c]!;
      for (let k = c; k < 3; k++) A[r]![k]! -= f * A[c]![k]!;
      y[r]! -= f * y[c]!;
    }
  }
  const x = [0, 0, 0];
  for (let r = 2; r >= 0; r--) x[r] = (y[r]! - [0, 1, 2].reduce((a, k) => (k > r ? a + A[r]![k]! * x[k]! : a), 0)) / A[r]![r]!;
  const sequenceMs = Math.max(0, x[1]!);
  const tokenMs = Math.max(0, x[2]!);
  // A noisy fit (a loaded machine) may clamp every coefficient to 0: a pass then costs at least the
  // fastest single-sequence pass measured, so a simulation built on the fit lets time pass.
  const fastest = Math.min(...points.filter((p) => p.sequences === 1).map((p) => p.ms));
  return { fixedMs: Math.max(0, x[0]!, fastest - sequenceMs - tokenMs), sequenceMs, tokenMs };
}

const passMs = (c: PassCost, sequences: number, tokens: number) => c.fixedMs + c.sequenceMs * sequences + c.tokenMs * tokens;

/**
 * The simulation of a measured single-session row: the verifier's fitted pass cost, the row's
 * drafting time per round (drafters are small: taken as not amortised by batching), and what is
 * left of the row's round time (prefills, acceptance, sampling, MaG) charged to the verifier node
 * per sequence: on this machine that work competes for the same two cores. One verifier node, one
 * draft node, no network: this machine embedded.
 */
function calibrated(row: LoadRow, fitted: PassCost, sessions: number, batching: boolean): SimulationParams {
  const roundMs = (1000 * row.tokensPerRound) / row.tokensPerSecond;
  const rest = Math.max(0, roundMs - passMs(fitted, 1, row.draftedPerRound + 1) - row.draftMsPerRound);
  return {
    sessions,
    verifiers: 1,
    drafters: 1,
    latencyMs: 0,
    verify: { ...fitted, sequenceMs: fitted.sequenceMs + rest },
    draft: { fixedMs: 0, sequenceMs: row.draftMsPerRound, tokenMs: 0 },
    roundOverheadMs: 0,
    draftedPerRound: row.draftedPerRound,
    tokensPerRound: row.tokensPerRound,
    maxBatch: batching ? DEFAULT_BATCHING.maxBatch : 1,
    windowMs: batching ? DEFAULT_BATCHING.windowMs : 0,
    horizonMs: 20_000,
  };
}

/** Median request-reply round trip over a local nats-server, ms (64-byte frames). */
async function natsRoundTripMs(): Promise<number> {
  const nats = await startNats();
  const t = await NatsTransport.connect({ servers: nats.url, name: 'bench-rtt' });
  try {
    const sub = t.serve('bench.echo', async (d) => d);
    const payload = new Uint8Array(64);
    const xs: number[] = [];
    for (let i = 0; i < 300; i++) {
      const t0 = performance.now();
      await t.request('bench.echo', payload, { timeoutMs: 2000 });
      if (i >= 50) xs.push(performance.now() - t0);
    }
    await sub.close();
    return median(xs);
  } finally {
    await t.close();
    await nats.stop();
  }
}

interface ClusterRow {
  readonly verifiers: number;
  readonly draftInstances: number;
  readonly tokensPerSecond: number;
  readonly simulated: number;
}

/**
 * Part 5: a cluster on this machine (one process per actor) at `concurrency` requests in flight, as
 * verifier and draft actors are added, beside the simulation of the same layout (NATS round trip
 * measured here, one node per actor process).
 */
async function clusterScaling(o: ScaleBenchOptions, calibration: SimulationParams): Promise<{ rttMs: number; rows: ClusterRow[]; concurrency: number }> {
  const rttMs = await natsRoundTripMs();
  const concurrency = Math.max(...o.concurrency.filter((c) => c <= 8), 1);
  const prompts = loadWorkload('code').map((p) => p.prompt).slice(0, 2 * concurrency);
  if (prompts.length < concurrency) throw new Error(`the code prompt set has ${prompts.length} prompts, fewer than ${concurrency} requests in flight`);
  const rows: ClusterRow[] = [];
  for (const [verifiers, draftInstances] of [[1, 1], [1, 2], [2, 1], [2, 2]] as const) {
    log(`  cluster: ${verifiers} verifier and ${draftInstances} draft actor(s) per drafter, ${concurrency} requests in flight`);
    const c = await startBenchCluster({ models: o.models, maxTokens: o.maxTokens, concurrency, verifiers, draftInstances });
    try {
      await c.complete(prompts[0]!);
      const xs: number[] = [];
      for (let r = 0; r < o.repeats; r++) {
        let next = 0;
        let tokens = 0;
        const t0 = performance.now();
        await Promise.all(Array.from({ length: concurrency }, async () => {
          while (next < prompts.length) {
            const done = await c.complete(prompts[next++]!);
            tokens += done.tokens;
          }
        }));
        xs.push(tokens / ((performance.now() - t0) / 1000));
      }
      const sim = simulate({ ...calibration, sessions: concurrency, verifiers, drafters: draftInstances, latencyMs: rttMs / 2 });
      rows.push({ verifiers, draftInstances, tokensPerSecond: median(xs), simulated: sim.tokensPerSecond });
    } finally {
      await c.stop();
    }
  }
  return { rttMs, rows, concurrency };
}

/** `cascade bench scale`: auto vs a K sweep, throughput under load with and without batching, and a calibrated simulation of larger clusters. */
export async function benchScale(o: ScaleBenchOptions): Promise<void> {
  const family = loadFamily(o.models);
  const sessions = new FamilySessions(family, { intraOpThreads: o.threads });
  try {
    const models: Models = await sessions.cascadeModels();
    const target = models.target;
    const tok = TextTokenizer.load(target.spec.tokenizerPath);

    const auto = await autoVersusSweep(models, o, tok, family.drafters);
    const autoTable = formatTable(
      ['workload', 'ar tok/s', 'best fixed', 'K', 'tok/s', 'auto tok/s', 'auto / best', 'auto most used K', 'same as ar'],
      auto.map((a) => [a.workload, a.ar, a.best.name, JSON.stringify(a.best.kMatrix), a.best.tokensPerSecond, a.auto.tokensPerSecond, a.ratio, a.auto.mostUsedK, a.identicalToAr ? 'yes' : 'NO']),
    );

    log(`[under load] ${o.concurrency.join(', ')} sessions in flight`);
    const load = await underLoad(models, o, tok, family.drafters);
    const one = (b: boolean, s: string) => load.rows.find((r) => r.concurrency === o.concurrency[0] && r.batching === b && r.speculation === s)!;
    const loadTable = formatTable(
      ['sessions', 'batching', 'speculation', 'tokens/s', 'x 1 session', 'tokens/round', 'mean verifier batch', 'auto most used K', 'same as ar alone'],
      load.rows.map((r) => [r.concurrency, r.batching ? 'on' : 'off', r.speculation, r.tokensPerSecond, r.tokensPerSecond / one(r.batching, r.speculation).tokensPerSecond, r.tokensPerRound, r.meanBatch, r.mostUsedK, r.identicalToAr ? 'yes' : 'NO']),
    );

    log('[calibration] the target\'s pass cost over 1..16 sequences');
    const verify = await calibrateVerifier(target, 128);
    const calibrationTable = formatTable(['sequences', 'tokens', 'ms (median)', 'fit'], verify.points.map((p) => [p.sequences, p.tokens, p.ms, passMs(verify, p.sequences, p.tokens)]));

    // validation: every measured row, simulated from its single-session row and the fitted pass cost
    const validation = load.rows
      .filter((r) => r.speculation !== 'on')
      .map((r) => {
        const sim = simulate(calibrated(one(r.batching, r.speculation), verify, r.concurrency, r.batching));
        return { concurrency: r.concurrency, batching: r.batching, speculation: r.speculation, measured: r.tokensPerSecond, simulated: sim.tokensPerSecond, error: sim.tokensPerSecond / r.tokensPerSecond - 1 };
      });
    const validationTable = formatTable(
      ['sessions', 'batching', 'speculation', 'measured tok/s', 'simulated tok/s', 'error'],
      validation.map((v) => [v.concurrency, v.batching ? 'on' : 'off', v.speculation, v.measured, v.simulated, `${(100 * v.error).toFixed(1)}%`]),
    );

    // projection: 16 sessions per verifier node, draft:verifier ratios and network latency
    const projection: { verifiers: number; drafters: number; latencyMs: number; speculation: string; tokensPerSecond: number; verifierUtilisation: number; drafterUtilisation: number; notSimulated?: string }[] = [];
    for (const verifiers of [1, 4, 16, 64]) {
      for (const latencyMs of [0.2, 2]) {
        const layouts: ['off' | 'auto', number][] = [['off', 1], ...[0.25, 0.5, 1].map((ratio): ['auto', number] => ['auto', Math.max(1, Math.round(verifiers * ratio))])];
        const seen = new Set<string>();
        for (const [speculation, drafters] of layouts) {
          if (seen.has(`${speculation}${drafters}`)) continue;
          seen.add(`${speculation}${drafters}`);
          const base = calibrated(one(true, speculation), verify, 16 * verifiers, true);
          try {
            const sim = simulateWithin({ ...base, verifiers, drafters, latencyMs, horizonMs: 10_000 });
            projection.push({ verifiers, drafters, latencyMs, speculation, tokensPerSecond: sim.tokensPerSecond, verifierUtilisation: sim.verifierUtilisation, drafterUtilisation: sim.drafterUtilisation });
          } catch (err) {
            // a calibration on a loaded machine can leave a layout whose events outrun the simulator
            // even over 10 ms: that row is reported as not simulated, with why, instead of failing the run
            if (!(err instanceof RangeError)) throw err;
            log(`[projection] ${verifiers} verifier nodes, ${drafters} draft nodes, ${latencyMs} ms, speculation ${speculation}: not simulated (${err.message}); parameters ${JSON.stringify({ verify: base.verify, draft: base.draft, draftedPerRound: base.draftedPerRound, tokensPerRound: base.tokensPerRound })}`);
            projection.push({ verifiers, drafters, latencyMs, speculation, tokensPerSecond: Number.NaN, verifierUtilisation: Number.NaN, drafterUtilisation: Number.NaN, notSimulated: err.message });
          }
        }
      }
    }
    const projectionTable = formatTable(
      ['verifier nodes', 'draft nodes', 'latency ms', 'speculation', 'tokens/s', 'verifier busy', 'draft nodes busy'],
      projection.map((p) =>
        p.notSimulated
          ? [p.verifiers, p.speculation === 'off' ? '-' : p.drafters, p.latencyMs, p.speculation, 'not simulated', '-', '-']
          : [p.verifiers, p.speculation === 'off' ? '-' : p.drafters, p.latencyMs, p.speculation, p.tokensPerSecond, `${(100 * p.verifierUtilisation).toFixed(0)}%`, p.speculation === 'off' ? '-' : `${(100 * p.drafterUtilisation).toFixed(0)}%`],
      ),
    );

    let clusterPart: Awaited<ReturnType<typeof clusterScaling>> | undefined;
    let clusterTable = '(skipped: --no-cluster)';
    if (o.cluster) {
      log('[cluster] actors added on this machine');
      clusterPart = await clusterScaling(o, calibrated(one(true, 'auto'), verify, 1, true));
      clusterTable = formatTable(
        ['verifier actors', 'draft actors per drafter', 'tokens/s', 'simulated tok/s', 'error'],
        clusterPart.rows.map((r) => [r.verifiers, r.draftInstances, r.tokensPerSecond, r.simulated, `${(100 * (r.simulated / r.tokensPerSecond - 1)).toFixed(1)}%`]),
      );
    }

    const header = `Scale benchmark: greedy, ${o.maxTokens} tokens per request, medians of ${o.repeats} repeats, ${o.threads} ONNX Runtime thread(s) per model.`;
    const sections = [
      ['1. Adaptive K (auto) vs the best fixed K of a sweep over every cascade shape, one request at a time', autoTable],
      ['2. Aggregate throughput with N sessions in flight (held-out code and english prompts)', loadTable],
      [
        `3. Calibration: the target's pass over N sequences of ~128 cached tokens, fitted as ${verify.fixedMs.toFixed(2)} ms + ${verify.sequenceMs.toFixed(2)} ms per sequence + ${verify.tokenMs.toFixed(3)} ms per token`,
        calibrationTable,
      ],
      ['4. Simulator validation: every measured row (speculation off and auto), simulated from its 1-session row and the fitted pass cost', validationTable],
      ['5. Projection: 16 sessions per verifier node, draft nodes per verifier node and network latency', projectionTable],
      [
        `6. A cluster on this machine (${clusterPart ? `${clusterPart.concurrency} requests in flight, K auto, NATS round trip ${clusterPart.rttMs.toFixed(3)} ms` : 'not run'}) as actor processes are added, beside the simulation of the same layout`,
        clusterTable,
      ],
    ];
    const text = sections.map(([h, t]) => `## ${h}\n\n${t}`).join('\n\n');
    process.stdout.write(`${header}\n\n${text}\n`);
    const json = writeJson(o.out, 'scale', { options: o, auto, load, calibration: verify, validation, projection, cluster: clusterPart });
    writeFileSync(join(o.out, 'scale.md'), `# Scale benchmark\n\n${header}\n\n${sections.map(([h, t]) => `## ${h}\n\n\`\`\`\n${t}\n\`\`\``).join('\n\n')}\n`);
    process.stdout.write(`\nwrote ${json} and ${join(o.out, 'scale.md')}\n`);
  } finally {
    await sessions.close();
  }
}

/**
 * simulate() over `p.horizonMs`, or a tenth of it (down to 10 ms) while the run would pass the
 * simulator's event cap: costs calibrated on a loaded machine can be tiny, and 1,024 sessions over
 * 10 s of them are more events than it allows. Throughput is a rate, so a shorter horizon measures
 * the same thing with more noise.
 */
function simulateWithin(p: Parameters<typeof simulate>[0]): ReturnType<typeof simulate> {
  for (let horizonMs = p.horizonMs; ; horizonMs /= 10) {
    try {
      return simulate({ ...p, horizonMs });
    } catch (err) {
      if (!(err instanceof RangeError) || horizonMs / 10 < 10) throw err;
    }
  }
}
