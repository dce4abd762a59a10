import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { RUNNABLE_KV_POLICIES, type KvPolicyConfig } from '../engine/bounded-kv.ts';
import { generateCascade, type CascadeResult, type DrafterSpec } from '../engine/cascade.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { generateAutoregressive, type GenerateResult } from '../engine/generate.ts';
import type { KvPolicyName } from '../kernels/kv-policy.ts';
import { K_BOUND, MAX_K, MODES, planCascade, type KSchedule, type Mode } from '../engine/presets.ts';
import { InvalidArgumentError, ModelLoadError } from '../errors.ts';
import { drafterKind, loadMagTables, loadController, type Family } from '../models/family.ts';
import { parseSelfDraft, SELF_DRAFT_CACHE, SELF_DRAFT_CACHE_HELP, SELF_DRAFT_HELP, SELF_DRAFTS, selfDraftCopy, type SelfDraft } from './quantize.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import { resolveModels } from '../models/model-choice.ts';
import { checkSharedVocabulary } from '../models/vocabulary.ts';
import { withProcessors } from '../kernels/sampling.ts';
import { StopMatcher } from '../models/stop-strings.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import type { ChatMessage } from '../models/chat-template.ts';
import { resolveSampling } from '../models/generation-config.ts';
import { speculationCaveat } from '../models/config.ts';
import { collectMessage, readChatFile } from './chat.ts';
import { BATCH_INVARIANT_HELP, EXECUTION_PROVIDERS, KV_LOCATIONS, parseBatchInvariant, parseExecutionProviders, parseKMatrix, parseKvLocation, parseLogitBias, parseNumber, parseVerificationFlag, VERIFICATION_HELP, parseDraftingFlag, DRAFTING_HELP, LEVEL_BELOW_HELP, OUTCOME_BRANCHES_HELP } from './options.ts';
import { DEFAULT_DRAFTING, DRAFTINGS, type Drafting } from '../engine/async-cascade.ts';
import { DEFAULT_VERIFICATION, VERIFICATIONS, type Verification } from '../kernels/noise.ts';
import type { KvLocation } from '../models/kv-placement.ts';
import { BATCH_INVARIANCE, type BatchInvariance } from '../models/session.ts';
import { describeTrial, draftProvidersBeside } from '../models/placement.ts';
import { writeOut } from './stdout.ts';
import { describeIssues } from '../issues.ts';

interface GenerateOptions {
  prompt?: string;
  promptFile?: string;
  /** --prompt-ids: token ids fed as they are (no BOS added), e.g. a reference's prompt. */
  promptIds?: number[];
  /** --message ROLE=TEXT, in order: a chat rendered with the model's chat template. */
  message?: ChatMessage[];
  chatFile?: string;
  maxTokens: number;
  /** Unset: the model's generation_config.json decides, else CLI_SAMPLING. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** token id → bias added to its logit. */
  logitBias?: Record<number, number>;
  /** --stop, repeatable: stop strings. */
  stop?: string[];
  seed: number;
  models: string;
  model?: string;
  /** --draft-model DIR|NAME, repeatable, largest first. */
  draftModel?: string[];
  /** --eagle-model DIR: a feature drafter (EAGLE) above the other drafters. */
  eagleModel?: string;
  /** --self-draft int4|int8: the target's own quantized copy as the first drafter, made once into selfDraftCache. */
  selfDraft?: SelfDraft;
  selfDraftCache: string;
  modelFile?: string;
  tokenizer?: string;
  mode: Mode;
  drafters?: string[];
  kMatrix?: KSchedule;
  lenience: number;
  verification: Verification;
  drafting: Drafting;
  /** --outcome-branches: async drafting also drafts outcome branches (RunOptions.outcomeBranches). */
  outcomeBranches?: boolean;
  /** --level-below: async drafting runs the second neural drafter below the first (RunOptions.levelBelow). */
  levelBelow?: boolean;
  magOccurrence: 'earliest' | 'recent';
  /** MaG first (CascadeConfig.magFirst): its minimum match length. */
  magFirst?: number;
  config?: string;
  threads: number;
  /** The target's execution providers, in order (default cpu). */
  executionProviders?: string[];
  /** Every drafter's execution providers (default: auto beside a target off the CPU, else cpu). */
  draftExecutionProviders?: string[];
  /** Per model: MODEL=EPS entries, which win over the two lists above. */
  placement?: string[];
  kvLocation: KvLocation;
  /** The target's batch invariance (SessionOptions.batchInvariant); drafters never pad (off: their drafts are reviewed). */
  batchInvariant: BatchInvariance;
  json?: boolean;
  kvPolicy: KvPolicyName;
  kvBudget?: number;
  kvSinks?: number;
  kvRecent: number;
  kvRebuild?: number;
  kvPrefillChunk?: number;
  kvReleaseBatch?: number;
  kvPlacement: KvPlacement;
}

