import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { readJsonFile } from './json-file.ts';
import { ModelLoadError } from '../errors.ts';
import type { SamplingParams } from '../kernels/sampling.ts';

/**
 * A model's own sampling defaults, from its `generation_config.json`: only the settings the file
 * states (as vLLM reads it), so a field left out leaves the caller's default in place.
 * `do_sample: false` states "greedy": `temperature` 0, whatever temperature the file also gives
 * (transformers ignores temperature, top_p and top_k when it does not sample).
 */
export interface GenerationDefaults {
  readonly temperature?: number;
  readonly topP?: number;
  readonly topK?: number;
  readonly minP?: number;
  /** transformers' `repetition_penalty` (as vLLM takes it from the file). */
  readonly repetitionPenalty?: number;
}

/** What a model directory's `generation_config.json` decides; every field is optional. */
export interface GenerationConfig {
  /** Token ids that end generation; they replace config.json's `eos_token_id` when given. */
  readonly eosIds?: readonly number[];
  readonly bosId?: number;
  readonly defaults: GenerationDefaults;
}

const tokenId = z.number().int().nonnegative();
const GenerationConfigJson = z
  .object({
    eos_token_id: z.union([tokenId, z.array(tokenId).min(1)]).nullable().optional(),
    bos_token_id: tokenId.nullable().optional(),
    do_sample: z.boolean().nullable().optional(),
    temperature: z.number().nonnegative().nullable().optional(),
    top_p: z.number().gt(0).lte(1).nullable().optional(),
    top_k: z.number().int().nonnegative().nullable().optional(),
    min_p: z.number().min(0).max(1).nullable().optional(),
    repetition_penalty: z.number().gt(0).nullable().optional(),
  })
  .loose();

/** Names every zod issue by its field, e.g. `eos_token_id: Invalid input`. */
export const describeIssues = (error: z.ZodError): string => error.issues.map((i) => `field ${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');

/** Reads `generation_config.json` when the directory has one; throws ModelLoadError naming the file and field. */
export function loadGenerationConfig(dir: string): GenerationConfig | undefined {
  const path = join(dir, 'generation_config.json');
  if (!existsSync(path)) return undefined;
  const parsed = GenerationConfigJson.safeParse(readJsonFile(path));
  if (!parsed.success) throw new ModelLoadError(`${path} is malformed: ${describeIssues(parsed.error)}`);
  const g = parsed.data;
  const eos = g.eos_token_id ?? undefined;
  const greedy = g.do_sample === false;
  const defaults: { -readonly [K in keyof GenerationDefaults]: GenerationDefaults[K] } = {};
  if (greedy) defaults.temperature = 0;
  else if (g.temperature != null) defaults.temperature = g.temperature;
  if (g.top_p != null) defaults.topP = g.top_p;
  if (g.top_k != null) defaults.topK = g.top_k;
  if (g.min_p != null) defaults.minP = g.min_p;
  if (g.repetition_penalty != null) defaults.repetitionPenalty = g.repetition_penalty;
  return {
    eosIds: eos === undefined ? undefined : Array.isArray(eos) ? eos : [eos],
    bosId: g.bos_token_id ?? undefined,
    defaults,
  };
}

/**
 * The sampling settings of a request, as vLLM applies a model's generation config: what the request
 * states wins, the model's defaults fill what it leaves out, and the caller's `fallback` (the API's or
 * the CLI's own defaults) fills the rest. min-p and the repetition penalty come from the request or
 * the model only (off when neither states them).
 */
export function resolveSampling(request: Partial<SamplingParams>, model: GenerationDefaults | undefined, fallback: SamplingParams): SamplingParams {
  const minP = request.minP ?? model?.minP;
  const repetitionPenalty = request.repetitionPenalty ?? model?.repetitionPenalty;
  return {
    temperature: request.temperature ?? model?.temperature ?? fallback.temperature,
    topP: request.topP ?? model?.topP ?? fallback.topP,
    topK: request.topK ?? model?.topK ?? fallback.topK,
    ...(minP !== undefined ? { minP } : {}),
    ...(repetitionPenalty !== undefined ? { repetitionPenalty } : {}),
  };
}
