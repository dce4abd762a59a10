import type { Command } from 'commander';
import { benchCascade } from '../bench/cascade-run.ts';
import { DEFAULT_VERIFICATION, type Verification } from '../kernels/noise.ts';
import { DEFAULT_DRAFTING, type Drafting } from '../engine/async-cascade.ts';
import { registerBenchPeer } from './bench-peer.ts';
import { benchCluster, LAYOUTS, type Layout } from '../bench/cluster.ts';
import { benchKv } from '../bench/kv.ts';
import { benchLoad } from '../bench/load.ts';
import { benchSelfDraft } from '../bench/self-draft.ts';
import { parseSelfDraft, SELF_DRAFT_CACHE, SELF_DRAFT_CACHE_HELP, SELF_DRAFT_HELP } from './quantize.ts';
import { benchScale } from '../bench/scale.ts';
import { KV_POLICIES, type KvPolicyName } from '../kernels/kv-policy.ts';
import { measureBatched, measureCosts, SCORE_KS, type BatchCost, type ModelCosts } from '../bench/costs.ts';
import { WORKLOADS, type Workload } from '../bench/workloads.ts';
import { InvalidArgumentError } from '../errors.ts';
import { formatTable, writeJson } from '../bench/report.ts';
import { memberSource } from '../models/family.ts';
import { resolveModels } from '../models/model-choice.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { BATCH_INVARIANT_HELP, EXECUTION_PROVIDERS, KV_LOCATIONS, parseBatchInvariant, parseExecutionProviders, parseKvLocation, parseNumber, parseDraftingFlag, parseVerificationFlag, parseOutDir } from './options.ts';
import type { KvLocation } from '../models/kv-placement.ts';
import type { BatchInvariance } from '../models/session.ts';

interface CostOptions {
  models: string;
  model?: string;
  draftModel?: string[];
  modelFile?: string;
  tokenizer?: string;
  out: string;
  repeats: number;
  past: number;
  threads: number;
  executionProviders?: string[];
  /** Where the KV lives, one measurement per entry (host vs device side by side). */
  kvLocation: KvLocation[];
  /** Batch invariance, one measurement per entry (a one-token pass as one row or as two, side by side). */
  batchInvariant: BatchInvariance[];
  /** Batch sizes of the batched passes (1 is always measured as the baseline), or false: none. */
  batch: number[] | false;
  /** New tokens per sequence in the batched verification pass (1: decode only). */
  batchVerify: number;
}

type CostRecord = ModelCosts & { executionProvider: string; kvLocation: string; batchInvariant: boolean; batched?: BatchCost[] };

async function costs(o: CostOptions): Promise<void> {
  const family = resolveModels({ models: o.models, model: o.model, draftModels: o.draftModel, modelFile: o.modelFile, tokenizer: o.tokenizer });
  const names = [family.target, ...family.drafters];
  const results: CostRecord[] = [];
  const several = o.kvLocation.length > 1 || o.batchInvariant.length > 1 || o.executionProviders !== undefined;
  for (const name of names) {
    for (const kvLocation of o.kvLocation) {
      for (const batchInvariant of o.batchInvariant) {
        process.stderr.write(`measuring ${name}${several ? ` (KV ${kvLocation}, batch invariance ${batchInvariant})` : ''} …\n`);
        const model = await OrtModelSession.open(memberSource(family, name), { intraOpThreads: o.threads, executionProviders: o.executionProviders, kvLocation, batchInvariant });
        try {
          const measured = await measureCosts(model, o.past, o.repeats);
          const label = several ? `${measured.model} (${model.provider}, KV ${model.kvLocation}${model.batchInvariant ? ', batch-invariant' : ''})` : measured.model;
          const batched = o.batch ? await measureBatched(model, o.past, o.repeats, o.batch, o.batchVerify) : undefined;
          results.push({ ...measured, model: label, executionProvider: model.provider, kvLocation: model.kvLocation, batchInvariant: model.batchInvariant, ...(batched ? { batched } : {}) });
        } finally {
          await model.close();
        }
      }
    }
  }
  const target = results[0]!;
  const headers = ['model', `prefill ${o.past} ms`, 'decode ms/tok', ...SCORE_KS.map((k) => `score ${k} ms`), 'score 32 vs 1', 'decode vs target', 'score 8 vs target'];
  const rows = results.map((r) => [
    r.model,
    r.prefillMs,
    r.decodeMsPerToken,
    ...SCORE_KS.map((k) => r.scoreMs[k]!),
    r.scoreMs[32]! / r.scoreMs[1]!,
    r.decodeMsPerToken / target.decodeMsPerToken,
    r.scoreMs[8]! / target.scoreMs[8]!,
  ]);
  process.stdout.write(`model costs: medians of ${o.repeats}+ repeats, ${o.threads} ONNX Runtime thread(s), past = ${o.past} tokens, execution providers ${(o.executionProviders ?? ['cpu']).join(',')}\n\n`);
  process.stdout.write(formatTable(headers, rows) + '\n');
  if (o.batch) process.stdout.write(`\n${batchedTable(results, o.past)}\n`);
  const path = writeJson(o.out, 'costs', { past: o.past, threads: o.threads, repeats: o.repeats, ...(o.batch ? { batch: o.batch, batchVerify: o.batchVerify } : {}), models: results });
  process.stdout.write(`\nwrote ${path}\n`);
}

