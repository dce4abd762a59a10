import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT } from '../checkout.ts';
import type { Command } from 'commander';
import { CascadeError, InvalidArgumentError, ModelLoadError } from '../errors.ts';
import { memberSource, type Family } from '../models/family.ts';
import { findGraph, locationOf, type ModelLocation } from '../models/model-dir.ts';
import { readJsonFile } from '../models/json-file.ts';
import { parseNumber } from './options.ts';
import { KV_DTYPES } from '../models/session.ts';

/**
 * `cascade quantize`: block-wise weight-only quantization of a model folder into ONNX Runtime's
 * MatMulNBits, and of its embedding into GatherBlockQuantized (docs/quantization.md). The graph
 * rewrite is tools/train/quantize.py, run with a Python that has onnx and numpy: ONNX has no
 * maintained protobuf writer on npm that round-trips large graphs, and onnx's own is the reference one.
 */

/** No Python with onnx and numpy, or the quantizer failed; the message says what to install or what went wrong. */
export class QuantizeToolError extends CascadeError {
  override readonly name = 'QuantizeToolError';
}

/**
 * How `cascade quantize` writes a product with a constant weight (docs/quantization.md):
 * - `nbits`: block-wise weight-only MatMulNBits, as onnxruntime-genai's model builder (8 or 4 bits);
 * - `w8a8`: int8 weights per output channel and int8 activations per token, dynamic (vLLM's int8
 *   W8A8 scheme, without SmoothQuant's smoothing), through ONNX Runtime's integer GEMM
 *   (MatMulIntegerToFloat); each token's activations get their own scale, so its integer products do
 *   not depend on its pass's other rows (the graph still runs batch-invariant: docs/quantization.md).
 */
export const QUANTIZE_SCHEMES = ['nbits', 'w8a8'] as const;
export type QuantizeScheme = (typeof QUANTIZE_SCHEMES)[number];

interface QuantizeOptions {
  model: string;
  out: string;
  /** 8 or 4; required for nbits, 8 when absent under w8a8. */
  bits?: number;
  scheme: QuantizeScheme;
  /** Default 32 (nbits only). */
  blockSize?: number;
  /** Default 4 (nbits only). */
  accuracyLevel?: number;
  symmetric?: boolean;
  quantizeHead?: boolean;
  quantizeEmbedding?: boolean;
  modelFile?: string;
  python?: string;
}

/** The graph rewrites under tools/train that run here. */
type TrainTool = 'quantize.py' | 'fuse.py';

/** tools/train/<tool> of this checkout (src/checkout.ts ROOT: from the sources or compiled). */
function toolPath(tool: TrainTool): string {
  const path = join(ROOT, 'tools', 'train', tool);
  if (existsSync(path)) return path;
  throw new QuantizeToolError(`tools/train/${tool} is missing from this installation (it ships in the repository)`);
}

/**
 * Runs tools/train/<tool> with `args`, its stderr on ours (its stdout too when `stdout` is 'inherit');
 * a tool that fails leaves no `out` folder behind and throws QuantizeToolError naming it. `signal`
 * stops it; `shownAs` names `out` in its messages (writeFolder's partial folder).
 */
async function runTool(python: string, tool: TrainTool, args: readonly string[], out: string, { stdout, signal, shownAs }: { stdout: 'inherit' | 'ignore'; signal?: AbortSignal; shownAs?: string }): Promise<void> {
  const status = await new Promise<number | null>((done, fail) => {
    // an aborted signal stops the tool (SIGTERM); its 'close' then reports no exit status
    const piped = shownAs !== undefined;
    const child = spawn(python, [toolPath(tool), ...args], { stdio: ['ignore', piped ? 'pipe' : stdout, piped ? 'pipe' : 'inherit'], ...(signal ? { signal } : {}) });
    if (piped) {
      // the tool writes into `out`, a partial folder: its messages name the folder the user asked for
      const relay = (from: NodeJS.ReadableStream, to: NodeJS.WritableStream) => createInterface({ input: from, crlfDelay: Infinity }).on('line', (line) => to.write(`${line.replaceAll(out, shownAs)}\n`));
      if (stdout === 'inherit') relay(child.stdout!, process.stdout);
      else child.stdout!.resume();
      relay(child.stderr!, process.stderr);
    }
    child.on('error', (err) => (err.name === 'AbortError' ? undefined : fail(new QuantizeToolError(`cannot run ${python}: ${err.message}`, { cause: err }))));
    child.on('close', done);
  });
  if (status !== 0) {
    rmSync(out, { recursive: true, force: true });
    throw new QuantizeToolError(`tools/train/${tool} failed (exit ${status}); its message is above`);
  }
}

