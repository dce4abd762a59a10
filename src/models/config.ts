import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { readJsonFile } from './json-file.ts';
import { ModelLoadError } from '../errors.ts';
import { findGraph, findTokenizer, locationOf, modelName, type ModelSource } from './model-dir.ts';
import { loadGenerationConfig, type GenerationDefaults } from './generation-config.ts';
import { graphQuantization } from './graph-ops.ts';

/**
 * What the runtime needs to know about a model directory (SPEC §3): the ONNX graph, the tokenizer and
 * the KV geometry. Read from `config.json` in the Hugging Face layout, accepting the common aliases
 * (`n_layer`, `n_head`, …) so that exported Llama, Qwen or GPT-2 directories load unchanged.
 */
export interface ModelSpec {
  /** Directory name, used in logs and stats. */
  readonly name: string;
  readonly dir: string;
  readonly onnxPath: string;
  readonly tokenizerPath: string;
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  /**
   * Token ids that end generation: `generation_config.json`'s `eos_token_id` (an id or a list) when the
   * directory has one that gives it, else `config.json`'s, as transformers and vLLM decide.
   */
  readonly eosIds: readonly number[];
  /** The beginning-of-sequence id: `generation_config.json`'s `bos_token_id`, else `config.json`'s, if either says. */
  readonly bosId?: number;
  /**
   * The model's sampling defaults from `generation_config.json` (temperature, top_p, top_k,
   * do_sample false = greedy); callers apply them under the request's own settings (resolveSampling).
   */
  readonly generation?: GenerationDefaults;
  /** Longest position the model was trained for, when the config says. */
  readonly maxPositions: number | undefined;
  /**
   * The graph's feature tensors (EAGLE, Li et al. ICML 2024), known once a runner has loaded it
   * (OrtModelSession); undefined = none.
   */
  readonly features?: FeatureSpec;
  /**
   * A reduced-vocabulary head (FR-Spec; config.json `draft_vocab`): logits index i is token id
   * draftVocab[i], so a logits row has draftVocab.length entries, not vocabSize.
   */
  readonly draftVocab?: readonly number[];
  /**
   * Quantization written by `cascade quantize` (config.json `quantization`): its width and
   * MatMulNBits accuracy_level (0 for the w8a8 scheme, which has no MatMulNBits), and `scheme` w8a8
   * for int8 weights and activations (`--scheme w8a8`); undefined for a float model.
   */
  readonly quantization?: { readonly bits: number; readonly accuracyLevel: number; readonly scheme?: 'w8a8' };
}

/**
 * A model's weight-only quantization: config.json's record (`cascade quantize`), else the graph's own
 * MatMulNBits attributes (graphQuantization: another tool's export, onnxruntime-genai's included);
 * undefined for a float model or a graph that cannot be read.
 */
export function modelQuantization(spec: ModelSpec): ModelSpec['quantization'] {
  return spec.quantization ?? graphQuantizationOrNone(spec.onnxPath);
}

/**
 * Why a target's speculative output may differ from its own target-only decoding, or undefined.
 * A MatMulNBits model at accuracy_level 4 lets ONNX Runtime's CPU EP quantize activations to int8,
 * and its kernel for one row (a decode step) and for several (a verify pass) round differently, on
 * some inputs by 1e-1 in the logits (docs/quantization.md); levels 2 and 3 (16-bit compute) are
 * warned about too, unmeasured. Levels 0 and 1 compute in float32 and agree within 2e-5, as float
 * graphs do (tools/bench/verify-drift.ts), and so does the WebGPU EP, which computes MatMulNBits in
 * float. A w8a8 model (`cascade quantize --scheme w8a8`) has one too: a 1e-5 difference in its float
 * attention can move an int8 activation by a rounding step. A session that runs batch-invariant
 * (one-token passes as two rows, SessionOptions.batchInvariant) never takes the one-row kernels, so
 * it has no caveat.
 */
