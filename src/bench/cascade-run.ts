import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { planCascade } from '../engine/presets.ts';
import { DEFAULT_DRAFTING, type Drafting } from '../engine/async-cascade.ts';
import { DEFAULT_VERIFICATION, type Verification } from '../kernels/noise.ts';
import type { SamplingParams } from '../kernels/sampling.ts';
import { loadFamily } from '../models/family.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import type { KvLocation } from '../models/kv-placement.ts';
import { describeTrial, draftProvidersBeside, type PlacementTrial } from '../models/placement.ts';
import type { BatchInvariance, ModelSession } from '../models/session.ts';
import { resolveModels, type ModelChoice } from '../models/model-choice.ts';
import { namingSelfDraft, SELF_DRAFT_CACHE, withSelfDraft, type SelfDraft } from '../cli/quantize.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { InvalidArgumentError } from '../errors.ts';
import { candidates, MAG_FIRST_LENGTHS, repetitionRate, runMethod, summarise, type BenchContext, type Method, type MethodResult } from './cascade.ts';
import { measureCosts } from './costs.ts';
import { acceptanceChart, speedupChart, writeSvg } from './plot.ts';
import { formatTable, median, writeJson } from './report.ts';
import { splitWorkload, type Workload } from './workloads.ts';

export interface CascadeBenchOptions {
  /** The models: a family directory, or a choice of target and drafters (`--model`, `--draft-model`). */
  readonly models: string | ModelChoice;
  /** The target's own quantized copy as the first drafter (`--self-draft`, made once into selfDraftCache, default SELF_DRAFT_CACHE): adds sd:<target>-<width>, and csd stacks it above the others. */
  readonly selfDraft?: SelfDraft;
  readonly selfDraftCache?: string;
  readonly workloads: readonly Workload[];
  readonly temperatures: readonly number[];
  readonly repeats: number;
  readonly maxTokens: number;
  /** Prompts measured per workload (the first N of each set). */
  readonly prompts: number;
  /** Prompts the K sweep tunes on (the last N of each set, never measured; see splitWorkload). */
  readonly sweepPrompts: number;
  /** Folder of the prompt sets (WORKLOAD.jsonl); default bench/prompts of this checkout. */
  readonly promptsDir?: string;
  readonly threads: number;
  /** The target's execution providers in order, or ['auto'] (placed by measured cost); default cpu. */
  readonly executionProviders?: readonly string[];
  /** Every drafter's; default: auto beside a target off the CPU, else cpu (as `cascade generate`). */
  readonly draftExecutionProviders?: readonly string[];
  /** Where the target's KV lives between passes (drafters: always auto); default auto. */
  readonly kvLocation?: KvLocation;
  /** The target's batch invariance (SessionOptions.batchInvariant; drafters: off); default auto. */
  readonly batchInvariant?: BatchInvariance;
  /**
   * Verification rules to compare (default [DEFAULT_VERIFICATION]): with more than one, every
   * drafting method runs once per rule, named `method/rule`.
   */
  readonly verifications?: readonly Verification[];
  /** Drafting modes to compare (default [DEFAULT_DRAFTING]); with both, methods are named `method/mode`. */
  readonly draftings?: readonly Drafting[];
  /**
   * A feature drafter's folder (`--eagle-model`, models/eagle): adds `eagle` (alone), `eagle+mag`
   * and `csd+eagle` (above the family's csd); the target must have the hidden_states output.
   */
  readonly eagleModel?: string;
  /** Only these methods (names as in the table; ar is always run: every speedup is over it). */
  readonly methods?: readonly string[];
  readonly out: string;
}

/**
 * Where one model of the run went: the execution providers asked for, the one in use, where its KV
 * lives, whether it is batch invariant, and for `auto` every placement tried with its measured pass cost.
 */
export interface ModelPlacement {
  readonly requested: readonly string[];
  readonly provider: string;
  readonly kvLocation?: string;
  /** Whether one-token passes ran as two rows (SessionOptions.batchInvariant, resolved). */
  readonly batchInvariant?: boolean;
  readonly trials?: readonly PlacementTrial[];
}

export interface WorkloadResult {
  readonly workload: Workload;
  readonly temperature: number;
  readonly prompts: number;
  readonly maxTokens: number;
  readonly repetition4: number;
  readonly methods: MethodResult[];
}

