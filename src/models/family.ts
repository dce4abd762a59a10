import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { readJsonFile } from './json-file.ts';
import { InvalidArgumentError, ModelLoadError } from '../errors.ts';
import { AdoreController } from '../kernels/adore-controller.ts';
import { TrigramTable, type MagTables } from '../kernels/maxgram.ts';
import type { ModelSource } from './model-dir.ts';
import { describeIssues } from '../issues.ts';

/**
 * A model family directory: `family.json` names the target and its drafters (largest first), each a
 * model directory beside it. All members share one tokenizer (SPEC §3).
 */
export interface Family {
  readonly dir: string;
  readonly target: string;
  readonly drafters: readonly string[];
  /** MaG's bigram table (a file), relative to the family directory. */
  readonly bigram?: string;
  /** MaG's trigram table (a file, TrigramTable), relative to the family directory. */
  readonly trigram?: string;
  /** ADORE's controller directory, relative to the family directory. */
  readonly controller?: string;
  /**
   * The family's EAGLE feature drafter (a member directory), which drafts from the target's
   * hidden_states (docs/eagle.md): servers load it beside the target, and a request names it first
   * among its drafters to use it. Never among the default drafters of a mode.
   */
  readonly eagle?: string;
  /**
   * Where each model's files are when they are not `dir/<name>` with a model.onnx: the folders
   * `--model` / `--draft-model` name (model-choice.ts), with the graph and tokenizer picked there.
   */
  readonly locations?: ReadonlyMap<string, ModelSource>;
}

const FamilyJson = z.object({
  target: z.string().min(1),
  drafters: z.array(z.string().min(1)),
  /** MaG's bigram fallback table (little-endian uint32 per token), relative to the family directory. */
  bigram: z.string().min(1).optional(),
  /** MaG's trigram fallback table (TrigramTable, tools/train/bigram.py --trigram-out), relative to the family directory. */
  trigram: z.string().min(1).optional(),
  /** The ADORE controller trained for this family's target (tools/train/controller.py). */
  controller: z.string().min(1).optional(),
  /** The EAGLE feature drafter trained for this family's target (tools/train/eagle.sh), a member directory. */
  eagle: z.string().min(1).optional(),
})
  // a misspelt key ("drafter") would otherwise drop what it names, silently
  .strict()
  .superRefine((f, ctx) => {
    if (f.drafters.includes(f.target)) ctx.addIssue({ code: 'custom', path: ['drafters'], message: `the target "${f.target}" cannot be its own drafter` });
    const twice = f.drafters.find((d, i) => f.drafters.indexOf(d) !== i);
    if (twice !== undefined) ctx.addIssue({ code: 'custom', path: ['drafters'], message: `"${twice}" is listed twice` });
    if (f.eagle !== undefined && (f.eagle === f.target || f.drafters.includes(f.eagle))) ctx.addIssue({ code: 'custom', path: ['eagle'], message: `the feature drafter "${f.eagle}" is also the target or a drafter` });
  });

export function loadFamily(dir: string): Family {
  const abs = resolve(dir);
  const path = join(abs, 'family.json');
  if (!existsSync(path)) {
    // a --models that names no family is bad input (exit 2), as a --model that names no folder
    throw new InvalidArgumentError(`${abs} is not a model family: it has no family.json (naming the target and its drafters)`);
  }
  const parsed = FamilyJson.safeParse(readJsonFile(path));
  if (!parsed.success) throw new ModelLoadError(`${path} is malformed: ${describeIssues(parsed.error, { known: Object.keys(FamilyJson.shape) })}`);
  return { dir: abs, ...parsed.data };
}

/**
 * MaG's fill tables: the bigram and trigram tables the family ships (either may be absent). With
 * `vocabSize` (the target's), a table covering more tokens than that is refused: its successors
 * could be ids the target cannot read. Throws ModelLoadError naming the file and how to fix it.
 */
