import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ROOT } from '../checkout.ts';
import { InvalidArgumentError } from '../errors.ts';
import { describeIssues } from '../issues.ts';

/** Held-out prompt sets under bench/prompts (see its README for provenance). */
export const WORKLOADS = ['code', 'english', 'grounded'] as const;
/** Whole held-out documents of 10k+ characters, for bounded KV caches (cascade bench kv). */
export const LONG_WORKLOAD = 'long';
export type Workload = (typeof WORKLOADS)[number];

const Row = z.object({ id: z.string(), source: z.string(), license: z.string(), prompt: z.string().min(1) });
export type PromptRow = z.infer<typeof Row>;

export const PROMPTS_DIR = join(ROOT, 'bench', 'prompts');

export function loadWorkload(name: Workload | typeof LONG_WORKLOAD, dir = PROMPTS_DIR): PromptRow[] {
  const path = join(dir, `${name}.jsonl`);
  if (!existsSync(path)) throw new InvalidArgumentError(`no prompt set ${path}: build it with python3 tools/heldout/build_prompts.py`);
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l, i) => {
      const parsed = Row.safeParse(JSON.parse(l));
      if (!parsed.success) throw new InvalidArgumentError(`${path} line ${i + 1}: ${describeIssues(parsed.error)}`);
      return parsed.data;
    });
}

/**
 * A workload cut into two disjoint sets: `tune`, the last `tune` prompts of the file (where a
 * benchmark picks its K), and `measure`, the first `measure` of the others (what it then reports).
 * Tuning on prompts that are then measured would flatter the tuned methods. Throws
 * InvalidArgumentError when the file holds fewer than measure + tune prompts.
 */
export function splitWorkload(name: Workload, measure: number, tune: number, dir = PROMPTS_DIR): { measure: PromptRow[]; tune: PromptRow[] } {
  const rows = loadWorkload(name, dir);
  if (measure + tune > rows.length) {
    throw new InvalidArgumentError(`the ${name} prompt set has ${rows.length} prompts, fewer than ${measure} to measure plus ${tune} to tune K on (the two sets are disjoint): lower --prompts or --sweep-prompts`);
  }
  return { measure: rows.slice(0, measure), tune: rows.slice(rows.length - tune) };
}

/** Fraction of repeated 4-grams in a token sequence (degenerate loops score high). */
export function repeated4gramRate(tokens: readonly number[]): number {
  if (tokens.length < 4) return 0;
  const seen = new Set<string>();
  let total = 0;
  for (let i = 0; i + 4 <= tokens.length; i++, total++) seen.add(tokens.slice(i, i + 4).join(','));
  return 1 - seen.size / total;
}
