import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InvalidArgumentError, ModelLoadError } from '../errors.ts';
import { loadFamily, type Family } from './family.ts';
import { modelName, type ModelLocation } from './model-dir.ts';

/**
 * The models a command runs, as its flags name them (vLLM's `--model` and speculative options):
 * `--model` the target and `--draft-model` the drafters, each a folder (a user's export, or a family
 * folder with family.json) or the name of a member of the `--models` family.
 */
export interface ModelChoice {
  /** `--models DIR`: the family that names and defaults resolve in (bundled: `models`). */
  readonly models: string;
  /** `--model NAME|DIR`: the target. Default: the family's target. */
  readonly model?: string;
  /** `--draft-model NAME|DIR`, repeatable, largest first. Default: the family's drafters, or none for an export. */
  readonly draftModels?: readonly string[];
  /** `--model-file NAME`: the target's graph inside its folder, when the folder holds several. */
  readonly modelFile?: string;
  /** `--tokenizer FILE`: the tokenizer.json of models whose folders carry none. */
  readonly tokenizer?: string;
}

const isDir = (path: string) => existsSync(path) && statSync(path).isDirectory();

/**
 * Resolves the flags into a Family whose `locations` say where each model's files are. A name that
 * is a member of the `--models` family means that member (`--model draft-l1`); otherwise a folder
 * that exists is a user's export, named after the folder (made safe for NATS subjects; two models
 * may not share a name).
 * MaG's bigram and trigram tables and the ADORE controller come with a family target only: an export's
 * tokenizer is not the family's, so MaG runs without its fallback table there.
 */
export function resolveModels(c: ModelChoice): Family {
  let family: Family | undefined;
  let familyError: Error | undefined;
  const theFamily = (): Family | undefined => {
    if (!family && !familyError) {
      try {
        family = loadFamily(c.models);
      } catch (err) {
        familyError = err as Error;
      }
    }
    return family;
  };
  const isMember = (name: string): boolean => {
    const f = /[\\/]/.test(name) ? undefined : theFamily();
    return f !== undefined && [f.target, ...f.drafters].includes(name);
  };
  const locations = new Map<string, ModelLocation>();
  const add = (name: string, location: Omit<ModelLocation, 'name'>): string => {
    const held = locations.get(name);
    if (held && resolve(held.dir) === resolve(location.dir) && held.modelFile === location.modelFile) return name;
    if (held) {
      // names are how the cluster's roles find each other: every process must derive the same ones
      throw new InvalidArgumentError(`two models would be named ${name} (${held.dir} and ${location.dir}): give their folders different names`);
    }
    locations.set(name, { ...location, name, ...(c.tokenizer !== undefined ? { tokenizer: c.tokenizer } : {}) });
    return name;
  };
  const flagOf = (role: 'target' | 'drafter') => (role === 'target' ? '--model' : '--draft-model');
  const one = (value: string, role: 'target' | 'drafter', modelFile?: string): string => {
    if (isMember(value)) return add(value, { dir: join(family!.dir, value), ...(modelFile !== undefined ? { modelFile } : {}) });
    const dir = resolve(value);
    if (isDir(dir)) return add(modelName(dir), { dir, ...(modelFile !== undefined ? { modelFile } : {}) });
    const members = theFamily() ? ` nor a member of the family in ${family!.dir} (${[family!.target, ...family!.drafters].join(', ')})` : '';
    throw new InvalidArgumentError(`${flagOf(role)} ${value} is neither a directory${members}`);
  };

  const chosen = c.model === undefined ? undefined : resolve(c.model);
  let base: Family;
  let target: string;
  let fromFamily: boolean;
  if (c.model === undefined || (chosen && isDir(chosen) && existsSync(join(chosen, 'family.json')) && !isMember(c.model))) {
    // the bundled default, or a family folder given as --model: its target and drafters
    const f = c.model === undefined ? theFamily() : loadFamily(chosen!);
    if (!f) throw familyError ?? new ModelLoadError(`cannot load the model family in ${c.models}`);
    family = f;
    base = f;
    target = add(f.target, { dir: join(f.dir, f.target), ...(c.modelFile !== undefined ? { modelFile: c.modelFile } : {}) });
    fromFamily = true;
  } else {
    fromFamily = isMember(c.model);
    target = one(c.model, 'target', c.modelFile);
    base = fromFamily ? family! : { dir: locations.get(target)!.dir, target, drafters: [] };
  }
  let drafters: string[];
  if (c.draftModels?.length) drafters = c.draftModels.map((d) => one(d, 'drafter'));
  else if (fromFamily) drafters = base.drafters.map((d) => (d === target ? d : add(d, { dir: join(base.dir, d) })));
  else drafters = [];
  // the family's own members stay named as family.json names them; a family target keeps MaG's table and the controller
  return {
    dir: base.dir,
    target,
    drafters,
    ...(fromFamily && base.bigram ? { bigram: base.bigram } : {}),
    ...(fromFamily && base.trigram ? { trigram: base.trigram } : {}),
    ...(fromFamily && base.controller ? { controller: base.controller } : {}),
    // the feature drafter reads the family target's own features: it stays only with that target
    ...(fromFamily && base.eagle && target === base.target ? { eagle: add(base.eagle, { dir: join(base.dir, base.eagle) }) } : {}),
    locations,
  };
}

/** Whether `value` names a member of the family in `models` (not a path): `--model draft-l1`. */
export function isFamilyMember(models: string, value: string): boolean {
  if (/[\\/]/.test(value) || !existsSync(join(resolve(models), 'family.json'))) return false;
  const f = loadFamily(models);
  return [f.target, ...f.drafters].includes(value);
}