const log = (msg: string) => process.stderr.write(msg + '\n');

function methodsFor(familyDrafters: readonly string[], eagle: boolean): Method[] {
  const csd = planCascade({ mode: 'csd' }, familyDrafters).drafters;
  const featured: Method[] = eagle
    ? [
        { name: 'eagle', kind: 'eagle', drafters: ['eagle'], kMatrix: [] },
        { name: 'eagle+mag', kind: 'eagle', drafters: ['eagle', 'mag'], kMatrix: [] },
        ...(familyDrafters.length ? [{ name: 'csd+eagle', kind: 'eagle' as const, drafters: ['eagle', ...csd], kMatrix: [] }] : []),
      ]
    : [];
  const base: Method[] = [{ name: 'ar', kind: 'ar', drafters: [], kMatrix: [] }];
  for (const d of familyDrafters) base.push({ name: `sd:${d}`, kind: 'sd', drafters: [d], kMatrix: [[4]] });
  base.push({ name: 'mag', kind: 'mag', drafters: ['mag'], kMatrix: [[4]] });
  base.push({ name: 'mag-recent', kind: 'mag', drafters: ['mag'], kMatrix: [[4]], magOccurrence: 'recent' });
  if (familyDrafters.length) {
    base.push({ name: 'csd-vertical', kind: 'csd-vertical', drafters: csd, kMatrix: [] });
    base.push({ name: 'csd-horizontal', kind: 'csd-horizontal', drafters: csd, kMatrix: [] });
    base.push({ name: 'csd', kind: 'csd', drafters: csd, kMatrix: [] });
  }
  // each cascade with MaG below other drafters once more with MaG first (mag>NAME)
  const magFirst = [...base, ...featured]
    .filter((m) => ['csd', 'eagle+mag', 'csd+eagle'].includes(m.name))
    .map((m): Method => ({ ...m, name: `mag>${m.name}`, magFirst: MAG_FIRST_LENGTHS[0] }));
  return [...base, ...featured, ...magFirst];
}

/** `methods` narrowed to `names` (ar always kept); an unknown name is an error listing the known ones. */
function only(methods: Method[], names: readonly string[] | undefined): Method[] {
  if (!names) return methods;
  const unknown = names.filter((n) => !methods.some((m) => m.name === n));
  if (unknown.length) throw new InvalidArgumentError(`unknown method ${unknown.join(', ')}: this run has ${methods.map((m) => m.name).join(', ')}${unknown.some((n) => n.includes('eagle')) && !methods.some((m) => m.kind === 'eagle') ? ' (the eagle methods need --eagle-model)' : ''}`);
  return methods.filter((m) => m.name === 'ar' || names.includes(m.name));
}

/**
 * The feature drafter's decode cost: ms per one-token step over a `past`-token cache (median of
 * `repeats`), fed zero features (its cost does not depend on their values).
 */
async function eagleDecodeMs(eagle: ModelSession, past: number, repeats: number): Promise<number> {
  const size = eagle.spec.features!.size;
  const seqId = 'bench-eagle-cost';
  const ids = Array.from({ length: past }, (_, i) => 1 + (i % 100));
  await eagle.step({ seqId, inputIds: ids, positionIds: ids.map((_, i) => i + 1), hiddenStates: new Float32Array(past * size), returnHidden: true }, 'last', false);
  const times: number[] = [];
  for (let i = 0; i < repeats * 8; i++) {
    const t0 = performance.now();
    await eagle.step({ seqId, inputIds: [7], positionIds: [past + 1], hiddenStates: new Float32Array(size), returnHidden: true, keep: past }, 'last', false);
    times.push(performance.now() - t0);
  }
  await eagle.release(seqId);
  return median(times);
}

/** Every drafting method once per verification rule (`name/rule`) when several are compared. */
function perVerification(methods: Method[], rules: readonly Verification[]): Method[] {
  if (rules.length <= 1) return methods.map((m) => ({ ...m, verification: rules[0] }));
  return methods.flatMap((m) => (m.kind === 'ar' ? [m] : rules.map((verification) => ({ ...m, name: `${m.name}/${verification}`, verification }))));
}