/** Batched passes per model: ms per pass, aggregate tokens/s, and the ratio to one sequence; refusals below. */
function batchedTable(results: readonly CostRecord[], past: number): string {
  const reasons: string[] = [];
  const note = (r: BatchCost): string => {
    // one note per reason: the runner's message less the shapes of this pass (the JSON keeps them whole)
    const why = (r.refused ?? r.error)?.replace(/ \(here [^)]*\)/, '');
    if (why === undefined) return '';
    if (!reasons.includes(why)) reasons.push(why);
    return `${r.refused !== undefined ? 'refused' : 'failed'} [${reasons.indexOf(why) + 1}]`;
  };
  const rows = results.flatMap((m) =>
    (m.batched ?? []).map((r) => [m.model, r.batch, r.tokens === 1 ? 'decode' : `verify(${r.tokens})`, r.ms ?? '-', r.tokensPerSecond ?? '-', r.vsOne ?? '-', note(r)]),
  );
  const table = formatTable(['model', 'sequences', 'pass', 'ms/pass', 'tokens/s', 'x 1 sequence', 'note'], rows);
  const notes = reasons.map((why, i) => `[${i + 1}] ${why}`).join('\n');
  return `batched passes: each sequence over its own ${past}-token cache, one forwardBatch, rolled back after each; tokens/s = sequences x new tokens each / pass time\n\n${table}${notes ? `\n\n${notes}` : ''}`;
}