export function loadMagTables(family: Family, vocabSize?: number): MagTables {
  return { bigram: loadBigram(family, vocabSize), trigram: loadTrigram(family, vocabSize) };
}

/** How to rebuild MaG's tables, or do without one, for the error messages below. */
const REBUILD = (key: 'bigram' | 'trigram') =>
  `rebuild the tables with python3 tools/train/bigram.py --data TOKENS --out BIGRAM --trigram-out TRIGRAM (TOKENS: the family's token streams, tools/train/encode.py), or remove "${key}" from family.json to run MaG without it`;

/** The path of a table family.json names under `key`, checked to be a file. */
function tablePath(family: Family, key: 'bigram' | 'trigram', name: string): string {
  const path = join(family.dir, name);
  if (!existsSync(path)) throw new ModelLoadError(`family.json names ${key} table ${path}, which does not exist: ${REBUILD(key)}`);
  if (!statSync(path).isFile()) throw new ModelLoadError(`family.json names ${key} table ${path}, which is not a file`);
  return path;
}

/** Refuses a table covering more tokens than the target's vocabulary (`vocabSize`, when known). */
function checkCovered(key: 'bigram' | 'trigram', path: string, covered: number, vocabSize: number | undefined): void {
  if (vocabSize !== undefined && covered > vocabSize) {
    throw new ModelLoadError(`${key} table ${path} covers ${covered} tokens, more than the target's vocabulary of ${vocabSize}: it was built for another tokenizer; ${REBUILD(key)}`);
  }
}

/** MaG's trigram table, when the family ships one. */
function loadTrigram(family: Family, vocabSize: number | undefined): TrigramTable | undefined {
  if (!family.trigram) return undefined;
  const path = tablePath(family, 'trigram', family.trigram);
  let table: TrigramTable;
  try {
    table = TrigramTable.read(readFileSync(path), `trigram table ${path}`);
  } catch (err) {
    throw err instanceof RangeError ? new ModelLoadError(`${err.message}: ${REBUILD('trigram')}`) : err;
  }
  checkCovered('trigram', path, table.vocabSize, vocabSize);
  return table;
}

/** MaG's bigram table, when the family ships one. */
function loadBigram(family: Family, vocabSize: number | undefined): Uint32Array | undefined {
  if (!family.bigram) return undefined;
  const path = tablePath(family, 'bigram', family.bigram);
  const buf = readFileSync(path);
  if (buf.byteLength % 4) throw new ModelLoadError(`bigram table ${path} is not a whole number of uint32 entries: ${REBUILD('bigram')}`);
  const table = new Uint32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  checkCovered('bigram', path, table.length, vocabSize);
  return table;
}

/** The family's ADORE controller, or a clear error when it ships none. */
export function loadController(family: Family): AdoreController {
  if (!family.controller) throw new ModelLoadError(`the model family in ${family.dir} ships no ADORE controller (family.json has no "controller")`);
  return AdoreController.load(join(family.dir, family.controller));
}

/**
 * What a drafter named in a cascade is: `mag` (the model-free MaG drafter), `eagle` (the family's
 * feature drafter, named by its `eagle`) or `model` (a neural draft model). The same as
 * DrafterSpec's `kind` (src/engine/cascade.ts).
 */
export type DrafterKind = 'mag' | 'eagle' | 'model';

/** The kind of drafter `name` is in a cascade over `family` (which needs only the feature drafter's name). */
export const drafterKind = (family: Pick<Family, 'eagle'>, name: string): DrafterKind => (name === 'mag' ? 'mag' : name === family.eagle ? 'eagle' : 'model');

/** The directory of a family member. */
export const memberDir = (family: Family, name: string): string => join(family.dir, name);

/** Where a member's files are: its location when the command line named one, else its directory. */
export const memberSource = (family: Family, name: string): ModelSource => family.locations?.get(name) ?? memberDir(family, name);