/**
 * The first of `--python`, $CASCADE_PYTHON, /usr/bin/python3 and python3 on the PATH that imports
 * onnx and numpy; throws QuantizeToolError naming what to install when none does.
 */
export function findPython(explicit?: string, command = 'cascade quantize'): string {
  const candidates = explicit ? [explicit] : [process.env.CASCADE_PYTHON, '/usr/bin/python3', 'python3'].filter((p): p is string => !!p);
  const tried: string[] = [];
  for (const python of [...new Set(candidates)]) {
    const r = spawnSync(python, ['-c', 'import onnx, numpy'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) return python;
    const why = r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : (r.stderr.trim().split('\n').at(-1) ?? `exit ${r.status}`);
    tried.push(`${python}: ${why}`);
  }
  throw new QuantizeToolError(
    `${command} needs Python 3 with onnx and numpy (apt-get install python3-onnx python3-numpy, or pip install onnx numpy); tried ${tried.join('; ')}`,
  );
}

/**
 * A folder option's value, refused when it is another option: a value left out takes the next word
 * (commander), so `--model --out x` would read "--out" as the folder and then miss --out.
 */
const folder = (flag: string) => (raw: string): string => {
  if (raw.startsWith('--')) throw new InvalidArgumentError(`${flag} needs a folder, got "${raw}"`);
  return raw;
};

/** A rewrite's source folder, its graph (relative to it) and a new output folder, checked; throws ModelLoadError or InvalidArgumentError. */
function rewriteFolders(o: { model: string; out: string; modelFile?: string }, what: string): { model: string; out: string; graph: string } {
  const model = resolve(o.model);
  const out = resolve(o.out);
  if (!existsSync(model) || !statSync(model).isDirectory()) throw new InvalidArgumentError(`--model ${model} is not a model directory (${existsSync(model) ? 'a file' : 'nothing there'})`);
  if (!existsSync(join(model, 'config.json'))) throw new ModelLoadError(`model directory ${model} has no config.json`);
  if (existsSync(out)) throw new InvalidArgumentError(`--out ${out} exists: name a new folder for the ${what} model`);
  return { model, out, graph: relative(model, findGraph(model, o.modelFile)) };
}

/** Block sizes ONNX Runtime's MatMulNBits takes ("Only block sizes 16, 32, 64, 128, and 256 are supported"). */
export const BLOCK_SIZES = [16, 32, 64, 128, 256] as const;

/** Why `--block-size` cannot be `n` (not one of BLOCK_SIZES), or undefined when it can. */
export const blockSizeError = (n: number): string | undefined =>
  (BLOCK_SIZES as readonly number[]).includes(n) ? undefined : `--block-size must be one of ${BLOCK_SIZES.join(', ')} (what ONNX Runtime's MatMulNBits takes), got ${n}`;

/** Throws InvalidArgumentError for options `scheme` does not take: w8a8 is 8-bit, without blocks, levels, zero points or a quantized embedding. */
function checkScheme(o: QuantizeOptions): void {
  if (o.scheme === 'nbits') return;
  const nbitsOnly = [
    ...(o.bits !== 8 ? [`--bits ${o.bits}`] : []),
    ...(o.blockSize !== undefined ? ['--block-size'] : []),
    ...(o.accuracyLevel !== undefined ? ['--accuracy-level'] : []),
    ...(o.symmetric ? ['--symmetric'] : []),
    ...(o.quantizeEmbedding ? ['--quantize-embedding'] : []),
  ];
  if (nbitsOnly.length) throw new InvalidArgumentError(`--scheme w8a8 is 8-bit with a scale per output channel and per token: ${nbitsOnly.join(', ')} ${nbitsOnly.length > 1 ? 'are' : 'is'} for --scheme nbits`);
}

async function quantize(options: QuantizeOptions): Promise<void> {
  if (options.bits === undefined && options.scheme !== 'w8a8') throw new InvalidArgumentError('--bits is required: 8 or 4 (only --scheme w8a8 implies 8)');
  const o = { ...options, bits: options.bits ?? 8 };
  if (o.bits !== 4 && o.bits !== 8) throw new InvalidArgumentError(`--bits must be 8 or 4, got ${o.bits}`);
  checkScheme(o);
  const blockSize = o.blockSize ?? 32;
  const accuracyLevel = o.accuracyLevel ?? 4;
  const blockError = blockSizeError(blockSize);
  if (blockError) throw new InvalidArgumentError(blockError);
  if (accuracyLevel > 4) throw new InvalidArgumentError(`--accuracy-level must be 0 to 4, got ${accuracyLevel}`);
  const { model, out, graph } = rewriteFolders(o, 'quantized');
  const python = findPython(o.python);
  const args = ['--model', model, '--bits', String(o.bits), '--scheme', o.scheme, '--block-size', String(blockSize),
    '--accuracy-level', String(accuracyLevel), '--model-file', graph, ...(o.symmetric ? ['--symmetric'] : []), ...(o.quantizeHead ? ['--quantize-head'] : []),
    ...(o.quantizeEmbedding ? ['--quantize-embedding'] : [])];
  process.stderr.write(`quantizing ${join(model, graph)} to ${o.scheme === 'w8a8' ? 'int8 weights and activations (w8a8)' : `${o.bits} bits`} with ${python}\n`);
  await writeFolder(out, python, 'quantize.py', args);
  process.stdout.write(`${out}\n`);
}

/**
 * Runs tools/train/<tool> with `args` and `--out out.partial-<pid>-<random>`, and renames that folder
 * to `out` once the tool has written it, so that a failure or an interrupt (SIGINT or SIGTERM, which
 * stop the tool too) leaves no `out` half written that would block a rerun; the partial folder is
 * removed either way.
 */
async function writeFolder(out: string, python: string, tool: TrainTool, args: readonly string[]): Promise<void> {
  // a name no earlier run can have left behind (pids repeat in containers)
  const partial = `${out}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
  let interrupted: NodeJS.Signals | undefined;
  const stop = new AbortController();
  // a signal to this process alone (docker stop, kill PID) stops the tool too; Ctrl-C reaches both anyway
  const onSignal = (signal: NodeJS.Signals) => {
    interrupted = signal;
    stop.abort();
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    await runTool(python, tool, ['--out', partial, ...args], partial, { stdout: 'inherit', signal: stop.signal, shownAs: out });
    if (interrupted) throw new QuantizeToolError(`interrupted (${interrupted})`);
    checkWritten(partial, python, tool);
    renameSync(partial, out);
  } catch (err) {
    rmSync(partial, { recursive: true, force: true });
    if (interrupted) process.exit(interrupted === 'SIGINT' ? 130 : 143);
    throw err;
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}

/** Refuses to report success when the tool exited 0 without writing its folder (a wrong --python, say). */
function checkWritten(out: string, python: string, tool: TrainTool): void {
  if (!existsSync(join(out, 'config.json'))) throw new CascadeError(`${python} ran tools/train/${tool} and exited 0, but wrote no model: is it a Python 3 with onnx and numpy?`);
}

/**
 * `cascade fuse`: tools/train/fuse.py, the fused form of a Llama-architecture folder (this family's
 * exports, or a user's torch.onnx / Optimum export, float32 or float16): GroupQueryAttention,
 * RotaryEmbedding, SkipSimplifiedLayerNormalization and packed projections, as onnxruntime-genai's
 * model builder writes them (docs/gpu.md, "Graph forms"). On the CPU its KV lives in a host buffer
 * read in place; on a GPU it is a fraction of the dispatches.
 */
async function fuseFolder(o: FuseOptions): Promise<void> {
  if (o.kvDtype !== undefined && !(KV_DTYPES as readonly string[]).includes(o.kvDtype)) throw new InvalidArgumentError(`--kv-dtype must be one of ${KV_DTYPES.join(', ')}, got ${o.kvDtype}`);
  const { model, out, graph } = rewriteFolders(o, 'fused');
  // fuse.py reads an export's own projections: a fused (or fused, then quantized) folder has none left
  const config = readJsonFile(join(model, 'config.json')) as { onnx_graph?: { form?: string; fused_from?: string } };
  if (config.onnx_graph?.form === 'fused') {
    throw new InvalidArgumentError(`--model ${model} is already fused (its config.json says onnx_graph.form "fused"${config.onnx_graph.fused_from ? `, made from ${config.onnx_graph.fused_from}` : ''}): use it as it is, or fuse the export it was made from`);
  }
  const python = findPython(o.python, 'cascade fuse');
  process.stderr.write(`fusing ${join(model, graph)} with ${python}\n`);
  await writeFolder(out, python, 'fuse.py', ['--model', model, '--model-file', graph, ...(o.maxPositions ? ['--max-positions', String(o.maxPositions)] : []), ...(o.kvDtype ? ['--kv-dtype', o.kvDtype] : []), ...(o.logitsToKeep === false ? ['--no-logits-to-keep'] : [])]);
  process.stdout.write(`${out}\n`);
}

interface FuseOptions {
  readonly model: string;
  readonly out: string;
  readonly modelFile?: string;
  readonly maxPositions?: number;
  /** The fused graph's KV element type (fuse.py --kv-dtype); default the weights'. */
  readonly kvDtype?: string;
  /** false: no num_logits_to_keep input (fuse.py --no-logits-to-keep), for runtimes that do not feed it. */
  readonly logitsToKeep?: boolean;
  readonly python?: string;
}

/**
 * A short key of a model folder's graph (the folder's path, the graph's size and mtime), so a
 * re-export replaces stale cache entries; `named`: the graph's path too, for a graph chosen among
 * several (`--model-file`).
 */
export function folderKey(dir: string, graph = join(dir, 'model.onnx'), named = false): string {
  const s = existsSync(graph) ? statSync(graph) : statSync(dir);
  return createHash('sha256').update(`${resolve(dir)}:${named ? `${resolve(graph)}:` : ''}${s.size}:${s.mtimeMs}`).digest('hex').slice(0, 10);
}

/** Where a cached copy is made and who asks: CACHE/<kind>-<key>/<name>. */
export interface CopyOptions {
  readonly cacheDir: string;
  readonly name: string;
  /** The graph in `model` when it is not the folder's default (`--model-file`, relative to the folder or absolute). */
  readonly modelFile?: string;
  readonly python?: string;
  readonly log?: (msg: string) => void;
}

/**
 * The revision of each tool's output: bumped when a tool writes a different graph for the same input
 * (fuse.py 2: the num_logits_to_keep input; quantize.py 2: a reduced-vocabulary head over a Gather of
 * rows is quantized under --quantize-head; 3: a fused w8a8 graph pads its own attention,
 * pad_attention_rows), so that a cached copy of an older revision is not reused.
 * A number, not a hash of the tool's source: a cache hit must not need tools/train (a container image
 * ships without it and mounts a cache made elsewhere).
 */
const TOOL_REVISION: Record<TrainTool, number> = { 'quantize.py': 3, 'fuse.py': 2 };

/**
 * A copy of a model folder made once by tools/train/<tool> under `cacheDir` as
 * CACHE/<kind>-<key>/<name>, reused while the source graph (folderKey) and the tool's revision
 * (TOOL_REVISION) are unchanged. It is written to a temporary folder and renamed, so an interrupted
 * run leaves nothing that looks finished; when another process finished the same copy first (roles
 * of a cluster starting together), its copy is kept and this one dropped. Throws QuantizeToolError
 * when no Python with onnx and numpy is found or the tool fails.
 */
async function cachedCopy(tool: TrainTool, kind: string, model: string, args: readonly string[], o: CopyOptions): Promise<string> {
  const revision = TOOL_REVISION[tool];
  // a graph other than the folder's default is keyed by its own path, size and time
  const graph = o.modelFile !== undefined ? findGraph(model, o.modelFile) : undefined;
  const key = graph === undefined ? folderKey(model) : folderKey(model, graph, true);
  const out = join(resolve(o.cacheDir), `${kind}-${key}${revision > 1 ? `-r${revision}` : ''}`, o.name);
  if (existsSync(join(out, 'config.json'))) return out;
  const python = findPython(o.python);
  o.log?.(`${tool === 'fuse.py' ? `fusing ${model}` : `quantizing ${model} to ${kind}`} (tools/train/${tool}) into ${out}`);
  mkdirSync(join(out, '..'), { recursive: true });
  const tmp = `${out}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  await runTool(python, tool, ['--model', resolve(model), '--out', tmp, ...(graph !== undefined ? ['--model-file', resolve(graph)] : []), ...args], tmp, { stdout: 'ignore' });
  try {
    renameSync(tmp, out);
  } catch (err) {
    // another process renamed its copy into place first: the same tool over the same graph, so the same bytes
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(join(out, 'config.json'))) throw err;
  }
  return out;
}