export function speculationCaveat(spec: ModelSpec, run: { readonly provider: string; readonly batchInvariant?: boolean }): string | undefined {
  const q = modelQuantization(spec);
  if (!q || run.batchInvariant || run.provider.split(',')[0] !== 'cpu') return undefined;
  if (q.scheme === 'w8a8') {
    return (
      `${spec.name} is a w8a8 model (int8 weights and activations) run on the CPU EP with --batch-invariant off: its float attention scores a token in a verify pass about 1e-5 away from a decode step, ` +
      `which can move an activation across an int8 rounding step, so speculation over it may leave its own target-only output; leave --batch-invariant at auto or on for exact speculation (docs/quantization.md)`
    );
  }
  if (q.accuracyLevel <= 1) return undefined;
  return (
    `${spec.name} is a MatMulNBits model (${q.bits}-bit weights) at accuracy_level ${q.accuracyLevel} run on the CPU EP with --batch-invariant off: ONNX Runtime's CPU kernels score a token in a verify pass differently ` +
    `from a decode step (up to 1e-1 in the logits), so speculation over it may leave its own target-only output; leave --batch-invariant at auto or on for exact speculation (docs/quantization.md)`
  );
}

/** graphQuantization, or undefined for a graph it cannot read (a warning never stops a model from loading). */
function graphQuantizationOrNone(path: string): ReturnType<typeof graphQuantization> {
  try {
    return existsSync(path) ? graphQuantization(path) : undefined;
  } catch {
    return undefined;
  }
}

/** The feature inputs and outputs of a graph (ModelSpec.features). */
export interface FeatureSpec {
  /** Width of one feature row: the graph's hidden size. */
  readonly size: number;
  /**
   * The output holding one float32 feature row per new token, if any: `hidden_states` (a target's
   * last hidden state after its final norm, added by tools/train/add_hidden_output.py) or
   * `next_hidden_states` (a feature drafter's predicted next features).
   */
  readonly output?: 'hidden_states' | 'next_hidden_states';
  /** Whether the graph takes a float32 `hidden_states` input [b, s, size] beside input_ids (a feature drafter). */
  readonly input: boolean;
}

/** Entries of one logits row of a model: its reduced head's (draftVocab), else its vocabulary. */
export const logitsWidth = (spec: ModelSpec): number => spec.draftVocab?.length ?? spec.vocabSize;

const positiveInt = z.number().int().positive();
const ConfigJson = z
  .object({
    num_hidden_layers: positiveInt.optional(),
    n_layer: positiveInt.optional(),
    num_attention_heads: positiveInt.optional(),
    n_head: positiveInt.optional(),
    num_key_value_heads: positiveInt.optional(),
    hidden_size: positiveInt.optional(),
    n_embd: positiveInt.optional(),
    head_dim: positiveInt.optional(),
    vocab_size: positiveInt,
    // optional (or null): some exports keep it in generation_config.json only, or have none
    eos_token_id: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish(),
    /** Read when it is one id; anything else leaves the BOS to generation_config.json and the tokenizer. */
    bos_token_id: z.number().int().nonnegative().nullable().optional().catch(undefined),
    max_position_embeddings: positiveInt.optional(),
    n_positions: positiveInt.optional(),
    draft_vocab: z.array(z.number().int().nonnegative()).nonempty().optional(),
    /** Written by cascade quantize; anything else in it is left alone. */
    quantization: z
      .object({ bits: z.number().int(), accuracy_level: z.number().int().optional(), method: z.string().optional() })
      .loose()
      .refine((q) => q.accuracy_level !== undefined || q.method === 'w8a8')
      .optional()
      .catch(undefined),
  })
  .loose();

/**
 * Reads and validates a model directory (a path, or a ModelLocation naming its graph and tokenizer;
 * model-dir.ts finds them in the layouts users export); throws ModelLoadError naming exactly what is wrong.
 */