/**
 * Every drafting method once per drafting mode (`name/mode`) when both are compared; MaG alone has
 * nothing to run ahead, and a feature drafter and MaG first draft in serial rounds only, so they run once. Async ignores K (its sweep is skipped: one candidate).
 */
function perDrafting(methods: Method[], modes: readonly Drafting[]): Method[] {
  // a feature drafter reads the target's features of the previous pass: it drafts in serial rounds only
  // and MaG first picks the drafter of each serial round
  const serialOnly = (m: Method) => m.kind === 'ar' || m.kind === 'mag' || m.kind === 'eagle' || m.magFirst !== undefined;
  if (modes.length <= 1) return methods.map((m) => ({ ...m, drafting: serialOnly(m) ? 'serial' : modes[0] }));
  return methods.flatMap((m) => (serialOnly(m) ? [m] : modes.map((drafting) => ({ ...m, name: `${m.name}/${drafting}`, drafting }))));
}

const sampling = (temperature: number): SamplingParams => ({ temperature, topK: 0, topP: 1 });

/** Gives every method its best K on the tuning prompts (greedy, one pass), as the paper tunes K. */
async function sweepK(ctx: BenchContext, methods: Method[], prompts: number[][]): Promise<Map<string, { method: Method; sweep: MethodResult['sweep'] }>> {
  const tuned = new Map<string, { method: Method; sweep: MethodResult['sweep'] }>();
  for (const m of methods) {
    const sweep: MethodResult['sweep'] = [];
    for (const kMatrix of m.drafting === 'async' ? [candidates(m.kind, m.drafters)[0]!] : candidates(m.kind, m.drafters)) {
      for (const magFirst of m.magFirst ? MAG_FIRST_LENGTHS : [undefined]) {
        const r = await runMethod(ctx, { ...m, kMatrix, magFirst }, prompts, sampling(0), 0);
        sweep.push({ kMatrix, ...(magFirst ? { magFirst } : {}), tokensPerSecond: r.tokens / r.seconds });
      }
    }
    const best = sweep.reduce((a, b) => (b.tokensPerSecond > a.tokensPerSecond ? b : a));
    tuned.set(m.name, { method: { ...m, kMatrix: best.kMatrix, magFirst: best.magFirst }, sweep });
    log(`  sweep ${m.name}: best K ${JSON.stringify(best.kMatrix)}${best.magFirst ? ` MaG first from ${best.magFirst} token${best.magFirst === 1 ? '' : 's'}` : ''} (${best.tokensPerSecond.toFixed(1)} tokens/s)`);
  }
  return tuned;
}

async function benchWorkload(ctx: BenchContext, o: CascadeBenchOptions, workload: Workload, tok: TextTokenizer, methods: Method[], costs: Record<string, number>): Promise<WorkloadResult[]> {
  const split = splitWorkload(workload, o.prompts, o.sweepPrompts, o.promptsDir);
  const prompts = split.measure.map((p) => tok.encode(p.prompt));
  log(`[${workload}] ${prompts.length} prompts, ${o.maxTokens} tokens each; sweeping K on ${split.tune.length} other prompts`);
  const tuned = await sweepK(ctx, methods, split.tune.map((p) => tok.encode(p.prompt)));
  const results: WorkloadResult[] = [];
  for (const temperature of o.temperatures) {
    const runs = new Map<string, Awaited<ReturnType<typeof runMethod>>[]>();
    for (let rep = 0; rep < o.repeats; rep++) {
      // Rotate the order each repeat so no method always runs first (warm caches, thermal drift).
      const order = methods.map((_, i) => methods[(i + rep) % methods.length]!);
      for (const m of order) {
        log(`[${workload} T=${temperature}] repeat ${rep + 1}/${o.repeats}: ${m.name}`);
        const r = await runMethod(ctx, tuned.get(m.name)!.method, prompts, sampling(temperature), rep);
        runs.set(m.name, [...(runs.get(m.name) ?? []), r]);
      }
    }
    const arRuns = runs.get('ar')!;
    // greedy output, and sampled output where ar and the method both drew with the seed's noise, must be ar's
    const invariant = (m: Method) => (m.verification ?? DEFAULT_VERIFICATION) === 'invariant';
    const arOutputs = arRuns.map((r) => r.outputs);
    const checked = (m: Method) => m.name !== 'ar' && (temperature === 0 || (invariant(m) && invariant(methods[0]!)));
    const summaries = methods.map((m) => summarise(tuned.get(m.name)!.method, runs.get(m.name)!, costs, checked(m) ? arOutputs : undefined, tuned.get(m.name)!.sweep));
    const ar = summaries[0]!.tokensPerSecond;
    const sds = summaries.filter((s) => s.kind === 'sd').map((s) => s.tokensPerSecond);
    const bestSd = sds.length ? Math.max(...sds) : NaN;
    for (const s of summaries) {
      s.speedupVsAr = s.tokensPerSecond / ar;
      s.speedupVsBestSd = s.tokensPerSecond / bestSd;
    }
    results.push({ workload, temperature, prompts: prompts.length, maxTokens: o.maxTokens, repetition4: repetitionRate(arRuns[0]!.outputs), methods: summaries });
  }
  return results;
}