/** Where a bounded KV cache goes (SPEC §5): the target (lossy), the drafters, or a self-draft level (both exact). */
const KV_PLACEMENTS = ['target', 'drafters', 'self-draft'] as const;
type KvPlacement = (typeof KV_PLACEMENTS)[number];

/** A config file holds the same settings as the flags (flags given on the command line win). */
const ConfigFile = z.strictObject({
  mode: z.enum(MODES).optional(),
  drafters: z.array(z.string()).optional(),
  kMatrix: z.union([z.literal('auto'), z.array(z.array(z.number().int().nonnegative().max(MAX_K, K_BOUND)))]).optional(),
  lenience: z.number().min(1).optional(),
  verification: z.enum(VERIFICATIONS as [Verification, ...Verification[]]).optional(),
  drafting: z.enum(DRAFTINGS as [Drafting, ...Drafting[]]).optional(),
  outcomeBranches: z.boolean().optional(),
  levelBelow: z.boolean().optional(),
  magOccurrence: z.enum(['earliest', 'recent']).optional(),
  magFirst: z.number().int().min(1).optional(),
  maxTokens: z.number().int().positive().optional(),
  temperature: z.number().nonnegative().optional(),
  topP: z.number().gt(0).lte(1).optional(),
  topK: z.number().int().nonnegative().optional(),
  seed: z.number().int({ error: 'seed must be an integer of at most 53 bits' }).optional(),
  minP: z.number().min(0).max(1).optional(),
  stop: z.array(z.string().min(1)).max(4).optional(),
  repetitionPenalty: z.number().gt(0).optional(),
  presencePenalty: z.number().min(-2).max(2).optional(),
  frequencyPenalty: z.number().min(-2).max(2).optional(),
  logitBias: z.record(z.string().regex(/^\d+$/), z.number().min(-100).max(100)).optional(),
  models: z.string().optional(),
  model: z.string().optional(),
  draftModel: z.array(z.string()).optional(),
  eagleModel: z.string().optional(),
  selfDraft: z.enum(SELF_DRAFTS).optional(),
  selfDraftCache: z.string().optional(),
  modelFile: z.string().optional(),
  tokenizer: z.string().optional(),
  threads: z.number().int().positive().optional(),
  executionProviders: z.union([z.tuple([z.literal('auto')]), z.array(z.enum(EXECUTION_PROVIDERS)).min(1)]).optional(),
  draftExecutionProviders: z.union([z.tuple([z.literal('auto')]), z.array(z.enum(EXECUTION_PROVIDERS)).min(1)]).optional(),
  placement: z.array(z.string()).optional(),
  kvLocation: z.enum(KV_LOCATIONS).optional(),
  batchInvariant: z.enum(BATCH_INVARIANCE as [BatchInvariance, ...BatchInvariance[]]).optional(),
  kvPolicy: z.enum(RUNNABLE_KV_POLICIES as [KvPolicyName, ...KvPolicyName[]]).optional(),
  kvBudget: z.number().int().positive().optional(),
  kvSinks: z.number().int().nonnegative().optional(),
  kvRecent: z.number().int().nonnegative().optional(),
  kvRebuild: z.number().int().nonnegative().optional(),
  kvPrefillChunk: z.number().int().positive().optional(),
  kvReleaseBatch: z.number().int().positive().optional(),
  kvPlacement: z.enum(KV_PLACEMENTS).optional(),
});

/** The bounded-cache settings of --kv-*, or undefined for the full cache. */
function kvConfig(o: GenerateOptions, family: Family): KvPolicyConfig | undefined {
  if (o.kvPolicy === 'full') return undefined;
  if (o.kvBudget === undefined) throw new InvalidArgumentError(`--kv-policy ${o.kvPolicy} needs --kv-budget (tokens kept in the cache)`);
  if (o.kvPlacement === 'target' && o.mode !== 'ar') {
    throw new InvalidArgumentError(`--kv-placement target runs with --mode ar (a bounded target cache is lossy); bound the drafters or add a self-draft level to keep a cascade exact`);
  }
  if (o.kvPlacement === 'drafters' && o.mode !== 'sd' && o.mode !== 'csd' && !o.drafters) {
    throw new InvalidArgumentError(`--kv-placement drafters needs neural drafters (--mode sd or csd)`);
  }
  const sinks = o.kvSinks ?? (o.kvPolicy === 'streaming' ? 4 : 0);
  if (o.kvPolicy === 'window' && sinks > 0) throw new InvalidArgumentError('--kv-policy window keeps no sink tokens: use streaming for sinks');
  const rebuild = o.kvRebuild ?? (o.kvPolicy === 'adore' ? 2 : 0);
  const controller = o.kvPolicy === 'adore' ? loadController(family) : undefined;
  return { policy: o.kvPolicy, budget: { budget: o.kvBudget, sinks, recent: o.kvRecent, rebuild }, controller, prefillChunk: o.kvPrefillChunk, releaseBatch: o.kvReleaseBatch };
}

