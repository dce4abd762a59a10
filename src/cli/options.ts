import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { checkKBound, type KSchedule } from '../engine/presets.ts';
import { InvalidArgumentError } from '../errors.ts';
import { VERIFICATIONS, type Verification } from '../kernels/noise.ts';
import { DEFAULT_DRAFTING, DRAFTINGS, type Drafting } from '../engine/async-cascade.ts';
import { BATCH_INVARIANCE, type BatchInvariance } from '../models/session.ts';

/** Commander argument parsers that reject bad values with a message naming the flag. */
export const parseNumber = (flag: string, { min, max, integer = false }: { min?: number; max?: number; integer?: boolean } = {}) =>
  (raw: string): number => {
    const v = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v)) || (min !== undefined && v < min) || (max !== undefined && v > max)) {
      const kind = !integer ? 'a number' : max !== undefined ? 'an integer' : 'an integer (of at most 53 bits)';
      const range = min !== undefined && max !== undefined ? ` from ${min} to ${max}` : min !== undefined ? ` >= ${min}` : max !== undefined ? ` <= ${max}` : '';
      throw new InvalidArgumentError(`${flag} must be ${kind}${range}, got "${raw}"`);
    }
    return v;
  };

/**
 * A benchmark's --out directory, checked before anything is measured (the results are written at the
 * end): an existing path must be a writable directory; a new one, inside a writable directory.
 */
export const parseOutDir = (flag: string) =>
  (raw: string): string => {
    let at = resolve(raw);
    while (!existsSync(at) && dirname(at) !== at) at = dirname(at);
    if (!statSync(at).isDirectory()) throw new InvalidArgumentError(`${flag} ${raw}: ${at} is a file, not a directory`);
    try {
      accessSync(at, constants.W_OK);
    } catch {
      throw new InvalidArgumentError(`${flag} ${raw}: ${at} is not writable`);
    }
    return raw;
  };

/** A TCP port flag: `min` 0 lets the system pick a free port. */
export const parsePort = (flag: string, min: 0 | 1 = 0) => parseNumber(flag, { min, max: 65535, integer: true });

/** Execution providers onnxruntime-node may offer (its own names); the build decides which exist. */
export const EXECUTION_PROVIDERS = ['cpu', 'webgpu', 'cuda', 'tensorrt', 'dml', 'coreml', 'qnn', 'xnnpack'] as const;

/**
 * A comma-separated list of execution providers in order of preference, e.g. webgpu,cpu; or `auto`
 * alone: placed where a measured pass costs least (src/models/placement.ts).
 */
export const parseExecutionProviders = (flag: string) =>
  (raw: string): string[] => {
    const list = raw.split(',').map((p) => p.trim().toLowerCase());
    if (list.length === 1 && list[0] === 'auto') return list;
    const bad = list.find((p) => !(EXECUTION_PROVIDERS as readonly string[]).includes(p));
    if (!list.length || bad !== undefined) throw new InvalidArgumentError(`${flag} takes auto or a comma-separated list of ${EXECUTION_PROVIDERS.join(', ')}; got "${raw}"`);
    return list;
  };