/**
 * The `bits`-bit copy of a model folder (tools/train/quantize.py: blocks of 32 unless `blockSize`,
 * accuracy level 4 unless `accuracyLevel`, the head in float unless `quantizeHead`), cached
 * (cachedCopy) as int<bits>[h][-l<level>][-b<block size>]; with `scheme` w8a8 (8 bits only, no
 * blocks or levels) as w8a8[h].
 */
export function quantizedCopy(
  model: string,
  bits: 8 | 4,
  o: CopyOptions & { readonly quantizeHead?: boolean; readonly accuracyLevel?: number; readonly blockSize?: number; readonly scheme?: QuantizeScheme },
): Promise<string> {
  if (o.scheme === 'w8a8') {
    if (bits !== 8) throw new InvalidArgumentError(`the w8a8 scheme is 8-bit: no ${bits}-bit copy`);
    return cachedCopy('quantize.py', `w8a8${o.quantizeHead ? 'h' : ''}`, model, ['--bits', '8', '--scheme', 'w8a8', ...(o.quantizeHead ? ['--quantize-head'] : [])], o);
  }
  const level = o.accuracyLevel ?? 4;
  const block = o.blockSize ?? 32;
  const kind = `int${bits}${o.quantizeHead ? 'h' : ''}${level === 4 ? '' : `-l${level}`}${block === 32 ? '' : `-b${block}`}`;
  return cachedCopy('quantize.py', kind, model, ['--bits', String(bits), '--accuracy-level', String(level), '--block-size', String(block), ...(o.quantizeHead ? ['--quantize-head'] : [])], o);
}