function applyConfigFile(o: GenerateOptions, cmd: Command): GenerateOptions {
  if (!o.config) return o;
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(o.config, 'utf8'));
  } catch (cause) {
    throw new InvalidArgumentError(`cannot read --config ${o.config}: ${(cause as Error).message}`);
  }
  const parsed = ConfigFile.safeParse(raw ?? {});
  if (!parsed.success) throw new InvalidArgumentError(`--config ${o.config} is invalid: ${describeIssues(parsed.error, { known: Object.keys(ConfigFile.shape) })}`);
  const merged: Record<string, unknown> = { ...o };
  for (const [key, value] of Object.entries(parsed.data)) {
    if (cmd.getOptionValueSource(key) !== 'cli') merged[key] = value;
  }
  return merged as unknown as GenerateOptions;
}

/** The CLI's sampling defaults (greedy) for what neither the flags, --config nor the model's generation_config.json say. */
const CLI_SAMPLING = { temperature: 0, topP: 1, topK: 0 };

/** The prompt as text, or a chat for the model's chat template. */
function promptText(positional: string[], o: GenerateOptions): string | ChatMessage[] | { ids: number[] } {
  const sources = [positional.length > 0, o.prompt !== undefined, o.promptFile !== undefined, o.message !== undefined, o.chatFile !== undefined, o.promptIds !== undefined].filter(Boolean).length;
  if (o.promptIds !== undefined && sources === 1) return { ids: o.promptIds };
  if (sources !== 1) throw new InvalidArgumentError('give the prompt exactly one way: as an argument, with --prompt, --prompt-file, --message (repeatable) or --chat-file');
  if (o.message !== undefined) return o.message;
  if (o.chatFile !== undefined) return readChatFile(o.chatFile);
  if (o.promptFile !== undefined) {
    try {
      return readFileSync(o.promptFile, 'utf8');
    } catch (cause) {
      throw new InvalidArgumentError(`cannot read --prompt-file ${o.promptFile}`, { cause });
    }
  }
  return o.prompt ?? positional.join(' ');
}