function table(r: WorkloadResult): string {
  const positions = Math.min(8, Math.max(0, ...r.methods.map((m) => m.acceptanceByPosition.length)));
  const headers = ['method', 'tokens/s', 'x ar', 'x best sd', 'SWI', 'EWIF', 'accept len', ...Array.from({ length: positions }, (_, i) => `a${i + 1}`), 'same as ar', 'K'];
  const rows = r.methods.map((m) => [
    m.method,
    m.tokensPerSecond,
    m.speedupVsAr,
    Number.isFinite(m.speedupVsBestSd) ? m.speedupVsBestSd : '-',
    m.swi,
    m.ewif ?? '-',
    m.meanAcceptanceLength,
    ...Array.from({ length: positions }, (_, i) => (m.acceptanceByPosition[i] === undefined ? '-' : m.acceptanceByPosition[i]!)),
    m.identicalToAr === undefined ? '-' : m.identicalToAr ? 'yes' : 'NO',
    m.drafting === 'async' ? 'async' : JSON.stringify(m.kMatrix) + (m.magFirst ? ` L=${m.magFirst}` : ''),
  ]);
  return `### ${r.workload}, temperature ${r.temperature} (${r.prompts} prompts x ${r.maxTokens} tokens; target repeated 4-grams ${(r.repetition4 * 100).toFixed(1)}%)\n\n` + formatTable(headers, rows);
}