/** --verification: how sampled drafts are verified (Verification, src/kernels/noise.ts). */
export const VERIFICATION_HELP = `how sampled drafts are verified: invariant (every level draws with noise keyed by (seed, position, token): a seed gives target-only decoding's tokens whatever drafts) | rejection (speculative rejection sampling: exact in distribution, tokens depend on the drafts); greedy is the same under both`;
export const parseVerificationFlag = (raw: string): Verification => {
  if (!(VERIFICATIONS as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--verification must be one of ${VERIFICATIONS.join(', ')}, got "${raw}"`);
  return raw as Verification;
};

/** --drafting: serial rounds or async drafting (Drafting, src/engine/async-cascade.ts). */
export const DRAFTING_HELP = 'serial (draft a block, then verify it) | async (the first neural drafter runs ahead, on its own worker thread or its own actor, while the target verifies; the target never waits for it; MaG fills in; K is implicit)';
/** --outcome-branches (generate; the API's cascade.outcome_branches: true). */
export const OUTCOME_BRANCHES_HELP = 'under --drafting async, the drafter also drafts ahead for the likely rejections: where the target rejects a draft and emits the drafter\'s second choice instead (SSD). Off by default: they did not pay on a 2-core CPU (docs/cascade.md); on, they pause themselves while few of their drafts are accepted';
/** --level-below (generate; the API's cascade.level_below: true). */
export const LEVEL_BELOW_HELP = 'under --drafting async, the second neural drafter runs on its own worker as a level below the first, which reviews its drafts as it reviews MaG\'s (PipeSpec\'s pipeline with a neural level). Off by default: on a 2-core CPU, where three models share two cores, it cost 6-16% (docs/cascade.md)';
/** A note for a server or batch given --outcome-branches with serial drafting as its default: the flag then serves only requests that ask for async. */
export function noteOutcomeBranches(o: { readonly outcomeBranches?: boolean; readonly drafting?: Drafting }): void {
  if (o.outcomeBranches && o.drafting !== 'async') process.stderr.write(`note: --outcome-branches applies to requests that ask for async drafting (cascade.drafting "async"); the default here is --drafting ${o.drafting ?? DEFAULT_DRAFTING}\n`);
}
export const parseDraftingFlag = (raw: string): Drafting => {
  if (!(DRAFTINGS as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--drafting must be one of ${DRAFTINGS.join(', ')}, got "${raw}"`);
  return raw as Drafting;
};

/** Where the KV lives: auto, host or device (kv-placement.ts). */
export const KV_LOCATIONS = ['auto', 'host', 'host-buffer', 'device'] as const;
export const parseKvLocation = (raw: string): (typeof KV_LOCATIONS)[number] => {
  if (!(KV_LOCATIONS as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--kv-location must be one of ${KV_LOCATIONS.join(', ')}, got "${raw}"`);
  return raw as (typeof KV_LOCATIONS)[number];
};

/**
 * --batch-invariant: whether one-token passes run as two rows, so a token's logits do not depend on
 * how many tokens its pass scores (SessionOptions.batchInvariant, src/models/session.ts).
 */
export const BATCH_INVARIANT_HELP = `${BATCH_INVARIANCE.join(' | ')} (on: one-token passes run as two rows, so ONNX Runtime never takes its one-row kernels; auto: on the CPU EP for a MatMulNBits graph at accuracy_level 2-4, where the two kernels differ by up to 1e-1 (measured at level 4), for a w8a8 graph (cascade quantize --scheme w8a8), and for a float32 graph with a float16 KV cache (cascade fuse --kv-dtype float16, up to 1.4e-3), off elsewhere; a fused w8a8 graph pads its own attention instead, and is batch-invariant whatever this says, with no pass padded)`;
export const parseBatchInvariant = (raw: string): BatchInvariance => {
  if (!(BATCH_INVARIANCE as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--batch-invariant must be one of ${BATCH_INVARIANCE.join(', ')}, got "${raw}"`);
  return raw as BatchInvariance;
};

/** --logit-bias: a JSON object of token id to bias in [-100, 100], as OpenAI's logit_bias. */
export const parseLogitBias = (raw: string): Record<number, number> => {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new InvalidArgumentError(`--logit-bias takes a JSON object of token id to bias, e.g. '{"13": -100}'; got "${raw}"`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new InvalidArgumentError(`--logit-bias takes a JSON object of token id to bias; got ${raw}`);
  const out: Record<number, number> = {};
  for (const [id, v] of Object.entries(json)) {
    if (!/^(0|[1-9]\d{0,9})$/.test(id) || Number(id) > 0xffffffff) throw new InvalidArgumentError(`--logit-bias keys are token ids (integers from 0, without leading zeros); got "${id}"`);
    if (typeof v !== 'number' || !(v >= -100 && v <= 100)) throw new InvalidArgumentError(`--logit-bias maps token ids to numbers in [-100, 100]; got ${id}: ${JSON.stringify(v)}`);
    out[Number(id)] = v;
  }
  return out;
};

/** --k-matrix: `auto`, or a JSON K matrix whose entries are at most MAX_K (the gateway's limit too). */
export const parseKMatrix = (raw: string): KSchedule => {
  if (raw === 'auto') return 'auto';
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new InvalidArgumentError(`--k-matrix must be auto or JSON, e.g. [[2,4,8],[0,2,6],[0,0,4]]; got "${raw}"`);
  }
  const parsed = z.array(z.array(z.number().int().nonnegative())).safeParse(v);
  if (!parsed.success) throw new InvalidArgumentError(`--k-matrix must be an array of rows of non-negative integers, got ${raw}`);
  checkKBound(parsed.data, '--k-matrix');
  return parsed.data;
};