async function run(positional: string[], flags: GenerateOptions, cmd: Command): Promise<void> {
  const o = applyConfigFile(flags, cmd);
  if (o.outcomeBranches && o.drafting !== 'async') throw new InvalidArgumentError(`--outcome-branches needs --drafting async (branches are drafted while the target verifies): add --drafting async, or leave --outcome-branches out`);
  if (o.levelBelow && o.drafting !== 'async') throw new InvalidArgumentError(`--level-below needs --drafting async (the level below drafts while the drafter and the target work): add --drafting async, or leave --level-below out`);
  const text = promptText(positional, o);
  const family = resolveModels({ models: o.models, model: o.model, draftModels: o.draftModel, modelFile: o.modelFile, tokenizer: o.tokenizer });
  // the family's feature drafter may be named among --drafters (it is in no mode's default); a
  // --self-draft copy goes above them, so with none named it is the only drafter
  if (o.eagleModel && family.eagle && o.drafters?.includes(family.eagle)) {
    throw new InvalidArgumentError(`--eagle-model puts its feature drafter first itself: name only the drafters below it (e.g. --drafters mag), or drop --eagle-model to draft with the family's (--drafters ${family.eagle},mag)`);
  }
  // --mode ar is target-only decoding, the reference every cascade is compared with: a level added above it would make it a cascade under ar's name
  const added = [...(o.selfDraft ? ['--self-draft'] : []), ...(o.eagleModel ? ['--eagle-model'] : [])];
  if (o.mode === 'ar' && added.length) {
    throw new InvalidArgumentError(`--mode ar is target-only decoding: ${added.join(' and ')} would add a drafter to it; use --mode sd, mag or csd (the added level drafts above the mode's drafters), or leave ${added.length === 1 ? 'it' : 'them'} out`);
  }
  let plan = planCascade({ mode: o.mode, drafters: o.drafters, kMatrix: o.kMatrix, lenience: o.lenience, levelsAbove: added.length }, family.drafters, family.eagle ? [family.eagle] : []);
  const placed = placementOf(o, family);
  const sessions = new FamilySessions(
    family,
    (name) => ({
      intraOpThreads: o.threads,
      executionProviders: placed(name),
      // --kv-location and --batch-invariant are the target's; a drafter's KV goes where its EP computes (auto)
      kvLocation: name === family.target ? o.kvLocation : 'auto',
      ...(name === family.target ? { batchInvariant: o.batchInvariant } : {}),
    }),
    (name, t) => process.stderr.write(`${describeTrial(name, t)}\n`),
  );
  let eagle: OrtModelSession | undefined;
  let selfDraft: OrtModelSession | undefined;
  try {
    const target = await sessions.get(family.target);
    const kv = kvConfig(o, family);
    if (kv && o.kvPlacement === 'target' && o.drafting === 'async') throw new InvalidArgumentError('--drafting async drafts for a cascade: a bounded target cache (--kv-placement target) runs target-only decoding');
    if (kv && o.kvPlacement === 'target' && o.magFirst) throw new InvalidArgumentError('--mag-first chooses who drafts a cascade round: a bounded target cache (--kv-placement target) runs target-only decoding');
    const drafterKv = kv && o.kvPlacement === 'drafters' ? kv : undefined;
    const drafters: DrafterSpec[] = [];
    for (const d of plan.drafters) {
      const kind = drafterKind(family, d);
      if (kind === 'mag') drafters.push({ kind, tables: loadMagTables(family, target.spec.vocabSize), occurrence: o.magOccurrence });
      else if (kind === 'eagle') drafters.push({ kind, session: await sessions.get(d) });
      else drafters.push({ kind, session: await sessions.get(d), kv: drafterKv });
    }
    checkSharedVocabulary(target.spec, drafters.flatMap((d) => (d.kind === 'model' ? [d.session.spec] : [])));
    if (kv && o.kvPlacement === 'self-draft') {
      // The target's own weights over a bounded cache draft for the full-cache target (TriForce's idea).
      drafters.unshift({ kind: 'model', session: target, kv });
      plan = { ...plan, drafters: ['self', ...plan.drafters], kMatrix: o.kMatrix ?? 'auto' };
    }
    if (o.selfDraft) {
      if (o.kvPlacement === 'self-draft' && kv) throw new InvalidArgumentError('--self-draft and --kv-placement self-draft both add a self-draft level: choose one');
      const copy = await selfDraftCopy(family, o.selfDraft, o.selfDraftCache, (m) => process.stderr.write(`${m}\n`));
      selfDraft = await OrtModelSession.open(copy, { intraOpThreads: o.threads, executionProviders: placed(family.target), batchInvariant: 'off' });
      checkSharedVocabulary(target.spec, [selfDraft.spec]);
      drafters.unshift({ kind: 'model', session: selfDraft });
      plan = { ...plan, drafters: [selfDraft.spec.name, ...plan.drafters], kMatrix: o.kMatrix ?? 'auto' };
    }
    if (o.eagleModel) {
      // the feature drafter goes first, right below the target whose hidden_states it reads
      eagle = await OrtModelSession.open(o.eagleModel, { intraOpThreads: o.threads, executionProviders: placed(family.drafters[0] ?? family.target), batchInvariant: 'off' }).catch((err: unknown) => {
        throw err instanceof ModelLoadError ? new ModelLoadError(`--eagle-model: ${err.message}`) : err;
      });
      drafters.unshift({ kind: 'eagle', session: eagle });
      plan = { ...plan, drafters: [eagle.spec.name, ...plan.drafters], kMatrix: o.kMatrix ?? 'auto' };
    }
    const caveat = drafters.length ? speculationCaveat(target.spec, target) : undefined;
    if (caveat) process.stderr.write(`warning: ${caveat}\n`);
    const tok = TextTokenizer.forModel(target.spec);
    const stream = tok.stream();
    const promptIds = typeof text === 'string' ? tok.encodePrompt(text) : 'ids' in text ? text.ids : tok.encodeChat(text);
    const sampling = withProcessors(resolveSampling({ temperature: o.temperature, topP: o.topP, topK: o.topK }, target.spec.generation, CLI_SAMPLING), {
      minP: o.minP,
      repetitionPenalty: o.repetitionPenalty,
      presencePenalty: o.presencePenalty,
      frequencyPenalty: o.frequencyPenalty,
      logitBias: o.logitBias,
    });
    const badId = promptIds.find((id) => id >= target.spec.vocabSize);
    if (badId !== undefined) throw new InvalidArgumentError(`the prompt holds token id ${badId}, outside the vocabulary of ${target.spec.vocabSize} tokens`);
    const outside = Object.keys(o.logitBias ?? {}).find((id) => Number(id) >= target.spec.vocabSize);
    if (outside !== undefined) throw new InvalidArgumentError(`--logit-bias names token id ${outside}, outside the vocabulary of ${target.spec.vocabSize} tokens`);
    const req = { promptIds, maxTokens: o.maxTokens, sampling, seed: o.seed, verification: o.verification, kv: o.kvPlacement === 'target' ? kv : undefined };
    // --stop: the text ends before the first stop string (held back while it could begin one), the
    // tokens at the one that completed it, and generation stops at the next round
    const stops = o.stop?.length ? new StopMatcher(o.stop) : undefined;
    let kept = Infinity;
    let seen = 0;
    let stopText = '';
    const onTokens = (ids: readonly number[]) => {
      if (!stops) {
        if (!o.json) writeOut(stream.push(ids));
        return;
      }
      for (const id of ids) {
        if (stops.stopped) break;
        seen++;
        const piece = stops.push(stream.push([id]));
        stopText += piece;
        if (!o.json) writeOut(piece);
        if (stops.stopped) kept = seen;
      }
    };
    const control = { cancelled: () => stops?.stopped ?? false, outcomeBranches: o.outcomeBranches === true, levelBelow: o.levelBelow === true };
    const ran: CascadeResult | GenerateResult = kv && o.kvPlacement === 'target'
      ? await generateAutoregressive(target, req, onTokens, control)
      : await generateCascade(target, { drafters, kMatrix: plan.kMatrix, lenience: plan.lenience, drafting: o.drafting, magFirst: o.magFirst }, req, onTokens, control);
    const result = stops?.stopped ? { ...ran, tokenIds: ran.tokenIds.slice(0, kept), finishReason: 'stop' as const } : ran;
    const finalText = (): string => (stops?.stopped ? stopText : tok.decode(result.tokenIds));
    const tail = (): string => (stops ? (stops.stopped ? '' : stops.push(stream.flush()) + stops.flush()) : stream.flush());
    if (!isCascade(result)) {
      const s = result.stats;
      if (o.json) writeOut(JSON.stringify({ text: finalText(), tokenIds: result.tokenIds, finishReason: result.finishReason, model: target.spec.name, stats: s }) + '\n');
      else {
        writeOut(tail() + '\n');
        process.stderr.write(
          `[ar: ${target.spec.name}, KV ${s.kv?.policy} budget ${s.kv?.budget} (lossy)] ${s.promptTokens} prompt tokens, ${s.generatedTokens} generated in ${s.seconds.toFixed(2)} s ` +
            `(${s.tokensPerSecond.toFixed(1)} tokens/s, at most ${s.kv?.peakResident} tokens cached, ${s.kv?.releases} released, ${s.kv?.rebuilds} rebuilt, finish: ${result.finishReason})\n`,
        );
      }
      return;
    }
    const s = result.stats;
    // where auto put the target's KV (host, host-buffer, device): the runner's choice, not the flag
    const kvWhere = 'kvLocation' in target && typeof target.kvLocation === 'string' ? target.kvLocation : undefined;
    const where = [...(kvWhere ? [`KV ${kvWhere}`] : []), ...(target.batchInvariant ? ['batch-invariant'] : [])].join(', ');
    // async drafting runs the first neural drafter ahead with MaG (and, with --level-below, the second) below it; the others stay unused (runDrafting)
    const ahead = plan.drafters.find((d) => d !== 'mag');
    const under = o.levelBelow ? plan.drafters.find((d) => d !== 'mag' && d !== ahead) : undefined;
    const used = o.drafting === 'async' ? [...(ahead ? [ahead] : []), ...(under ? [under] : []), ...(plan.drafters.includes('mag') ? ['mag'] : [])] : plan.drafters;
    if (o.json) {
      const acceptanceByPosition = s.draftedByPosition.map((d, i) => s.acceptedByPosition[i]! / d);
      const out = {
        text: finalText(),
        tokenIds: result.tokenIds,
        finishReason: result.finishReason,
        model: target.spec.name,
        cascade: { mode: o.mode, ...plan, drafters: used, verification: o.verification, drafting: o.drafting, ...(o.drafting === 'async' ? { outcomeBranches: o.outcomeBranches === true, levelBelow: under !== undefined } : {}) },
        stats: { ...s, acceptanceByPosition },
        ...(kvWhere ? { kvLocation: kvWhere } : {}),
        ...(target.batchInvariant !== undefined ? { batchInvariant: target.batchInvariant } : {}),
        ...(target.paddedAttention ? { paddedAttention: true } : {}),
        ...(sessions.placements.size ? { placement: Object.fromEntries(sessions.placements) } : {}),
      };
      writeOut(JSON.stringify(out) + '\n');
    } else {
      writeOut(tail() + '\n');
      const asyncLevels = used.map((d) => (d === ahead ? `${d} ahead` : d === under ? `${d} below it` : d));
      const drafting = 'drafting' in s && s.drafting ? `, ${s.drafting.wastedDrafts} drafts wasted, pre-draft hit rate ${s.drafting.preDraftHitRate.toFixed(2)}${s.drafting.outcomeDrafts ? `, ${s.drafting.outcomeDrafts} tokens drafted on outcome branches, ${s.drafting.outcomeHits} branch${s.drafting.outcomeHits === 1 ? '' : 'es'} adopted` : ''}${s.drafting.pipelinedDrafts ? `, the drafter accepted ${s.drafting.pipelinedAccepted} of ${s.drafting.pipelinedDrafts} drafts from below${under ? ` (${s.drafting.belowAccepted} of ${s.drafting.belowDrafts} ${under}'s)` : ' (MaG\'s)'}` : ''}${s.drafting.drafterPausedPasses ? `, drafter paused for ${s.drafting.drafterPausedPasses} target passes` : ''}` : '';
      const cascade = !plan.drafters.length ? 'target only' : o.drafting === 'async' ? `[${asyncLevels.join(', ')}] async` : `[${plan.drafters.join(', ')}] K=${JSON.stringify(plan.kMatrix)}${o.magFirst ? `, MaG first from ${o.magFirst} token${o.magFirst === 1 ? '' : 's'}` : ''}`;
      process.stderr.write(
        `[${o.mode}: ${target.spec.name}${where ? ` (${where})` : ''} <- ${cascade}] ${s.promptTokens} prompt tokens, ${s.generatedTokens} generated in ${s.seconds.toFixed(2)} s ` +
          `(${s.tokensPerSecond.toFixed(1)} tokens/s, first token ${(s.firstTokenSeconds * 1000).toFixed(0)} ms, ${s.rounds} target pass${s.rounds === 1 ? '' : 'es'}, ` +
          `${s.meanAcceptanceLength.toFixed(2)} tokens per pass${drafting}, finish: ${result.finishReason})\n`,
      );
    }
  } finally {
    await Promise.all([sessions.close(), eagle?.close(), selfDraft?.close()]);
  }
}