/** `cascade bench cascade`: every method side by side on held-out workloads; table, JSON, markdown, SVG. */
export async function benchCascade(o: CascadeBenchOptions): Promise<WorkloadResult[]> {
  const chosen = typeof o.models === 'string' ? loadFamily(o.models) : resolveModels(o.models);
  // bad methods and prompt sets are refused before anything is made, loaded or measured (the self-draft copy only named here)
  const named = o.selfDraft ? namingSelfDraft(chosen, o.selfDraft) : chosen;
  const methods = perDrafting(perVerification(only(methodsFor(named.drafters, o.eagleModel !== undefined), o.methods), o.verifications ?? [DEFAULT_VERIFICATION]), o.draftings ?? [DEFAULT_DRAFTING]);
  for (const w of o.workloads) splitWorkload(w, o.prompts, o.sweepPrompts, o.promptsDir);
  const family = o.selfDraft ? await withSelfDraft(chosen, o.selfDraft, o.selfDraftCache ?? SELF_DRAFT_CACHE, log) : chosen;
  const targetEps = o.executionProviders ?? ['cpu'];
  const draftEps = o.draftExecutionProviders ?? draftProvidersBeside(targetEps);
  const requested = (name: string) => (name === family.target ? targetEps : draftEps);
  const sessions = new FamilySessions(
    family,
    (name) => ({ intraOpThreads: o.threads, executionProviders: requested(name), kvLocation: name === family.target ? (o.kvLocation ?? 'auto') : 'auto', batchInvariant: name === family.target ? (o.batchInvariant ?? 'auto') : undefined }),
    (name, t) => log(describeTrial(name, t)),
  );
  let eagle: OrtModelSession | undefined;
  try {
    const { target, drafters, magTables } = await sessions.cascadeModels();
    const placement: Record<string, ModelPlacement> = {};
    for (const s of [target, ...drafters.values()]) placement[s.spec.name] = placed(s, requested(s.spec.name), sessions.placements.get(s.spec.name)?.trials);
    log(`placement: ${describePlacement(placement)}`);
    eagle = o.eagleModel ? await OrtModelSession.open(o.eagleModel, { intraOpThreads: o.threads, executionProviders: draftEps, batchInvariant: 'off' }) : undefined;
    if (eagle) placement[eagle.spec.name] = placed(eagle, draftEps, undefined);
    const ctx: BenchContext = { target, drafters, magTables, maxTokens: o.maxTokens, ...(eagle ? { eagle } : {}) };
    log('measuring cost coefficients (decode ms/token relative to the target) …');
    const costs: Record<string, number> = {};
    const decode: Record<string, number> = {};
    for (const s of [target, ...drafters.values()]) decode[s.spec.name] = (await measureCosts(s, 128, 3)).decodeMsPerToken;
    if (eagle) decode[eagle.spec.name] = await eagleDecodeMs(eagle, 128, 3);
    for (const [name, ms] of Object.entries(decode)) costs[name] = ms / decode[target.spec.name]!;
    costs.mag = 0;
    const tok = TextTokenizer.load(target.spec.tokenizerPath);
    const results: WorkloadResult[] = [];
    for (const w of o.workloads) results.push(...(await benchWorkload(ctx, o, w, tok, methods, costs)));

    mkdirSync(o.out, { recursive: true });
    const tables = results.map(table);
    const header = `Cascade benchmark: medians of ${o.repeats} repeats; placement: ${describePlacement(placement)}; cost coefficients (decode ms/token vs target): ${Object.entries(costs).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(', ')}`;
    process.stdout.write(`${header}\n\n${tables.join('\n\n')}\n`);
    const json = writeJson(o.out, 'cascade', { options: o, placement, costs, decodeMsPerToken: decode, results });
    const charts: string[] = [];
    for (const r of results) {
      const file = `acceptance-${r.workload}-t${r.temperature}.svg`;
      const rows = r.methods.flatMap((m) => m.acceptanceByPosition.slice(0, 12).map((rate, i) => ({ method: m.method, position: i + 1, rate })));
      await writeSvg(join(o.out, file), acceptanceChart(`Acceptance by position: ${r.workload}, T=${r.temperature}`, rows));
      charts.push(file);
    }
    for (const t of o.temperatures) {
      const file = `speedups-t${t}.svg`;
      const rows = results.filter((r) => r.temperature === t).flatMap((r) => r.methods.map((m) => ({ workload: r.workload, method: m.method, speedup: m.speedupVsAr })));
      await writeSvg(join(o.out, file), speedupChart(`Speedup over ar, T=${t}`, rows));
      charts.push(file);
    }
    const md = `# Cascade benchmark\n\n${header}.\n\n${tables.map((t) => t.replace(/^### (.*)\n\n/, '## $1\n\n```\n') + '\n```').join('\n\n')}\n\n${charts.map((c) => `![${c}](${c})`).join('\n')}\n`;
    writeFileSync(join(o.out, 'cascade.md'), md);
    process.stdout.write(`\nwrote ${json}, ${join(o.out, 'cascade.md')} and ${charts.length} SVG plots\n`);
    return results;
  } finally {
    await Promise.all([sessions.close(), eagle?.close()]);
  }
}

function placed(session: ModelSession, requested: readonly string[], trials: readonly PlacementTrial[] | undefined): ModelPlacement {
  const kvLocation = 'kvLocation' in session && typeof session.kvLocation === 'string' ? session.kvLocation : undefined;
  return { requested, provider: session.provider, ...(kvLocation ? { kvLocation } : {}), ...(session.batchInvariant !== undefined ? { batchInvariant: session.batchInvariant } : {}), ...(trials ? { trials } : {}) };
}

const describePlacement = (p: Record<string, ModelPlacement>): string =>
  Object.entries(p)
    .map(([name, m]) => {
      const how = [...(m.kvLocation ? [`KV ${m.kvLocation}`] : []), ...(m.batchInvariant ? ['batch-invariant'] : [])];
      return `${name} on ${m.provider}${how.length ? ` (${how.join(', ')})` : ''}`;
    })
    .join(', ') + ', mag on the host';