/** --model, --draft-model, --model-file and --tokenizer, as `cascade generate` takes them (model-choice.ts). */
function modelOptions(command: Command): Command {
  return command
    .option('--model <dir|name>', 'the target: a model folder (a Hugging Face ONNX export) or a member of the --models family (default: the family target)')
    .option('--draft-model <dir|name>', 'a drafter, repeatable, largest first (default: the family\'s drafters; none with an exported --model)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--model-file <name>', 'the target\'s ONNX graph inside its folder when it holds several')
    .option('--tokenizer <file>', 'tokenizer.json for model folders that carry none');
}

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks: print a table and write JSON');
  const costsCommand = bench
    .command('costs')
    .description('per-model prefill, decode and k-token scoring costs, and each drafter relative to the target')
    .option('--models <dir>', 'model family directory', 'models');
  modelOptions(costsCommand)
    .option('--execution-providers <list>', `execution providers in order, e.g. webgpu (${EXECUTION_PROVIDERS.join(', ')}; default cpu)`, parseExecutionProviders('--execution-providers'))
    .option('--kv-location <list>', `where the KV lives, comma-separated to measure each side by side: ${KV_LOCATIONS.join(', ')}`, (v: string) => v.split(',').map(parseKvLocation), ['auto'])
    .option('--batch-invariant <list>', `whether a token's logits stay the same however many tokens its pass scores, comma-separated to measure each side by side: ${BATCH_INVARIANT_HELP}`, (v: string) => v.split(',').map(parseBatchInvariant), ['auto'])
    .option('--out <dir>', 'directory for the JSON record', parseOutDir('--out'), 'results')
    .option('--repeats <n>', 'repeats per measurement (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 5)
    .option('--past <n>', 'tokens already in the cache when decoding and scoring', parseNumber('--past', { min: 1, integer: true }), 256)
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--batch <list>', 'batch sizes of the batched passes, comma-separated (1 is always measured, as the baseline): each sequence over its own --past cache, one forwardBatch', parseBatch, [1, 8])
    .option('--no-batch', 'skip the batched passes')
    .option('--batch-verify <k>', 'new tokens per sequence in the batched verification pass (1: batched decode only)', parseNumber('--batch-verify', { min: 1, integer: true }), 8)
    .action(costs);
  const cascadeCommand = bench
    .command('cascade')
    .description('ar, sd (each drafter), mag and csd (vertical, horizontal, both; and with MaG first, mag>csd) side by side on held-out prompts, greedy and sampled')
    .option('--workload <name>', `${WORKLOADS.join(' | ')} | all`, parseWorkloads, [...WORKLOADS])
    .option('--temperatures <list>', 'comma-separated sampling temperatures (0 = greedy)', parseTemperatures, [0, 0.7])
    .option('--repeats <n>', 'repeats of the whole prompt set per method (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 3)
    .option('--max-tokens <n>', 'tokens generated per prompt', parseNumber('--max-tokens', { min: 1, integer: true }), 64)
    .option('--prompts <n>', 'prompts measured per workload (the first N of bench/prompts/WORKLOAD.jsonl)', parseNumber('--prompts', { min: 1, integer: true }), 12)
    .option('--sweep-prompts <n>', 'prompts used to pick each method\'s best K (the last N of the set, never measured)', parseNumber('--sweep-prompts', { min: 1, integer: true }), 4)
    .option('--prompts-dir <dir>', 'folder of the prompt sets, WORKLOAD.jsonl (default: bench/prompts of this checkout)')
    .option('--models <dir>', 'model family directory', 'models');
  modelOptions(cascadeCommand)
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--execution-providers <list>', `the target's execution providers in order, e.g. webgpu (${EXECUTION_PROVIDERS.join(', ')}; default cpu), or auto: where its verify pass measures cheapest (webgpu, cpu)`, parseExecutionProviders('--execution-providers'))
    .option('--draft-execution-providers <list>', 'every drafter\'s execution providers, or auto: where its decode pass measures cheapest (default: auto beside a target off the CPU, else cpu)', parseExecutionProviders('--draft-execution-providers'))
    .option('--kv-location <where>', `where the target's KV cache lives between passes: ${KV_LOCATIONS.join(' | ')} (auto: on the device when it runs on a GPU EP; drafters are always auto)`, parseKvLocation, 'auto')
    .option('--batch-invariant <mode>', `whether a token's logits from the target stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP}; drafters never pad (off: their drafts are reviewed)`, parseBatchInvariant, 'auto')
    .option('--drafting <list>', 'drafting modes compared, comma-separated: serial, async (with both, each drafting method but MaG alone runs under each, named method/mode)', parseDraftings, [DEFAULT_DRAFTING])
    .option('--verification <list>', 'verification rules to compare, comma-separated: invariant, rejection (with both, each drafting method runs under each, named method/rule)', parseVerifications, [DEFAULT_VERIFICATION])
    .option('--self-draft <width>', `${SELF_DRAFT_HELP}: adds sd:<target>-<width>, and the csd methods stack it above the other drafters`, parseSelfDraft)
    .option('--self-draft-cache <dir>', SELF_DRAFT_CACHE_HELP, SELF_DRAFT_CACHE)
    .option('--eagle-model <dir>', 'a feature drafter (EAGLE, e.g. models/eagle): adds eagle, eagle+mag and csd+eagle, and the last two with MaG first (mag>eagle+mag, mag>csd+eagle); the target needs the hidden_states output (tools/train/add_hidden_output.py)')
    .option('--methods <list>', 'only these methods, comma-separated, e.g. mag,csd,csd+eagle; names: ar, sd:NAME, mag, mag-recent, csd-vertical, csd-horizontal, csd, mag>csd, and with --eagle-model eagle, eagle+mag, csd+eagle, mag>eagle+mag, mag>csd+eagle (quote the > in a shell; ar always runs: speedups are over it)', (v: string) => v.split(',').map((m) => m.trim()).filter(Boolean))
    .option('--out <dir>', 'directory for cascade.json, cascade.md and the SVG plots', parseOutDir('--out'), 'results')
    .action(async (o) => {
      const choice = { models: o.models, model: o.model, draftModels: o.draftModel, modelFile: o.modelFile, tokenizer: o.tokenizer };
      await benchCascade({
        verifications: o.verification,
        draftings: o.drafting,
        models: choice,
        workloads: o.workload,
        temperatures: o.temperatures,
        repeats: o.repeats,
        maxTokens: o.maxTokens,
        prompts: o.prompts,
        sweepPrompts: o.sweepPrompts,
        promptsDir: o.promptsDir,
        threads: o.threads,
        executionProviders: o.executionProviders,
        draftExecutionProviders: o.draftExecutionProviders,
        kvLocation: o.kvLocation,
        batchInvariant: o.batchInvariant,
        eagleModel: o.eagleModel,
        selfDraft: o.selfDraft,
        selfDraftCache: o.selfDraftCache,
        methods: o.methods,
        out: o.out,
      });
    });
  bench
    .command('scale')
    .description('adaptive K vs a sweep of fixed K per workload, aggregate tokens/s at N concurrent sessions with and without batched verification and with speculation off/on/auto, and a simulator calibrated on those measurements projecting larger clusters')
    .option('--workload <name>', `${WORKLOADS.join(' | ')} | all`, parseWorkloads, [...WORKLOADS])
    .option('--prompts <n>', 'prompts measured per workload in the auto comparison (the first N of the set)', parseNumber('--prompts', { min: 1, integer: true }), 6)
    .option('--sweep-prompts <n>', 'prompts the fixed-K sweep tunes on (the last N of the set, never measured)', parseNumber('--sweep-prompts', { min: 1, integer: true }), 4)
    .option('--concurrency <list>', 'sessions in flight, comma-separated', parseConcurrency, [1, 4, 8, 16])
    .option('--repeats <n>', 'repeats (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 3)
    .option('--max-tokens <n>', 'tokens generated per request', parseNumber('--max-tokens', { min: 1, integer: true }), 48)
    .option('--models <dir>', 'model family directory', 'models')
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--out <dir>', 'directory for scale.json and scale.md', parseOutDir('--out'), 'results')
    .option('--no-cluster', 'skip the cluster on this machine (nats-server, redis-server, actor processes)')
    .action(async (o) => {
      await benchScale({ models: o.models, workloads: o.workload, prompts: o.prompts, sweepPrompts: o.sweepPrompts, concurrency: o.concurrency, repeats: o.repeats, maxTokens: o.maxTokens, threads: o.threads, out: o.out, cluster: o.cluster });
    });
  bench
    .command('kv')
    .description('bounded KV caches (window, streaming, h2o, adore) against full attention on held-out long documents')
    .option('--context <n>', 'tokens of each document kept in context', parseNumber('--context', { min: 16, integer: true }), 2048)
    .option('--continuation <n>', 'teacher-forced continuation tokens compared with full attention', parseNumber('--continuation', { min: 1, integer: true }), 32)
    .option('--fractions <list>', 'budgets as fractions of the context', parseFractions, [0.125, 0.25, 0.5])
    .option('--policies <list>', `policies to compare with full attention: ${KV_POLICIES.filter((p) => p !== 'full').join(',')}`, parsePolicies, ['window', 'streaming', 'h2o', 'adore'])
    .option('--docs <n>', 'documents (the first N of bench/prompts/long.jsonl long enough)', parseNumber('--docs', { min: 1, integer: true }), 8)
    .option('--sinks <n>', 'protected first tokens (streaming, h2o, adore)', parseNumber('--sinks', { min: 0, integer: true }), 4)
    .option('--recent <n>', 'protected newest tokens (h2o, adore)', parseNumber('--recent', { min: 0, integer: true }), 16)
    .option('--rebuild <r>', 'released tokens brought back per step (adore)', parseNumber('--rebuild', { min: 0, integer: true }), 2)
    .option('--prefill-chunk <n>', 'context tokens per pass under a bounded cache (small: the NLL measures the policy, not the chunking)', parseNumber('--prefill-chunk', { min: 1, integer: true }), 32)
    .option('--release-batch <s>', 'tokens released at once when a cache is full (as generate --kv-release-batch)', parseNumber('--release-batch', { min: 1, integer: true }), 1)
    .option('--models <dir>', 'model family directory', 'models')
    .option('--threads <n>', 'ONNX Runtime intra-op threads', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--out <dir>', 'directory for kv.json, kv.md and kv-quality.svg', parseOutDir('--out'), 'results')
    .action(async (o) => {
      await benchKv({ models: o.models, context: o.context, continuation: o.continuation, fractions: o.fractions, policies: o.policies, docs: o.docs, sinks: o.sinks, recent: o.recent, rebuild: o.rebuild, prefillChunk: o.prefillChunk, releaseBatch: o.releaseBatch, threads: o.threads, out: o.out });
    });
  bench
    .command('load')
    .description('many streaming requests of mixed lengths at a fixed concurrency against a local cluster: P50/P90/P99 latencies, errors, memory')
    .option('--requests <n>', 'requests in all', parseNumber('--requests', { min: 1, integer: true }), 500)
    .option('--concurrency <n>', 'requests in flight', parseNumber('--concurrency', { min: 1, integer: true }), 32)
    .option('--min-tokens <n>', 'shortest max_tokens', parseNumber('--min-tokens', { min: 1, integer: true }), 4)
    .option('--max-tokens <n>', 'longest max_tokens', parseNumber('--max-tokens', { min: 1, integer: true }), 48)
    .option('--models <dir>', 'model family directory', 'models')
    .option('--out <dir>', 'directory for load.json and load.md', parseOutDir('--out'), 'results')
    .action(async (o) => {
      if (o.minTokens > o.maxTokens) throw new InvalidArgumentError('--min-tokens must not exceed --max-tokens');
      await benchLoad({ models: o.models, requests: o.requests, concurrency: o.concurrency, minTokens: o.minTokens, maxTokens: o.maxTokens, out: o.out });
    });
  bench
    .command('self-draft')
    .description('ADORE placement (c) on long documents: the target over an ADORE cache as the first drafter, against ar, mag and csd')
    .option('--docs <n>', 'held-out long documents (bench/prompts/long.jsonl)', parseNumber('--docs', { min: 1, integer: true }), 4)
    .option('--context <n>', 'prompt tokens kept of each document', parseNumber('--context', { min: 16, integer: true }), 1900)
    .option('--max-tokens <n>', 'tokens generated per document', parseNumber('--max-tokens', { min: 1, integer: true }), 128)
    .option('--budget <m>', 'tokens the self-draft cache keeps', parseNumber('--budget', { min: 8, integer: true }), 512)
    .option('--repeats <n>', 'repeats (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 2)
    .option('--schedule <auto|fixed>', 'K per round: the adaptive schedule, or the fixed default K matrix of each method', parseSchedule, 'auto')
    .option('--models <dir>', 'model family directory', 'models')
    .option('--out <dir>', 'directory for self-draft.json and self-draft.md', parseOutDir('--out'), 'results')
    .action(async (o) => {
      await benchSelfDraft({ models: o.models, docs: o.docs, context: o.context, maxTokens: o.maxTokens, budget: o.budget, repeats: o.repeats, schedule: o.schedule, out: o.out });
    });
  bench
    .command('cluster')
    .description('target-only decoding and csd embedded vs through a cluster on this machine (nats-server, redis-server, actor and coordinator processes), serial and async drafting, single stream side by side; aggregate tokens/s under concurrency; latency breakdown and network per call from traces; optional timeline SVG')
    .option('--prompts <n>', 'held-out prompts per workload (bench/prompts/<workload>.jsonl)', parseNumber('--prompts', { min: 1, integer: true }), 8)
    .option('--workload <list>', `held-out prompt sets measured single stream, comma-separated: ${WORKLOADS.join(', ')} (the first also drives the aggregate and traced runs)`, parseWorkloads, ['code', 'english'])
    .option('--drafting <list>', 'drafting modes compared, embedded and in the cluster, comma-separated: serial, async', parseDraftings, ['serial', 'async'])
    .option('--max-tokens <n>', 'tokens generated per request', parseNumber('--max-tokens', { min: 1, integer: true }), 64)
    .option('--repeats <n>', 'repeats (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 3)
    .option('--concurrency <list>', 'comma-separated concurrent requests for the aggregate runs, per drafting mode', parseConcurrency, [4])
    .option('--timeline <file.svg>', 'draw one traced request per drafting mode: each actor a lane, busy and idle, rejections marked (FILE for the first mode, FILE-<mode>.svg for the others)')
    .option('--models <dir>', 'model family directory', 'models')
    .option('--out <dir>', 'directory for cluster.json, cluster.md and the spans', parseOutDir('--out'), 'results')
    .option('--drafters <list>', "the cascade's drafters, comma-separated names as the API's cascade.drafters takes them, e.g. eagle,mag (default: the family's drafters and mag)", (v: string) => v.split(',').map((d) => d.trim()).filter(Boolean))
    .option('--prompts-dir <dir>', 'folder of the prompt sets, WORKLOAD.jsonl (default: bench/prompts of this checkout)')
    .option('--layouts <list>', `cluster layouts measured side by side, comma-separated: ${LAYOUTS.join(', ')} (colocated: the verify actor inside the coordinator, cascade coordinator --verifier); the first also drives the aggregate and traced runs`, parseLayouts, ['separate'])
    .action(async (o) => {
      await benchCluster({ models: o.models, prompts: o.prompts, workloads: o.workload, draftings: o.drafting, maxTokens: o.maxTokens, repeats: o.repeats, concurrency: o.concurrency, timeline: o.timeline, out: o.out, drafters: o.drafters, promptsDir: o.promptsDir, layouts: o.layouts });
    });
  registerBenchPeer(bench);
}

function parseLayouts(raw: string): Layout[] {
  const list = [...new Set(raw.split(',').map((v) => v.trim()))];
  const bad = list.find((v) => !(LAYOUTS as readonly string[]).includes(v));
  if (bad !== undefined || !list.length) throw new InvalidArgumentError(`--layouts takes ${LAYOUTS.join(', ')}, comma-separated; got "${raw}"`);
  return list as Layout[];
}

function parseDraftings(raw: string): Drafting[] {
  const list = [...new Set(raw.split(',').map((v) => v.trim()))];
  return list.map(parseDraftingFlag);
}

function parseVerifications(raw: string): Verification[] {
  const list = [...new Set(raw.split(',').map((v) => v.trim()))];
  return list.map(parseVerificationFlag);
}

function parseBatch(raw: string): number[] {
  return raw.split(',').map((c) => parseNumber('--batch', { min: 1, integer: true })(c));
}

function parseConcurrency(raw: string): number[] {
  return raw.split(',').map((c) => parseNumber('--concurrency', { min: 1, integer: true })(c));
}

function parseFractions(raw: string): number[] {
  return raw.split(',').map((f) => {
    const v = parseNumber('--fractions', { min: 0 })(f);
    if (!(v > 0 && v < 1)) throw new InvalidArgumentError(`--fractions must be budgets in (0, 1), got ${f}`);
    return v;
  });
}

function parsePolicies(raw: string): KvPolicyName[] {
  const list = raw.split(',');
  const bad = list.find((p) => p === 'full' || !(KV_POLICIES as readonly string[]).includes(p));
  if (bad !== undefined) throw new InvalidArgumentError(`--policies must be among ${KV_POLICIES.filter((p) => p !== 'full').join(', ')} (full attention always runs), got "${bad}"`);
  return list as KvPolicyName[];
}

function parseWorkloads(raw: string): Workload[] {
  if (raw === 'all') return [...WORKLOADS];
  const list = raw.split(',');
  const bad = list.find((w) => !(WORKLOADS as readonly string[]).includes(w));
  if (bad !== undefined) throw new InvalidArgumentError(`--workload must be ${WORKLOADS.join(', ')} or all (comma-separated), got "${bad}"`);
  return list as Workload[];
}

function parseTemperatures(raw: string): number[] {
  return raw.split(',').map((t) => parseNumber('--temperatures', { min: 0 })(t));
}

function parseSchedule(raw: string): 'auto' | 'fixed' {
  if (raw !== 'auto' && raw !== 'fixed') throw new InvalidArgumentError(`--schedule must be auto or fixed, got "${raw}"`);
  return raw;
}