/**
 * Each model's execution providers: --placement MODEL=EPS first, then --execution-providers (the
 * target) or --draft-execution-providers (drafters). Unpinned drafters beside a target off the CPU
 * are placed by measured cost (auto); beside a CPU target they stay on the CPU.
 */
function placementOf(o: GenerateOptions, family: { readonly target: string; readonly drafters: readonly string[] }): (name: string) => string[] {
  const pinned = new Map<string, string[]>();
  for (const entry of o.placement ?? []) {
    const at = entry.indexOf('=');
    const name = entry.slice(0, at);
    if (at < 1 || ![family.target, ...family.drafters].includes(name)) {
      throw new InvalidArgumentError(`--placement takes MODEL=EPS for a model of this cascade (${[family.target, ...family.drafters].join(', ')}), e.g. ${family.drafters[0] ?? family.target}=cpu; got "${entry}"`);
    }
    pinned.set(name, parseExecutionProviders('--placement')(entry.slice(at + 1)));
  }
  const target = pinned.get(family.target) ?? o.executionProviders ?? ['cpu'];
  const drafters = o.draftExecutionProviders ?? draftProvidersBeside(target);
  return (name) => pinned.get(name) ?? (name === family.target ? target : drafters);
}

const parsePromptIds = (raw: string): number[] => {
  // decimal digits only: Number() would take '' as 0 and '0x10', '1e3' or '+5' as ids
  const ids = raw.split(',').map((s) => (/^\d+$/.test(s.trim()) ? Number(s.trim()) : NaN));
  if (ids.some((id) => !Number.isSafeInteger(id) || id < 0)) throw new InvalidArgumentError(`--prompt-ids must be comma-separated non-negative token ids, got "${raw}"`);
  return ids;
};

