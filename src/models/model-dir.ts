import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { InvalidArgumentError, ModelLoadError } from '../errors.ts';

/**
 * Where one model's files are: a folder as a user exported it (Optimum, transformers.js, the
 * onnxruntime-genai model builder) or a member of a model family. `modelFile` picks the ONNX graph
 * when the folder holds several; `tokenizer` names a tokenizer.json when the folder has none.
 */
export interface ModelLocation {
  readonly dir: string;
  /** The graph, relative to `dir` (or absolute): `--model-file`. Found from the folder when absent. */
  readonly modelFile?: string;
  /** A tokenizer.json to use when `dir` has none of its own: `--tokenizer`. */
  readonly tokenizer?: string;
  /** The model's name in logs, stats and NATS subjects; the folder's name by default. */
  readonly name?: string;
}

export type ModelSource = string | ModelLocation;

export const locationOf = (source: ModelSource): ModelLocation => (typeof source === 'string' ? { dir: source } : source);

/**
 * The graphs a folder may hold, in the order they are preferred: `model.onnx` (this project,
 * onnxruntime-genai), Optimum's merged decoder, then the transformers.js layout (`onnx/`), whose
 * full-precision `model.onnx` wins over its `_fp16` / `_quantized` siblings.
 */
const PREFERRED = ['model.onnx', 'decoder_model_merged.onnx', 'onnx/model.onnx', 'onnx/decoder_model_merged.onnx'];

/** Optimum's graphs that do not take a past on the first pass: the merged decoder replaces both. */
const UNMERGED = /^(onnx\/)?decoder(_with_past)?_model(_[a-z0-9]+)?\.onnx$/;

/** Every .onnx file at the top of `dir` and in its `onnx/` folder, relative to `dir`. */
function graphsIn(dir: string): string[] {
  const list = (sub: string) => {
    const at = join(dir, sub);
    if (!existsSync(at) || !statSync(at).isDirectory()) return [];
    return readdirSync(at)
      .filter((f) => f.endsWith('.onnx'))
      .map((f) => (sub ? `${sub}/${f}` : f));
  };
  return [...list(''), ...list('onnx')].sort();
}

/**
 * The ONNX graph of a model folder: `modelFile` when given, else the first of PREFERRED present,
 * else the only decoder graph there. Throws ModelLoadError listing what was found when the choice
 * is ambiguous or nothing fits.
 */
export function findGraph(dir: string, modelFile?: string): string {
  return graphFile(chooseGraph(dir, modelFile));
}

/** `path`, if it is a file that can be opened; a ModelLoadError saying why not otherwise (ONNX Runtime only says "system error number 40"). */
function graphFile(path: string): string {
  let why: string | undefined;
  try {
    if (!statSync(path).isFile()) why = 'is not a file';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    why = code === 'ELOOP' ? 'is a symbolic link that loops' : code === 'ENOENT' ? 'is a symbolic link to nothing' : `cannot be read (${code ?? (err as Error).message})`;
  }
  if (why) throw new ModelLoadError(`the model's graph ${path} ${why}`);
  return path;
}

function chooseGraph(dir: string, modelFile?: string): string {
  if (modelFile !== undefined) {
    const path = isAbsolute(modelFile) ? modelFile : join(dir, modelFile);
    // a flag that names no file: bad input (exit 2), as a --model that names no folder
    if (!existsSync(path)) throw new InvalidArgumentError(`--model-file ${modelFile}: ${path} does not exist (the folder holds ${describe(graphsIn(dir))})`);
    return path;
  }
  const found = graphsIn(dir);
  const preferred = PREFERRED.find((f) => found.includes(f));
  if (preferred) return join(dir, preferred);
  const usable = found.filter((f) => !UNMERGED.test(f) || /merged/.test(f));
  if (usable.length === 1) return join(dir, usable[0]!);
  if (usable.length > 1) {
    throw new ModelLoadError(`${dir} holds several ONNX graphs (${usable.join(', ')}) and no model.onnx: choose one with --model-file NAME`);
  }
  const unmerged = found.length ? `; ${found.join(', ')} ${found.length === 1 ? 'is' : 'are'} Optimum's unmerged decoders: export again without --no-post-process to get decoder_model_merged.onnx` : '';
  throw new ModelLoadError(
    `${dir} has no decoder graph: expected model.onnx, decoder_model_merged.onnx or onnx/model.onnx (an export with past key values, e.g. optimum-cli export onnx --task text-generation-with-past)${unmerged}`,
  );
}

const describe = (graphs: string[]) => (graphs.length ? graphs.join(', ') : 'no .onnx file');

/**
 * The tokenizer.json of a model folder: its own, else `tokenizer` (`--tokenizer`), else that of the
 * model family the folder belongs to (a parent with family.json and tokenizer.json). A folder's own
 * tokenizer wins: `--tokenizer` only fills in for exports that carry none.
 */
export function findTokenizer(dir: string, tokenizer?: string): string {
  const own = join(dir, 'tokenizer.json');
  if (existsSync(own)) return own;
  if (tokenizer !== undefined) {
    const path = resolve(tokenizer);
    if (!existsSync(path)) throw new ModelLoadError(`--tokenizer ${tokenizer} does not exist`);
    return path;
  }
  const parent = dirname(dir);
  if (existsSync(join(parent, 'family.json')) && existsSync(join(parent, 'tokenizer.json'))) return join(parent, 'tokenizer.json');
  throw new ModelLoadError(`${dir} has no tokenizer.json (nor does a model family around it): copy the model's tokenizer.json beside it or name one with --tokenizer FILE`);
}

/**
 * A name usable in stats and as a NATS subject token (letters, digits, '-' and '_'): the folder's
 * name with anything else turned into '-' (`Qwen2.5-0.5B` becomes `Qwen2-5-0-5B`).
 */
export const modelName = (dir: string): string => basename(resolve(dir)).replace(/[^A-Za-z0-9_-]/g, '-') || 'model';
