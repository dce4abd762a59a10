import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { ModelLoadError } from '../errors.ts';

/**
 * A model family directory: `family.json` names the target and its drafters (largest first), each a
 * model directory beside it. All members share one tokenizer (SPEC §3).
 */
export interface Family {
  readonly dir: string;
  readonly target: string;
  readonly drafters: readonly string[];
}

const FamilyJson = z.object({
  target: z.string().min(1),
  drafters: z.array(z.string().min(1)),
});

export function loadFamily(dir: string): Family {
  const abs = resolve(dir);
  const path = join(abs, 'family.json');
  if (!existsSync(path)) {
    throw new ModelLoadError(`${abs} is not a model family: it has no family.json (naming the target and its drafters)`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (cause) {
    throw new ModelLoadError(`${path} is not valid JSON`, { cause });
  }
  const parsed = FamilyJson.safeParse(raw);
  if (!parsed.success) throw new ModelLoadError(`${path} is malformed: ${z.prettifyError(parsed.error)}`);
  return { dir: abs, ...parsed.data };
}

/** The directory of a family member. */
export const memberDir = (family: Family, name: string): string => join(family.dir, name);