/** Commander's collector for a repeatable flag. */
const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

const collectStop = (value: string, previous: string[] | undefined): string[] => {
  if (value === '') throw new InvalidArgumentError('--stop takes a non-empty string');
  const all = collect(value, previous);
  if (all.length > 4) throw new InvalidArgumentError('--stop takes at most 4 stop strings');
  return all;
};

const parseMode = (raw: string): Mode => {
  if (!(MODES as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--mode must be one of ${MODES.join(', ')}, got "${raw}"`);
  return raw as Mode;
};

const isCascade = (r: CascadeResult | GenerateResult): r is CascadeResult => 'rounds' in r.stats;

const parseKvPolicy = (raw: string): KvPolicyName => {
  if (!(RUNNABLE_KV_POLICIES as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--kv-policy must be one of ${RUNNABLE_KV_POLICIES.join(', ')}, got "${raw}"`);
  return raw as KvPolicyName;
};

const parsePlacement = (raw: string): KvPlacement => {
  if (!(KV_PLACEMENTS as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--kv-placement must be one of ${KV_PLACEMENTS.join(', ')}, got "${raw}"`);
  return raw as KvPlacement;
};

const parseOccurrence = (raw: string): 'earliest' | 'recent' => {
  if (raw !== 'earliest' && raw !== 'recent') throw new InvalidArgumentError(`--mag-occurrence must be earliest or recent, got "${raw}"`);
  return raw;
};

const parseDrafters = (raw: string): string[] => {
  const list = raw.split(',').map((s) => s.trim());
  if (list.some((s) => !s)) throw new InvalidArgumentError(`--drafters must be a comma-separated list of names, got "${raw}"`);
  return list;
};

export function registerGenerate(program: Command): void {
  program
    .command('generate')
    .description('generate text with the bundled model family, embedded (no servers)')
    .argument('[prompt...]', 'prompt text (or use --prompt / --prompt-file)')
    .option('--prompt <text>', 'prompt text')
    .option('--prompt-file <file>', 'read the prompt from a file')
    .option('--prompt-ids <list>', 'the prompt as comma-separated token ids, fed as they are (no BOS added)', parsePromptIds)
    .option('--message <role=text>', "a chat message (repeatable, in order), rendered with the model's chat template", collectMessage)
    .option('--chat-file <file>', "a JSON array of {role, content} messages, rendered with the model's chat template")
    .option('--max-tokens <n>', 'most tokens to generate', parseNumber('--max-tokens', { min: 1, integer: true }), 128)
    .option('--temperature <t>', "sampling temperature; 0 = greedy (default: the model's generation_config.json, else 0)", parseNumber('--temperature', { min: 0 }))
    .option('--top-p <p>', "nucleus sampling mass in (0, 1] (default: the model's generation_config.json, else 1)", parseNumber('--top-p', { min: 0 }))
    .option('--top-k <k>', "keep the k most likely tokens; 0 = off (default: the model's generation_config.json, else 0)", parseNumber('--top-k', { min: 0, integer: true }))
    .option('--min-p <p>', 'drop tokens below p times the most likely one (0 = off)', parseNumber('--min-p', { min: 0 }))
    .option('--repetition-penalty <r>', 'divide the logits of tokens already in the prompt or output by r (1 = off; transformers and vLLM)', parseNumber('--repetition-penalty'))
    .option('--presence-penalty <v>', 'subtract v from the logit of every token already in the output (-2..2, 0 = off; OpenAI)', parseNumber('--presence-penalty'))
    .option('--frequency-penalty <v>', 'subtract v per occurrence in the output so far (-2..2, 0 = off; OpenAI)', parseNumber('--frequency-penalty'))
    .option('--logit-bias <json>', 'token id to logit bias, as OpenAI\'s logit_bias, e.g. \'{"13": -100}\'', parseLogitBias)
    .option('--stop <text>', 'a stop string (repeatable, up to 4): the output ends before the first one, finish reason stop, exactly where target-only decoding would stop', collectStop)
    .option('--seed <s>', 'random seed for sampling', parseNumber('--seed', { integer: true }), 0)
    .option('--mode <mode>', `decoding: ${MODES.join(' | ')} (target only, speculative with the largest drafter, MaG prompt lookup, full cascade)`, parseMode, 'csd')
    .option('--drafters <list>', 'cascade drafters, largest first, e.g. draft-l2,draft-l1,mag (overrides the mode)', parseDrafters)
    .option('--k-matrix <json|auto>', `K matrix, cumulative convention (docs/cascade.md), e.g. [[2,4,8],[0,2,6],[0,0,4]], or auto (the default): chosen each round from measured acceptance and costs; entries at most ${MAX_K}`, parseKMatrix)
    .option('--lenience <l>', 'lenience between drafters (>= 1; never applied at the target)', parseNumber('--lenience', { min: 1 }), 1)
    .option('--verification <rule>', VERIFICATION_HELP, parseVerificationFlag, DEFAULT_VERIFICATION)
    .option('--drafting <mode>', DRAFTING_HELP, parseDraftingFlag, DEFAULT_DRAFTING)
    .option('--outcome-branches', OUTCOME_BRANCHES_HELP)
    .option('--level-below', LEVEL_BELOW_HELP)
    .option('--mag-occurrence <which>', 'MaG copies from the earliest or the most recent earlier occurrence', parseOccurrence, 'earliest')
    .option('--mag-first <l>', 'MaG first: a round whose text already holds its last L tokens earlier is drafted by MaG alone (its copy, no fill); the drafters above MaG draft the others (serial drafting, MaG last below another drafter; off by default; with a trigram table L = 1 acts as 2)', parseNumber('--mag-first', { min: 1, integer: true }))
    .option('--config <file>', 'YAML or JSON file with any of: mode, drafters, kMatrix, lenience, verification, drafting, outcomeBranches, levelBelow, selfDraft, selfDraftCache, magOccurrence, magFirst, maxTokens, temperature, topP, topK, seed, models, model, draftModel, modelFile, tokenizer, threads, minP, stop, repetitionPenalty, presencePenalty, frequencyPenalty, logitBias, executionProviders, draftExecutionProviders, placement, kvLocation, batchInvariant, kvPolicy, kvPlacement, kvBudget, kvSinks, kvRecent, kvRebuild, kvPrefillChunk, kvReleaseBatch')
    .option('--kv-policy <policy>', `bound a KV cache (see --kv-placement): ${RUNNABLE_KV_POLICIES.join(' | ')}`, parseKvPolicy, 'full')
    .option('--kv-placement <where>', `where the bounded cache goes: ${KV_PLACEMENTS.join(' | ')} (only target is lossy)`, parsePlacement, 'target')
    .option('--kv-budget <m>', 'tokens the bounded cache keeps', parseNumber('--kv-budget', { min: 1, integer: true }))
    .option('--kv-sinks <n>', 'first tokens never released (streaming; default 4)', parseNumber('--kv-sinks', { min: 0, integer: true }))
    .option('--kv-recent <n>', 'newest tokens never released', parseNumber('--kv-recent', { min: 0, integer: true }), 0)
    .option('--kv-rebuild <r>', 'released tokens brought back per step when they matter again (adore; default 2)', parseNumber('--kv-rebuild', { min: 0, integer: true }))
    .option('--kv-prefill-chunk <n>', 'prompt tokens per pass under a bounded cache (default: half of budget - sinks - recent; smaller is closer to token-by-token, slower)', parseNumber('--kv-prefill-chunk', { min: 1, integer: true }))
    .option('--kv-release-batch <s>', 'tokens released at once when the bounded cache is full (default 1: one per step; larger compacts the cache once per s steps)', parseNumber('--kv-release-batch', { min: 1, integer: true }))
    .option('--models <dir>', 'model family directory (with family.json): the bundled default, and where --model NAME resolves', 'models')
    .option('--model <dir|name>', 'the target: a model folder (a Hugging Face ONNX export, or a family folder with family.json) or a member of the --models family (default: the family target)')
    .option('--draft-model <dir|name>', 'a drafter, repeatable, largest first: a model folder or a member of the --models family (default: the family\'s drafters; none with an exported --model)', collect)
    .option('--self-draft <width>', `${SELF_DRAFT_HELP}; above the mode's drafters`, parseSelfDraft)
    .option('--self-draft-cache <dir>', SELF_DRAFT_CACHE_HELP, SELF_DRAFT_CACHE)
    .option('--eagle-model <dir>', 'a feature drafter (EAGLE, e.g. models/eagle) as the first drafter, above the mode\'s: it drafts from the target\'s hidden_states, which the target\'s graph must output (tools/train/add_hidden_output.py)')
    .option('--model-file <name>', 'the target\'s ONNX graph inside its folder when it holds several, e.g. onnx/model_fp16.onnx (default: found from the folder)')
    .option('--tokenizer <file>', 'tokenizer.json for models whose folders carry none (a folder\'s own tokenizer.json wins)')
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--execution-providers <list>', `the target's execution providers in order, e.g. webgpu (${EXECUTION_PROVIDERS.join(', ')}; default cpu), or auto: where its verify pass measures cheapest (webgpu, cpu)`, parseExecutionProviders('--execution-providers'))
    .option('--draft-execution-providers <list>', 'every drafter\'s execution providers, or auto: where its decode pass measures cheapest (default: auto beside a target off the CPU, else cpu)', parseExecutionProviders('--draft-execution-providers'))
    .option('--placement <model=eps>', 'one model\'s execution providers (a list or auto), repeatable; wins over the two flags above, e.g. --placement draft-l2=webgpu --placement draft-l1=cpu', collect)
    .option('--kv-location <where>', `where the target's KV cache lives between passes: ${KV_LOCATIONS.join(' | ')} (auto: on the device when it runs on a GPU EP; drafters are always auto)`, parseKvLocation, 'auto')
    .option('--batch-invariant <mode>', `whether a token's logits from the target stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP}; drafters never pad (off: their drafts are reviewed)`, parseBatchInvariant, 'auto')
    .option('--json', 'print one JSON object {text, tokenIds, finishReason, model, cascade, stats} instead of streaming')
    .action((positional: string[], _opts: GenerateOptions, cmd: Command) => run(positional, cmd.opts<GenerateOptions>(), cmd));
}