export function loadModelSpec(source: ModelSource): ModelSpec {
  const location = locationOf(source);
  const abs = resolve(location.dir);
  if (!existsSync(abs)) throw new ModelLoadError(`model directory ${abs} does not exist`);
  if (!statSync(abs).isDirectory()) {
    throw new ModelLoadError(`${abs} is a file, not a model directory: name the folder that holds the graph, config.json and tokenizer.json (${dirname(abs)})`);
  }
  if (!existsSync(join(abs, 'config.json'))) {
    throw new ModelLoadError(`model directory ${abs} has no config.json (a model directory holds an ONNX graph, config.json and tokenizer.json)`);
  }
  const onnxPath = findGraph(abs, location.modelFile);
  const tokenizerPath = findTokenizer(abs, location.tokenizer);
  const parsed = ConfigJson.safeParse(readJsonFile(join(abs, 'config.json')));
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ModelLoadError(`${join(abs, 'config.json')} is malformed: ${issues}`);
  }
  const c = parsed.data;
  const layers = c.num_hidden_layers ?? c.n_layer;
  const heads = c.num_attention_heads ?? c.n_head;
  const hidden = c.hidden_size ?? c.n_embd;
  const headDim = c.head_dim ?? (hidden && heads ? hidden / heads : undefined);
  if (!layers || !heads || !headDim || !Number.isInteger(headDim)) {
    throw new ModelLoadError(
      `${join(abs, 'config.json')} must give num_hidden_layers, num_attention_heads and head_dim (or hidden_size divisible by the heads)`,
    );
  }
  const generation = loadGenerationConfig(abs);
  const bosId = generation?.bosId ?? c.bos_token_id ?? undefined;
  const eosIds = generation?.eosIds ?? (c.eos_token_id === undefined || c.eos_token_id === null ? [] : Array.isArray(c.eos_token_id) ? c.eos_token_id : [c.eos_token_id]);
  // an end-of-sequence id outside the vocabulary is never drawn: refused when no other could end generation
  // (bos_token_id is not checked: the tokenizer takes its BOS from tokenizer_config.json, and this field is unread)
  if (eosIds.length && eosIds.every((id) => id >= c.vocab_size)) {
    const file = join(abs, generation?.eosIds !== undefined ? 'generation_config.json' : 'config.json');
    throw new ModelLoadError(`${file}: eos_token_id ${eosIds.join(', ')} is outside the vocabulary of ${c.vocab_size} tokens, so generation would never end on it`);
  }
  return {
    name: location.name ?? modelName(abs),
    dir: abs,
    onnxPath,
    tokenizerPath,
    layers,
    kvHeads: c.num_key_value_heads ?? heads,
    headDim,
    vocabSize: c.vocab_size,
    eosIds,
    ...(bosId === undefined ? {} : { bosId }),
    ...(generation && Object.keys(generation.defaults).length ? { generation: generation.defaults } : {}),
    maxPositions: c.max_position_embeddings ?? c.n_positions,
    ...(c.draft_vocab ? { draftVocab: checkDraftVocab(c.draft_vocab, c.vocab_size, join(abs, 'config.json')) } : {}),
    ...(c.quantization
      ? { quantization: { bits: c.quantization.bits, accuracyLevel: c.quantization.accuracy_level ?? 0, ...(c.quantization.method === 'w8a8' ? { scheme: 'w8a8' as const } : {}) } }
      : {}),
  };
}

/** A reduced head's token ids: distinct ids of the vocabulary (ModelLoadError otherwise). */
function checkDraftVocab(ids: readonly number[], vocabSize: number, file: string): readonly number[] {
  const bad = ids.find((id) => id >= vocabSize);
  if (bad !== undefined) throw new ModelLoadError(`${file}: draft_vocab holds token id ${bad}, outside the vocabulary of ${vocabSize}`);
  if (new Set(ids).size !== ids.length) throw new ModelLoadError(`${file}: draft_vocab repeats token ids (each logits index maps to a distinct token)`);
  return ids;
}