/**
 * The fused form of a model folder (tools/train/fuse.py: GroupQueryAttention, RotaryEmbedding,
 * SkipSimplifiedLayerNormalization, packed projections; docs/gpu.md), cached (cachedCopy) as `fused`,
 * or `fused-kv16` with `kvDtype` float16 (fuse.py --kv-dtype float16: a float16 cache beside float32
 * weights). Its KV lives in a host buffer read in place on the CPU (kv-placement.ts, HostBufferKv).
 */
export function fusedCopy(model: string, o: CopyOptions & { readonly kvDtype?: 'float16' }): Promise<string> {
  return o.kvDtype ? cachedCopy('fuse.py', 'fused-kv16', model, ['--kv-dtype', o.kvDtype], o) : cachedCopy('fuse.py', 'fused', model, [], o);
}

/** Widths of the target's own quantized copy as a drafter (`--self-draft`; ML-SpecQD, QSpec). */
export const SELF_DRAFTS = ['int4', 'int8'] as const;
export type SelfDraft = (typeof SELF_DRAFTS)[number];

export const parseSelfDraft = (raw: string): SelfDraft => {
  if (!(SELF_DRAFTS as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--self-draft must be one of ${SELF_DRAFTS.join(', ')}, got "${raw}"`);
  return raw as SelfDraft;
};

export const SELF_DRAFT_HELP = `the target's own ${SELF_DRAFTS.join(' or ')} copy as the first drafter (cascade quantize's defaults with the head quantized), made once into --self-draft-cache and reused while the target's graph and the quantizer are unchanged; needs Python 3 with onnx and numpy the first time`;

/** Where `--self-draft` keeps its copies unless `--self-draft-cache` says otherwise (relative to the working directory). */
export const SELF_DRAFT_CACHE = '.cache/self-draft';

/** `--self-draft-cache`'s help. */
export const SELF_DRAFT_CACHE_HELP = 'where --self-draft keeps the quantized copies';

/** The name of the target's own `width` copy among the drafters. */
const selfDraftName = (family: Family, width: SelfDraft): string => `${family.target}-${width}`;

/**
 * The folder of the target's own `width` copy for `--self-draft` (quantizedCopy of the target's folder
 * with the head quantized too: a drafter's drafts are reviewed, so its head may round, and at this
 * size the head is a third of the bytes read per token), named `<target>-<width>`, made once into
 * `cacheDir`. A target chosen by --model-file among several graphs gets a copy of that graph, in a
 * folder of one graph. Throws QuantizeToolError when no Python with onnx and numpy is found.
 */
export async function selfDraftCopy(family: Family, width: SelfDraft, cacheDir: string, log?: (msg: string) => void): Promise<ModelLocation & { name: string }> {
  const { name, source } = selfDraftSlot(family, width);
  // the copy holds the one graph quantized (quantize.py leaves the folder's others behind), so it opens without --model-file
  const dir = await quantizedCopy(source.dir, width === 'int4' ? 4 : 8, { cacheDir, name, quantizeHead: true, log, ...(source.modelFile !== undefined ? { modelFile: source.modelFile } : {}) });
  // the target's --tokenizer, for a folder without a tokenizer.json of its own (the copy has none either)
  return { name, dir, ...(source.tokenizer !== undefined ? { tokenizer: source.tokenizer } : {}) };
}

/** The copy's name and the target's location it is made from (a --model-file that is the folder's default graph is dropped, so that its copy is the folder's). */
function selfDraftSlot(family: Family, width: SelfDraft): { name: string; source: ModelLocation } {
  const source = locationOf(memberSource(family, family.target));
  const named = source.modelFile !== undefined && !isDefaultGraph(source.dir, source.modelFile);
  return { name: selfDraftName(family, width), source: { ...source, modelFile: named ? source.modelFile : undefined } };
}

/** Whether `modelFile` is the graph a folder opens with when none is named (findGraph; quantize.py picks the same). */
function isDefaultGraph(dir: string, modelFile: string): boolean {
  try {
    return resolve(findGraph(dir, modelFile)) === resolve(findGraph(dir));
  } catch {
    return false;
  }
}

/** Refuses a copy's name that the models already hold. */
function checkFree(family: Family, name: string): void {
  if (family.drafters.includes(name) || family.eagle === name) throw new InvalidArgumentError(`--self-draft adds a drafter named ${name}, and the models already hold one`);
}

/** `family` with `name` at `location` first among its drafters. */
const firstDrafter = (family: Family, name: string, location: ModelLocation): Family => ({ ...family, drafters: [name, ...family.drafters], locations: new Map([...(family.locations ?? []), [name, location]]) });

/** `family` with the target's own copy (selfDraftCopy, made when the cache lacks it) as its first drafter, above the others. */
export async function withSelfDraft(family: Family, width: SelfDraft, cacheDir: string, log?: (msg: string) => void): Promise<Family> {
  checkFree(family, selfDraftName(family, width));
  const copy = await selfDraftCopy(family, width, cacheDir, log);
  return firstDrafter(family, copy.name, copy);
}

/**
 * `family` with the target's own copy named first among its drafters, without making it: for the
 * roles that only name drafters (a cluster's coordinators and gateway; a draft actor hosts the copy,
 * `actor draft --self-draft`). They read the copy's config (vocabulary, context length), which is the
 * target's by construction, so its location is the target's folder under the copy's name; no weights
 * are read, and no Python or cache is needed.
 */
export function namingSelfDraft(family: Family, width: SelfDraft): Family {
  const { name, source } = selfDraftSlot(family, width);
  checkFree(family, name);
  return firstDrafter(family, name, { ...source, name });
}

/** The most positions `fuse --max-positions` takes: its RoPE tables hold positions x head_dim floats (2^20 x 128 is 512 MB a table). */
const MAX_FUSED_POSITIONS = 1 << 20;

/** commander's parser for --scheme. */
export function parseScheme(raw: string): QuantizeScheme {
  if ((QUANTIZE_SCHEMES as readonly string[]).includes(raw)) return raw as QuantizeScheme;
  throw new InvalidArgumentError(`--scheme must be one of ${QUANTIZE_SCHEMES.join(', ')}, got "${raw}"`);
}

export function registerQuantize(program: Command): void {
  program
    .command('quantize')
    .description("block-wise weight-only quantization into ONNX Runtime's MatMulNBits, or int8 weights and activations (--scheme w8a8) (needs Python 3 with onnx and numpy); the output is a model folder for --model or --draft-model")
    .requiredOption('--model <dir>', 'the model folder to quantize (config.json and an ONNX decoder graph)', folder('--model'))
    .requiredOption('--out <dir>', 'a new folder for the quantized model (refused when it exists)', folder('--out'))
    .option('--bits <n>', 'weight bits: 8 or 4 (required with --scheme nbits; --scheme w8a8 is 8)', parseNumber('--bits', { integer: true }))
    .option('--scheme <name>', "nbits: block-wise weight-only MatMulNBits; w8a8: int8 weights per output channel and int8 activations per token through ONNX Runtime's integer GEMM (8 bits only; faster verify and prompt passes on the CPU EP; docs/quantization.md)", parseScheme, 'nbits')
    .option('--block-size <n>', `weights per quantization block along K: ${BLOCK_SIZES.join(', ')} (default 32; nbits only)`, parseNumber('--block-size', { min: 16, integer: true }))
    .option('--accuracy-level <n>', "MatMulNBits accuracy_level: 4 (default) lets the CPU compute in int8, 0 keeps activations in float (nbits only)", parseNumber('--accuracy-level', { min: 0, integer: true }))
    .option('--symmetric', 'no zero points (default: asymmetric blocks, as onnxruntime\'s quantizer; nbits only)')
    .option('--quantize-head', 'quantize the LM head too (a tied head gets its own quantized copy of the table)')
    .option('--quantize-embedding', "the embedding as GatherBlockQuantized: a tied one shares the head's quantized table under --quantize-head and the float table is dropped, an untied one gets its own (nbits only)")
    .option('--model-file <name>', 'the ONNX graph inside --model when the folder holds several')
    .option('--python <path>', 'the Python interpreter (default: $CASCADE_PYTHON, /usr/bin/python3, then python3)')
    .action((o: QuantizeOptions) => quantize(o));
  program
    .command('fuse')
    .description("the fused form of a Llama-architecture model folder (this family's, or your own torch.onnx / Optimum export, float32 or float16): GroupQueryAttention, RotaryEmbedding and fused norms, as onnxruntime-genai's builder writes them; on the CPU its KV is read in place from a host buffer (needs Python 3 with onnx and numpy)")
    .requiredOption('--model <dir>', 'the model folder to fuse (config.json and an ONNX decoder graph)', folder('--model'))
    .requiredOption('--out <dir>', 'a new folder for the fused model (refused when it exists); the folder\'s other files are copied', folder('--out'))
    .option('--model-file <name>', 'the ONNX graph inside --model when the folder holds several')
    .option('--max-positions <n>', "positions the fused graph takes (rows of its RoPE tables; default config.json's max_position_embeddings)", parseNumber('--max-positions', { min: 1, max: MAX_FUSED_POSITIONS, integer: true }))
    .option('--kv-dtype <type>', "the KV cache's element type: float32 or float16 (default: the weights'). float16 over float32 weights halves the cache's bytes read and copied per pass, as llama.cpp's default f16 cache; lossy against float32 KV (docs/quantization.md)")
    .option('--no-logits-to-keep', "leave out the graph's num_logits_to_keep input (its head then scores every row of a pass, as the genai builder's does): for a runtime that does not feed it, e.g. onnxruntime-genai; this project's runner feeds it, so a prompt's pass scores one row")
    .option('--python <path>', 'the Python interpreter (default: $CASCADE_PYTHON, /usr/bin/python3, then python3)')
    .action((o: FuseOptions) => fuseFolder(o));
}
