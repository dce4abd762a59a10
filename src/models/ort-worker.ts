/**
 * Worker thread that owns one ONNX Runtime session and the KV caches of its sequences.
 * `session.run` blocks the thread it runs on, so it runs here and the main thread only routes
 * messages (protocol.ts). KV tensors never leave this thread (on a device EP they stay on the
 * device: kv-placement.ts); only logits travel back, transferred. The KV stays in the graph's own
 * dtype (float32, or float16 as Uint16Array bit patterns); float16 logits become float32 here, only
 * the rows returned.
 */
import { parentPort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { logitsWidth, modelQuantization, type FeatureSpec, type ModelSpec } from './config.ts';
import { halvesToFloats } from '../kernels/half.ts';
import { drawToken, PositionNoise } from '../kernels/noise.ts';
import { dtypeOf, kvArray } from './kv-store.ts';
import { DeviceKv, floatData, HostBufferKv, HostKv, type KvLocation, type KvPlacement } from './kv-placement.ts';
import { ELEM, presentRowsFragment } from './onnx-proto.ts';
import { hasVnni } from './cpu-features.ts';
import { graphMetadata, graphOpTypes, PADDED_ATTENTION } from './graph-ops.ts';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { WorkerReply, WorkerRequest } from './protocol.ts';
import { longestPrefix, RETAINED_TOKENS, RetainedPrefixes, reusableLimit } from './prefix-cache.ts';
import { decodePlanError, joinRows, KV_DTYPES, rowCount, rowsInChunk, type BatchInvariance, type DecodePlan, type ForwardItem, type KvDtype, type KvRows, type LogitsRows, type SessionOptions } from './session.ts';

interface Sequence {
  /** past_key_values in input order: key0, value0, key1, value1, … each [1, kvHeads, length, headDim]. */
  past: ort.Tensor[];
  length: number;
  /**
   * The token ids of its rows, in order, at positions 0, 1, …: what another sequence may copy
   * (prefix-cache.ts). Undefined once its rows stopped being such a prefix (evicted or inserted
   * rows, tokens at explicit positions elsewhere) until it is truncated to nothing.
   */
  tokens: number[] | undefined;
}

let session: ort.InferenceSession | undefined;
let spec: ModelSpec | undefined;
let feedsPositions = true;
/** Optimum's merged decoder: `use_cache_branch` is true whenever a past is fed, false for the first pass. */
let feedsCacheBranch = false;
/**
 * A graph that can return only its last rows' logits (`num_logits_to_keep`, transformers'
 * `logits_to_keep` as an input; 0 = every row): fed the rows a pass needs, so its head computes no more.
 */
let feedsLogitsToKeep = false;
let hasAttention = false;
/** The graph's feature input and output (EAGLE), read at load; undefined = none. */
let features: FeatureSpec | undefined;
/**
 * Outputs fetched by a pass that does not ask for features: every output but the features one, so
 * that they are not copied out. Except with the KV on the device: there every output is fetched, the
 * features included. onnxruntime-node 1.30 binds the outputs of a session with a
 * preferredOutputLocation, and an output left out of a pass keeps the buffer bound by the last pass
 * that fetched it: a longer pass then fails ("Tensor size mismatch. src:{1,246,512} dst:{1,2,512}").
 */
let plainFetches: string[] = [];
/**
 * A fused graph (GroupQueryAttention, tools/train/fuse.py or onnxruntime-genai's builder): it reads
 * each row's cache length from the attention mask's sum, so it cannot skip padding or holes. Single
 * passes never have any (all-ones masks, evictions compact the cache); padded batches are refused.
 */
let seqlensFromMask = false;
/** The element type of every past and present tensor (the graph's own metadata). */
let kvDtype: KvDtype = 'float32';
/**
 * SessionOptions.batchInvariant, resolved at load: a pass of one sequence's one token runs as two
 * rows (the token and a copy of it, whose logits and KV row are dropped), so ONNX Runtime never takes
 * its one-row kernels, which round differently from the several-row ones a verify pass takes.
 */
let padSingleRows = false;
/**
 * Whether the graph's GroupQueryAttention takes one zero row more than each pass's tokens
 * (PADDED_ATTENTION, `cascade quantize --scheme w8a8`): a one-token pass is then batch-invariant
 * without padSingleRows, and a host present holds that row too, which forwardPiece drops.
 */
let paddedAttention = false;
/** Where the sequences' KV lives, and the cache operations there (kv-placement.ts). */
let kv: KvPlacement;
const sequences = new Map<string, Sequence>();
/** SessionOptions.prefixCache: a fresh sequence copies the rows of another's matching prefix. */
let prefixCache = true;
/**
 * Released sequences kept as prefix sources (SessionOptions.prefixCacheTokens); never fed again,
 * only copied from, and freed when over the budget.
 */
let retained = new RetainedPrefixes<Sequence>(RETAINED_TOKENS);

/**
 * Keeps a released sequence as a prefix source within the budget. Its rows are copied first: a host
 * sequence's past may be a view into a batched pass's presents (HostKv.split), which would keep the
 * whole batch's buffer alive.
 */
async function retain(seq: Sequence): Promise<void> {
  if (prefixCache && seq.tokens && retained.fits(seq.length)) {
    const own = await kv.copyPrefix(seq.past, seq.length, seq.length);
    kv.free(seq.past);
    retained.keep({ ...seq, past: own }, seq.tokens);
  } else kv.free(seq.past);
}

class WorkerFailure extends Error {
  constructor(
    override readonly name: string,
    message: string,
  ) {
    super(message);
  }
}

/** ONNX element types onnxruntime-node has no JavaScript tensor for (its "Unsupported data type: N"). */
const UNSUPPORTED_TYPES: Record<string, string> = { 14: 'complex64', 15: 'complex128', 16: 'bfloat16', 17: 'float8e4m3fn', 18: 'float8e4m3fnuz', 19: 'float8e5m2', 20: 'float8e5m2fnuz' };

/** A session that failed to be created because of a tensor type JavaScript cannot hold, named. */
function unsupportedType(s: ModelSpec, err: Error): WorkerFailure | undefined {
  const code = /Unsupported data type: (\d+)/.exec(err.message)?.[1];
  if (code === undefined) return undefined;
  const type = UNSUPPORTED_TYPES[code] ?? `ONNX element type ${code}`;
  return new WorkerFailure(
    'ModelLoadError',
    `${s.onnxPath} has ${type} inputs or outputs, which onnxruntime-node cannot hand to JavaScript: export the model with float32 or float16 KV and logits`,
  );
}

/**
 * ONNX Runtime session config entries of every session (`session.<key>`). On an x86 CPU without VNNI
 * its uint8 x int8 GEMMs (a w8a8 graph's) add products in pairs into 16 bits, which can saturate:
 * `x64quantprecision` makes them uint8 x uint8 there, exact. It is left off where the CPU has VNNI,
 * where those sums are exact already and the option would only slow them (1.4-1.9x on an AVX-512
 * VNNI EPYC, outputs identical), and it does nothing off x86.
 */
const SESSION_CONFIG: Record<string, string> = hasVnni() === true ? {} : { x64quantprecision: '1' };

async function load(s: ModelSpec, options: SessionOptions): Promise<{ provider: string; warning?: string; kvDtype: KvDtype; positionIds: boolean; kvLocation: 'host' | 'host-buffer' | 'device'; batchInvariant: boolean; paddedAttention: boolean }> {
  spec = s;
  prefixCache = options.prefixCache ?? true;
  retained = new RetainedPrefixes<Sequence>(options.prefixCacheTokens ?? RETAINED_TOKENS, (q) => kv.free(q.past));
  const wanted = options.executionProviders?.length ? [...options.executionProviders] : ['cpu'];
  const base: ort.InferenceSession.SessionOptions = {
    // errors only: ORT's warnings (node placement on a GPU EP, Dawn limits) are not the user's to act on
    logSeverityLevel: 3,
    intraOpNumThreads: options.intraOpThreads ?? 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    extra: { session: SESSION_CONFIG },
  };
  let provider = wanted.join(',');
  let warning: string | undefined;
  try {
    session = await ort.InferenceSession.create(s.onnxPath, { ...base, executionProviders: wanted });
  } catch (err) {
    const unsupported = unsupportedType(s, err as Error);
    if (unsupported) throw unsupported;
    const onlyCpu = wanted.every((p) => p === 'cpu');
    const external = missingExternalData(s, err as Error);
    if (external) throw external;
    if (onlyCpu || !options.cpuFallback) {
      throw new WorkerFailure('ModelLoadError', `cannot create an ONNX Runtime session for ${s.onnxPath} with [${provider}]: ${(err as Error).message}`);
    }
    warning = `execution providers [${provider}] failed (${(err as Error).message}); falling back to cpu`;
    session = await ort.InferenceSession.create(s.onnxPath, { ...base, executionProviders: ['cpu'] });
    provider = 'cpu';
  }
  checkContract(session, s);
  kvDtype = graphDtype(session, s);
  seqlensFromMask = graphOpTypes(s.onnxPath).has('GroupQueryAttention');
  paddedAttention = seqlensFromMask && graphMetadata(s.onnxPath).get(PADDED_ATTENTION) === '1';
  padSingleRows = !paddedAttention && resolveBatchInvariance(options.batchInvariant ?? 'auto', s, provider, kvDtype === 'float16' && logitsType(session) === 'float32');
  const location = kvLocation(options.kvLocation ?? 'auto', provider, s);
  if (location === 'host-buffer') {
    // the same graph with outputs of only each pass's new rows (onnx-proto.ts), loaded from memory;
    // external data is still read from the graph's folder
    const graph = readFileSync(s.onnxPath);
    const fragment = presentRowsFragment(s.layers, kvDtype === 'float16' ? ELEM.float16 : ELEM.float32);
    const merged = new Uint8Array(graph.length + fragment.length);
    merged.set(graph);
    merged.set(fragment, graph.length);
    const executionProviders = provider.split(',');
    await session.release();
    try {
      session = await ort.InferenceSession.create(merged, { ...base, executionProviders, extra: { session: { ...SESSION_CONFIG, model_external_initializers_file_folder_path: dirname(s.onnxPath) } } });
    } catch (err) {
      throw (
        missingExternalData(s, err as Error) ??
        new WorkerFailure('ModelLoadError', `cannot load ${s.onnxPath} with its present_rows outputs (--kv-location host-buffer): ${(err as Error).message}; --kv-location host loads it as it is`)
      );
    }
    kv = new HostBufferKv(s, kvDtype);
  } else if (location === 'device') {
    // the presents stay on the device (IO binding) and come back as the next pass's past; logits and
    // attention sums come to the host, where sampling reads them
    const preferredOutputLocation = Object.fromEntries(session.outputNames.map((n) => [n, n.startsWith('present.') ? ('gpu-buffer' as const) : ('cpu' as const)]));
    const executionProviders = provider.split(',');
    await session.release();
    session = await ort.InferenceSession.create(s.onnxPath, { ...base, executionProviders, preferredOutputLocation });
    kv = new DeviceKv(s, kvDtype, { ...base, executionProviders });
  } else {
    kv = new HostKv(s, kvDtype);
  }
  feedsPositions = session.inputNames.includes('position_ids');
  feedsCacheBranch = session.inputNames.includes('use_cache_branch');
  feedsLogitsToKeep = session.inputNames.includes('num_logits_to_keep');
  hasAttention = session.outputNames.includes('attention_sum');
  features = graphFeatures(session, s);
  plainFetches = location === 'device' ? [...session.outputNames] : session.outputNames.filter((n) => n !== features?.output);
  rowFetches = location === 'host-buffer' ? ['logits', ...presentRowNames(s.layers)] : undefined;
  return { provider, kvDtype, positionIds: feedsPositions, kvLocation: location, batchInvariant: padSingleRows || paddedAttention, paddedAttention, ...(features ? { features } : {}), ...(warning ? { warning } : {}) };
}

/**
 * Whether one-token passes run as two rows (SessionOptions.batchInvariant): `auto` is on, on the CPU
 * EP, for a graph whose MatMulNBits compute below float32 (accuracy_level 2-4, modelQuantization),
 * where ONNX Runtime's kernel for one row differs from the one for several by up to 1e-1 in the
 * logits (docs/quantization.md), and for a float32 graph with a float16 KV cache (`halfCache`: `cascade
 * fuse --kv-dtype float16`), whose float16 attention differs by up to 1.4e-3 (measured on the fused
 * target; 0 with the padding). Float graphs differ by about 1e-5 and are left alone, as are float16
 * exports (2.4e-4 on test/fixtures/hf/llama-gqa-fp16, as before) and the WebGPU EP, which computes
 * MatMulNBits in float and whose kernels differ by about 1e-5 with or without the padding (measured on lavapipe).
 * A w8a8 graph (`cascade quantize --scheme w8a8`) is padded too: its integer products are exact
 * whatever the pass, but the float attention's 1e-5 between one row and several moves an activation
 * across an int8 rounding boundary now and then, a step of 1/127 of its row's largest value (greedy
 * csd over the unpadded fused target left its target-only tokens on 2 of 8 prompts). A fused w8a8
 * graph that pads its own attention (paddedAttention, set by load before this is asked) needs none of
 * it: its one-token passes run one row through the products and two through the attention.
 */
function resolveBatchInvariance(asked: BatchInvariance, s: ModelSpec, provider: string, halfCache: boolean): boolean {
  if (asked !== 'auto') return asked === 'on';
  if (firstProvider(provider) !== 'cpu') return false;
  const q = modelQuantization(s);
  return halfCache || q?.scheme === 'w8a8' || (q !== undefined && q.accuracyLevel >= 2);
}

/** The element type of the graph's logits output. */
const logitsType = (sess: ort.InferenceSession): string => {
  const m = sess.outputMetadata.find((o) => o.name === 'logits');
  return m?.isTensor ? m.type : 'not a tensor';
};

/**
 * The graph's features (ModelSpec.features): a `hidden_states` or `next_hidden_states` output and a
 * `hidden_states` input, float32 with a fixed last dimension (the hidden size); undefined = none.
 */
function graphFeatures(sess: ort.InferenceSession, s: ModelSpec): FeatureSpec | undefined {
  const output = sess.outputNames.includes('hidden_states') ? 'hidden_states' : sess.outputNames.includes('next_hidden_states') ? 'next_hidden_states' : undefined;
  const input = sess.inputNames.includes('hidden_states');
  if (!output && !input) return undefined;
  // features come back as float32 (a float16 output is converted, as logits are); they go in as float32
  const sizes = [
    ...sess.inputMetadata.filter((m) => input && m.name === 'hidden_states').map((m) => (m.isTensor && m.type === 'float32' ? m.shape.at(-1) : undefined)),
    ...sess.outputMetadata.filter((m) => m.name === output).map((m) => (m.isTensor && (m.type === 'float32' || m.type === 'float16') ? m.shape.at(-1) : undefined)),
  ];
  const size = sizes[0];
  if (typeof size !== 'number' || sizes.some((v) => v !== size)) {
    throw new WorkerFailure('ModelLoadError', `${s.onnxPath}: its feature tensors must be [batch, sequence, hidden] with one fixed hidden size, the hidden_states input float32 and the output float32 or float16; got last dimensions [${sizes.join(', ')}]`);
  }
  return { size, input, ...(output ? { output } : {}) };
}

/** The EP a session runs on first, of its comma-separated list (`webgpu,cpu`: webgpu). */
const firstProvider = (provider: string): string => provider.split(',')[0]!;

/** EPs whose outputs can stay on the device through `preferredOutputLocation: 'gpu-buffer'`. */
const DEVICE_EPS = ['webgpu'];

/**
 * Where the KV lives: `auto` is the device when the session runs on a device EP, else a host buffer
 * read in place when the graph is a GroupQueryAttention one (seqlensFromMask) on the CPU EP, else the host.
 */
function kvLocation(asked: KvLocation, provider: string, s: ModelSpec): 'host' | 'host-buffer' | 'device' {
  const onDevice = DEVICE_EPS.includes(firstProvider(provider));
  if (asked === 'device' && !onDevice) {
    throw new WorkerFailure('ModelLoadError', `--kv-location device needs a device execution provider (${DEVICE_EPS.join(', ')}) first in the list; the session runs on [${provider}]`);
  }
  if (asked === 'host-buffer' && !seqlensFromMask) {
    throw new WorkerFailure(
      'ModelLoadError',
      `--kv-location host-buffer needs a graph whose attention reads each sequence's length from the attention mask (GroupQueryAttention: tools/train/fuse.py, onnxruntime-genai's model builder); ${s.onnxPath} has none: use host`,
    );
  }
  if (asked !== 'auto') return asked;
  // the host buffer only where it was measured and tested: the CPU EP (other EPs keep the Optimum contract)
  return onDevice ? 'device' : seqlensFromMask && firstProvider(provider) === 'cpu' ? 'host-buffer' : 'host';
}

/** The outputs presentRowsFragment adds, in past order (key0, value0, key1, …). */
const presentRowNames = (layers: number) => Array.from({ length: layers }, (_, i) => [`present_rows.${i}.key`, `present_rows.${i}.value`]).flat();

/** What a single pass fetches with a host buffer (logits and each past's new rows); undefined otherwise. */
let rowFetches: string[] | undefined;

/**
 * A graph whose weights live in an external data file (`model.onnx_data`, `model.onnx.data`) that is
 * not beside it: ONNX Runtime reads the file named inside the graph, relative to the graph's folder.
 */
function missingExternalData(s: ModelSpec, err: Error): WorkerFailure | undefined {
  const m = /(?:does not exist|GetFileLength for|open file)[: ]*"?([^"\s]+)"?/i.exec(err.message);
  if (!m && !/external data/i.test(err.message)) return undefined;
  const file = m?.[1];
  return new WorkerFailure(
    'ModelLoadError',
    `${s.onnxPath} keeps its weights in external data${file ? ` (${file})` : ''} that cannot be read: keep the data file the export wrote (model.onnx_data, model.onnx.data) beside the graph under its original name (${err.message.trim()})`,
  );
}

const isKvDtype = (type: string): type is KvDtype => (KV_DTYPES as readonly string[]).includes(type);

/**
 * The KV's dtype, one for every past and present tensor, read from the graph; the logits must be
 * float32 or float16 too (float16 logits are converted as they are returned).
 */
function graphDtype(sess: ort.InferenceSession, s: ModelSpec): KvDtype {
  const meta = new Map([...sess.inputMetadata, ...sess.outputMetadata].map((m) => [m.name, m]));
  const typeOf = (name: string): string => {
    const m = meta.get(name);
    return m?.isTensor ? m.type : 'not a tensor';
  };
  const kvNames = Array.from({ length: s.layers }, (_, i) => [`past_key_values.${i}.key`, `past_key_values.${i}.value`, `present.${i}.key`, `present.${i}.value`]).flat();
  const kvTypes = [...new Set(kvNames.map(typeOf))];
  const kv = kvTypes[0]!;
  if (kvTypes.length !== 1 || !isKvDtype(kv)) {
    throw new WorkerFailure('ModelLoadError', `${s.onnxPath} keeps its KV as ${kvTypes.join(' and ')}: the runner takes ${KV_DTYPES.join(' or ')}, the same for every past and present tensor`);
  }
  const logits = typeOf('logits');
  if (!isKvDtype(logits)) throw new WorkerFailure('ModelLoadError', `${s.onnxPath} has ${logits} logits: the runner takes ${KV_DTYPES.join(' or ')}`);
  return kv;
}

/**
 * Inputs fed when the graph has them: RoPE positions, the merged decoder's branch flag, the rows of
 * logits wanted, a feature drafter's features (ForwardItem.hiddenStates).
 */
const OPTIONAL_INPUTS = ['position_ids', 'use_cache_branch', 'num_logits_to_keep', 'hidden_states'];

function checkContract(sess: ort.InferenceSession, s: ModelSpec): void {
  const need = ['input_ids', 'attention_mask'];
  for (let i = 0; i < s.layers; i++) need.push(`past_key_values.${i}.key`, `past_key_values.${i}.value`);
  const missing = need.filter((n) => !sess.inputNames.includes(n));
  const outs = ['logits', ...Array.from({ length: s.layers }, (_, i) => [`present.${i}.key`, `present.${i}.value`]).flat()];
  const missingOut = outs.filter((n) => !sess.outputNames.includes(n));
  const fed = new Set([...need, ...OPTIONAL_INPUTS]);
  const unknown = sess.inputNames.filter((n) => !fed.has(n));
  if (missing.length || missingOut.length || unknown.length) {
    throw new WorkerFailure(
      'ModelLoadError',
      `${s.onnxPath} does not follow the decoder-with-past contract for ${s.layers} layers (config.json's num_hidden_layers): ` +
        `missing inputs [${missing.join(', ')}] outputs [${missingOut.join(', ')}]` +
        (unknown.length ? `; inputs the runner cannot feed [${unknown.join(', ')}]` : '') +
        `. Expected inputs input_ids, attention_mask, past_key_values.N.key|value (optional: ${OPTIONAL_INPUTS.join(', ')}) and outputs logits, present.N.key|value, as optimum-cli export onnx --task text-generation-with-past writes them`,
    );
  }
}

const int64 = (values: readonly number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), dims);

/** Ones for one sequence's attention mask, grown by doubling; a pass feeds a view of its first rows. */
let ones = new BigInt64Array(0);
/** An all-ones attention mask [1, n] (one sequence: no padding), without converting n numbers to BigInt every pass. */
function onesMask(n: number): ort.Tensor {
  if (ones.length < n) ones = new BigInt64Array(Math.max(1024, 2 * n)).fill(1n);
  return new ort.Tensor('int64', ones.subarray(0, n), [1, n]);
}

function sequence(seqId: string): Sequence {
  let seq = sequences.get(seqId);
  if (!seq) {
    seq = { past: kv.empty(), length: 0, tokens: [] };
    sequences.set(seqId, seq);
  }
  return seq;
}

function positionsOf(item: ForwardItem, seq: Sequence): readonly number[] {
  if (item.positionIds) {
    if (item.positionIds.length !== item.inputIds.length) {
      throw new WorkerFailure('InvalidArgumentError', `positionIds has ${item.positionIds.length} entries for ${item.inputIds.length} tokens`);
    }
    return item.positionIds;
  }
  return item.inputIds.map((_, j) => seq.length + j);
}

/**
 * A graph without position_ids places new tokens right after the cache (its positions follow the
 * attention mask): explicit positions elsewhere (a bounded cache's) cannot be honoured, so refused.
 */
function checkImplicitPositions(item: ForwardItem, seq: Sequence): void {
  if (!item.positionIds || item.positionIds.every((p, j) => p === seq.length + j)) return;
  throw new WorkerFailure(
    'InvalidArgumentError',
    `${spec!.onnxPath} has no position_ids input, so its tokens always sit right after the cache: explicit positions (a bounded KV cache, --kv-policy) need a graph exported with position_ids`,
  );
}

function pastFeeds(feeds: Record<string, ort.Tensor>, past: ort.Tensor[]): void {
  for (let i = 0; i < spec!.layers; i++) {
    feeds[`past_key_values.${i}.key`] = past[2 * i]!;
    feeds[`past_key_values.${i}.value`] = past[2 * i + 1]!;
  }
}

function presents(out: ort.InferenceSession.OnnxValueMapType): ort.Tensor[] {
  const list: ort.Tensor[] = [];
  for (let i = 0; i < spec!.layers; i++) list.push(out[`present.${i}.key`] as ort.Tensor, out[`present.${i}.value`] as ort.Tensor);
  return list;
}

/** Rows [from, from+count) of a [rows, vocab] logits block as a new float32 array (float16 converted here, only these rows). */
function logitRows(logits: ort.Tensor, base: number, count: number, from: number, vocab: number): Float32Array {
  const rows = floatData(logits).subarray((base + from) * vocab, (base + from + count) * vocab);
  return rows instanceof Uint16Array ? halvesToFloats(rows) : rows.slice();
}

let lastAttention: Float32Array | undefined;

/**
 * Logits values one pass may produce (2^25 floats, 128 MB). A longer prefill runs in chunks of
 * LOGITS_BUDGET / vocab tokens (220 at a 152k vocabulary, 4096 at 8k), each over the KV of the ones
 * before, so ONNX Runtime never holds [prompt, vocab] logits at once (2.4 GB for 4k tokens at 152k),
 * and only the rows asked for are kept. A graph that returns every position's logits cannot skip
 * computing them; chunking bounds what it holds.
 */
const LOGITS_BUDGET = 2 ** 25;

/**
 * One sequence's new tokens, in chunks when their logits would pass LOGITS_BUDGET (not with
 * `attention`: H2O scores a whole step's queries at once); returns the last `rows` rows.
 */
async function forwardOne(item: ForwardItem, rows: LogitsRows, attention = false): Promise<Pass> {
  const s = item.inputIds.length;
  const want = rowCount(rows, s);
  const chunk = Math.max(1, Math.floor(LOGITS_BUDGET / logitsWidth(spec!)));
  if (attention || s <= chunk) return forwardPiece(item, want, attention);
  const seq = sequence(item.seqId);
  const positions = positionsOf(item, seq);
  const parts: Float32Array[] = [];
  const hidden: Float32Array[] = [];
  const size = features?.size ?? 0;
  for (let from = 0; from < s; from += chunk) {
    const to = Math.min(s, from + chunk);
    const needed = rowsInChunk(from, to, s, want);
    const piece: ForwardItem = {
      seqId: item.seqId,
      inputIds: item.inputIds.slice(from, to),
      ...(item.positionIds ? { positionIds: positions.slice(from, to) } : {}),
      ...(item.hiddenStates ? { hiddenStates: item.hiddenStates.subarray(from * size, to * size) } : {}),
      ...(item.returnHidden ? { returnHidden: true } : {}),
    };
    const pass = await forwardPiece(piece, Math.max(1, needed), false);
    if (needed > 0) parts.push(pass.logits);
    if (pass.hidden) hidden.push(pass.hidden);
  }
  return { logits: joinRows(parts), ...(item.returnHidden ? { hidden: joinRows(hidden) } : {}) };
}

/** What one pass of one sequence returns: its last logits rows, and its features when asked (ForwardItem.returnHidden). */
interface Pass {
  readonly logits: Float32Array;
  readonly hidden?: Float32Array;
}

/** One pass of one sequence's new tokens; returns the last `want` rows of its logits (and every token's features when asked). */
async function forwardPiece(item: ForwardItem, want: number, attention: boolean): Promise<Pass> {
  const seq = sequence(item.seqId);
  const s = item.inputIds.length;
  const positions = positionsOf(item, seq);
  const pad = padsRow(item, seq, attention) ? 1 : 0;
  // a padded pass feeds the token twice; the copy sits at the same position when positions are fed
  const ids = pad ? [item.inputIds[0]!, item.inputIds[0]!] : item.inputIds;
  const fed = s + pad;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: int64(ids, [1, fed]),
    attention_mask: onesMask(seq.length + fed),
  };
  if (feedsPositions) feeds.position_ids = int64(pad ? [positions[0]!, positions[0]!] : positions, [1, fed]);
  else checkImplicitPositions(item, seq);
  if (feedsCacheBranch) feeds.use_cache_branch = new ort.Tensor('bool', Uint8Array.of(seq.length > 0 ? 1 : 0), [1]);
  if (feedsLogitsToKeep) feeds.num_logits_to_keep = int64Scalar(logitsToKeep(want + pad, fed));
  if (item.hiddenStates) feeds.hidden_states = new ort.Tensor('float32', item.hiddenStates, [1, s, features!.size]);
  pastFeeds(feeds, seq.past);
  // the features output only when asked: a pass that does not want them does not copy them out;
  // with a host buffer only the new rows come out, and are written after the others
  const fetches = rowFetches ? [...rowFetches, ...(item.returnHidden ? [features!.output!] : [])] : item.returnHidden ? session!.outputNames : plainFetches;
  const out = await session!.run(feeds, fetches);
  if (rowFetches) {
    const tensors = presentRowNames(spec!.layers).map((n) => floatData(out[n] as ort.Tensor));
    seq.past = await kv.append(seq.past, seq.length, { dtype: kvDtype, count: fed, kvHeads: spec!.kvHeads, tensors });
  } else {
    const old = seq.past;
    seq.past = presents(out);
    kv.free(old);
    // a padded-attention graph's presents hold its zero row after the pass's tokens (paddedAttention)
    const held = seq.past[0]!.dims[2]!;
    if (held > seq.length + fed) seq.past = await kv.truncate(seq.past, held, seq.length + fed);
  }
  // the copy's KV row goes (in a host buffer it stays beyond the length, overwritten by the next pass)
  if (pad) seq.past = await kv.truncate(seq.past, seq.length + fed, seq.length + s);
  appendTokens(seq, item.inputIds, positions);
  seq.length += s;
  if (attention) {
    const sums = floatData(out.attention_sum as ort.Tensor);
    lastAttention = sums instanceof Uint16Array ? halvesToFloats(sums) : sums.slice();
  }
  const logits = out.logits as ort.Tensor;
  const rows = logits.dims[1]!; // fed, or `want + pad` when the graph kept only those
  if (rows < want + pad) throw new WorkerFailure('ModelRuntimeError', `${spec!.onnxPath} returned ${rows} logits rows for ${want + pad} asked (num_logits_to_keep)`);
  const result = logitRows(logits, 0, want, rows - want - pad, logitsWidth(spec!));
  if (!item.returnHidden) return { logits: result };
  const hidden = floatData(out[features!.output!] as ort.Tensor);
  return { logits: result, hidden: hidden instanceof Uint16Array ? halvesToFloats(hidden.subarray(0, s * features!.size)) : hidden.slice(0, s * features!.size) };
}

/**
 * The rows a pass of `fed` tokens asks its head for (num_logits_to_keep), `wanted` of them needed.
 * Under batch invariance never one of several, so that no MatMulNBits, the head included, runs its
 * one-row kernel (padSingleRows): a prompt's last row is scored as two, as every other pass's rows
 * are. A precaution: for the head alone no difference was measured (a prompt's last row against a
 * verify pass's, 6 prompts, 8- and 4-bit heads: 0), but the runner does not rely on that.
 */
const logitsToKeep = (wanted: number, fed: number): number => (padSingleRows ? Math.max(wanted, Math.min(2, fed)) : wanted);

/**
 * Whether this pass runs padded to two rows (padSingleRows): one token, no attention sums (an H2O
 * step scores its own queries) and no features fed (a feature drafter drafts; its rows are
 * reviewed), and, for a graph that places tokens after its cache (no position_ids), room for the
 * copy's position: such a graph's one-token pass at its last position runs unpadded, so that one
 * token is not invariant. With position_ids the copy shares the token's position and always fits.
 */
function padsRow(item: ForwardItem, seq: Sequence, attention: boolean): boolean {
  if (!padSingleRows || item.inputIds.length !== 1 || attention || item.hiddenStates) return false;
  return feedsPositions || spec!.maxPositions === undefined || seq.length + 2 <= spec!.maxPositions;
}

/**
 * Refuses feature requests the graph cannot serve: features fed to a graph without the input (or
 * missing where it has one), of the wrong size, or asked of a graph without the output.
 */
function checkFeatures(it: ForwardItem): void {
  const where = spec!.onnxPath;
  if (features?.input && !it.hiddenStates) throw new WorkerFailure('InvalidArgumentError', `${where} is a feature drafter: every forward needs hiddenStates (its hidden_states input) beside the tokens`);
  if (it.hiddenStates && !features?.input) throw new WorkerFailure('InvalidArgumentError', `${where} has no hidden_states input: it takes no features`);
  if (it.hiddenStates && it.hiddenStates.length !== it.inputIds.length * features!.size) {
    throw new WorkerFailure('InvalidArgumentError', `hiddenStates for ${it.seqId} holds ${it.hiddenStates.length} values: ${it.inputIds.length} tokens need [${it.inputIds.length}, ${features!.size}]`);
  }
  if (it.returnHidden && !features?.output) {
    throw new WorkerFailure('ModelRuntimeError', `${where} has no hidden_states output, so it cannot hand its features to a feature drafter (--eagle-model): add it with tools/train/add_hidden_output.py`);
  }
}

const int64Scalar = (value: number) => new ort.Tensor('int64', BigInt64Array.of(BigInt(value)), []);

/**
 * Several sequences' forwards, in input order: one stacked pass (forwardStacked), except under batch
 * invariance (padSingleRows), where only sequences whose pasts are equally long share a pass: a
 * left-padded past shifts the keys, and the attention's sums then round differently (up to 1e-1 in
 * a level-4 graph's logits once its int8 activations amplify it, unless the shift is a multiple of 4
 * on this CPU), and a fused graph's one-token sequences run one by one (GroupQueryAttention takes no
 * batch of two-token sequences over a past: "batch_size must be 1"), as do a padded-attention graph's
 * sequences, whose every pass is at least two rows there (paddedAttention). A failure then leaves every
 * sequence as it was: those that had run are rolled back.
 */
async function forwardBatch(items: readonly ForwardItem[], rows: LogitsRows): Promise<Float32Array[]> {
  if (!feedsPositions) {
    throw new WorkerFailure(
      'InvalidArgumentError',
      `${spec!.onnxPath} has no position_ids input, so a pass of several sequences (left-padded pasts) would give them wrong positions: run it one sequence per pass (--max-batch 1) or export it with position_ids`,
    );
  }
  if (!padSingleRows && !paddedAttention) return forwardStacked(items, rows);
  const lengths = items.map((it) => sequence(it.seqId).length);
  // (a padded-attention graph's every pass has two rows or more at its GroupQueryAttention)
  const alone = seqlensFromMask && (paddedAttention || items.every((it) => it.inputIds.length === 1));
  const groups = new Map<number, number[]>();
  items.forEach((_, i) => {
    const key = alone ? -1 - i : lengths[i]!;
    groups.set(key, [...(groups.get(key) ?? []), i]);
  });
  const out: Float32Array[] = [];
  try {
    for (const members of groups.values()) {
      const group = members.map((i) => items[i]!);
      const logits = group.length === 1 ? [(await forwardPiece(group[0]!, rowCount(rows, group[0]!.inputIds.length), false)).logits] : await forwardStacked(group, rows);
      members.forEach((i, j) => (out[i] = logits[j]!));
    }
  } catch (err) {
    for (const [i, it] of items.entries()) if (sequence(it.seqId).length > lengths[i]!) await truncate(it.seqId, lengths[i]!);
    throw err;
  }
  return out;
}

/**
 * Several sequences in one pass. Pasts are left-padded to the longest (padding masked out) and new
 * tokens right-padded; the causal mask is by cache index, so every real query sees exactly its own
 * past and earlier new tokens. Each sequence's presents are cut back out of the batch.
 */
async function forwardStacked(items: readonly ForwardItem[], rows: LogitsRows): Promise<Float32Array[]> {
  const sp = spec!;
  const seqs = items.map((it) => sequence(it.seqId));
  const b = items.length;
  const maxP = Math.max(...seqs.map((q) => q.length));
  const maxS = Math.max(...items.map((it) => it.inputIds.length));
  // batch invariance (padSingleRows): ONNX Runtime's MatMulNBits takes its one-row kernel per
  // sequence of a batch, so one-token sequences each get a copy of their token (a second row, dropped)
  const pad = padSingleRows && maxS === 1 ? 1 : 0;
  const width = maxS + pad;
  if (seqlensFromMask && (seqs.some((q) => q.length !== maxP) || items.some((it) => it.inputIds.length !== maxS) || (maxS > 1 && maxP > 0))) {
    throw new WorkerFailure(
      'InvalidArgumentError',
      `${sp.onnxPath} is a fused graph (GroupQueryAttention), which takes each sequence's length from its attention mask and cannot skip padding: ` +
        `a pass of several sequences runs only when they have equal pasts and one new token each (here pasts [${seqs.map((q) => q.length).join(', ')}], new tokens [${items.map((it) => it.inputIds.length).join(', ')}]); ` +
        `run it one sequence per pass (--max-batch 1) or use the unfused graph`,
    );
  }
  const ids: number[] = [];
  const pos: number[] = [];
  const mask: number[] = [];
  items.forEach((it, i) => {
    const p = positionsOf(it, seqs[i]!);
    const s = it.inputIds.length;
    for (let j = 0; j < width; j++) {
      ids.push(j < s ? it.inputIds[j]! : pad ? it.inputIds[0]! : 0);
      pos.push(j < s ? p[j]! : p[s - 1]!);
    }
    const left = maxP - seqs[i]!.length;
    for (let j = 0; j < maxP + width; j++) mask.push(j < left || j >= maxP + s + pad ? 0 : 1);
  });
  const feeds: Record<string, ort.Tensor> = {
    input_ids: int64(ids, [b, width]),
    attention_mask: int64(mask, [b, maxP + width]),
  };
  feeds.position_ids = int64(pos, [b, width]);
  // the head scores only the rows asked, each sequence's last ones, when no input is right-padded
  // (a fused graph's passes: a batched prompt pass of equal prompts, or a token each); with right
  // padding a sequence's last rows are not the batch's last, so every row is kept (0)
  const kept = feedsLogitsToKeep && items.every((it) => it.inputIds.length === maxS) ? logitsToKeep(Math.max(...items.map((it) => rowCount(rows, it.inputIds.length))) + pad, width) : 0;
  if (feedsLogitsToKeep) feeds.num_logits_to_keep = int64Scalar(kept);
  if (feedsCacheBranch) feeds.use_cache_branch = new ort.Tensor('bool', Uint8Array.of(maxP > 0 ? 1 : 0), [1]);
  // every past left-padded to the longest and stacked, where the KV lives (kv-placement.ts)
  const batched = await kv.batch(
    seqs.map((q) => q.past),
    seqs.map((q) => q.length),
    maxP,
  );
  pastFeeds(feeds, batched);
  let out: ort.InferenceSession.OnnxValueMapType;
  try {
    out = await session!.run(feeds);
  } finally {
    kv.free(batched);
  }
  const total = maxP + width;
  const logits = out.logits as ort.Tensor;
  const perSequence = logits.dims[1]!; // rows returned per sequence, its last ones: `kept`, or every row (a graph may ignore the input)
  if (perSequence < (kept || width)) {
    kv.free(presents(out));
    throw new WorkerFailure('ModelRuntimeError', `${sp.onnxPath} returned ${perSequence} logits rows per sequence for ${kept || width} asked (num_logits_to_keep)`);
  }
  // each sequence's rows: after its left padding, before the right padding of shorter inputs (and the copies)
  const spans = items.map((it, i) => ({ start: maxP - seqs[i]!.length, length: seqs[i]!.length + it.inputIds.length }));
  const stacked = presents(out);
  let pasts: ort.Tensor[][];
  try {
    pasts = await kv.split(stacked, spans, total);
  } catch (err) {
    kv.free(stacked);
    throw err;
  }
  return items.map((it, i) => {
    const q = seqs[i]!;
    const s = it.inputIds.length;
    kv.free(q.past);
    q.past = pasts[i]!;
    appendTokens(q, it.inputIds, positionsOf(it, q));
    q.length = spans[i]!.length;
    const want = rowCount(rows, s);
    return logitRows(logits, i * perSequence, want, s - want - (width - perSequence), logitsWidth(sp));
  });
}

const upTo = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Keeps `seq.tokens` in step with rows appended at `positions` (called before `seq.length` grows):
 * rows anywhere but right after a token prefix make the sequence no prefix source.
 */
function appendTokens(seq: Sequence, ids: readonly number[], positions: readonly number[]): void {
  const tokens = seq.tokens;
  if (!tokens) return;
  if (tokens.length !== seq.length || positions.some((p, j) => p !== seq.length + j)) {
    seq.tokens = undefined;
    return;
  }
  for (const t of ids) tokens.push(t);
}

/** A forward item as run after prefix reuse: its tokens not copied, and how many were. */
interface Fed {
  readonly item: ForwardItem;
  readonly reused: number;
}

/**
 * Automatic prefix caching (prefix-cache.ts): when the item's sequence holds nothing and its tokens
 * start at position 0, copies the rows of the longest prefix of them that another live sequence
 * holds, leaving every logits row `rows` asks for to compute; returns the tokens left to feed.
 */
async function reusePrefix(item: ForwardItem, rows: LogitsRows): Promise<Fed> {
  const seq = sequence(item.seqId);
  const none = { item, reused: 0 };
  if (!prefixCache || seq.length !== 0 || item.positionIds?.some((p, j) => p !== j)) return none;
  function* sources(): Generator<readonly [Sequence, readonly number[]]> {
    for (const q of sequences.values()) if (q !== seq && q.tokens && q.length > 0) yield [q, q.tokens];
    yield* retained.sources();
  }
  const hit = longestPrefix(item.inputIds, sources(), reusableLimit(item.inputIds.length, rows));
  if (!hit) return none;
  retained.used(hit.source);
  const n = hit.length;
  const past = await kv.copyPrefix(hit.source.past, hit.source.length, n);
  kv.free(seq.past);
  seq.past = past;
  seq.length = n;
  seq.tokens = item.inputIds.slice(0, n);
  const rest = { seqId: item.seqId, inputIds: item.inputIds.slice(n), ...(item.positionIds ? { positionIds: item.positionIds.slice(n) } : {}) };
  return { item: rest, reused: n };
}

/**
 * Runs a forward over items after prefix reuse; when it fails, a sequence that copied a prefix is
 * emptied again, so it holds what the caller believes (nothing) and a retry feeds every token.
 */
async function undoReuseOnFailure<T>(fed: readonly Fed[], run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    for (const f of fed) {
      const seq = f.reused ? sequences.get(f.item.seqId) : undefined;
      if (!seq) continue;
      kv.free(seq.past);
      seq.past = kv.empty();
      seq.length = 0;
      seq.tokens = [];
    }
    throw err;
  }
}

async function truncate(seqId: string, length: number): Promise<void> {
  const seq = sequences.get(seqId);
  const current = seq?.length ?? 0;
  if (!Number.isInteger(length) || length < 0 || length > current) {
    throw new WorkerFailure('SequenceError', `cannot truncate sequence ${seqId} of length ${current} to ${length}`);
  }
  if (!seq || length === current) return;
  seq.past = await kv.truncate(seq.past, current, length);
  seq.length = length;
  if (length === 0) seq.tokens = [];
  else if (seq.tokens) seq.tokens.length = length;
}

/** Removes rows at `indices` from every past tensor; returns them (same layout) when `take`. */
async function evict(seqId: string, indices: readonly number[], take: boolean): Promise<KvRows | undefined> {
  const seq = sequences.get(seqId);
  const n = seq?.length ?? 0;
  const gone = new Set(indices);
  if (gone.size !== indices.length || indices.some((i) => !Number.isInteger(i) || i < 0 || i >= n)) {
    throw new WorkerFailure('SequenceError', `cannot evict rows [${indices.join(', ')}] from sequence ${seqId} of length ${n}`);
  }
  const sp = spec!;
  if (!seq || gone.size === 0) return take ? { dtype: kvDtype, count: 0, kvHeads: sp.kvHeads, tensors: Array.from({ length: 2 * sp.layers }, () => kvArray(kvDtype, 0)) } : undefined;
  const kept = upTo(n).filter((i) => !gone.has(i));
  // only the taken rows leave the device (a spill), before the kept ones replace the cache
  const taken = take ? await kv.take(seq.past, n, indices) : [];
  seq.past = await kv.gather(seq.past, n, kept);
  seq.length = kept.length;
  seq.tokens = kept.length === 0 ? [] : undefined;
  return take ? { dtype: kvDtype, count: indices.length, kvHeads: sp.kvHeads, tensors: taken } : undefined;
}

function checkRows(seqId: string, rows: KvRows): void {
  const sp = spec!;
  if (rows.dtype !== kvDtype || rows.tensors.some((t) => dtypeOf(t) !== kvDtype)) {
    const held = rows.tensors.find((t) => dtypeOf(t) !== rows.dtype);
    const what = held ? `${rows.dtype} KV rows held in a ${held.constructor.name}` : `${rows.dtype} KV rows`;
    throw new WorkerFailure('InvalidArgumentError', `cannot insert ${what} into ${seqId}: ${sp.name} keeps its KV as ${kvDtype}`);
  }
  if (rows.kvHeads !== sp.kvHeads || rows.tensors.length !== 2 * sp.layers || rows.tensors.some((t) => t.length !== sp.kvHeads * rows.count * sp.headDim)) {
    throw new WorkerFailure('InvalidArgumentError', `KV rows for ${seqId} do not fit ${sp.layers} layers x ${sp.kvHeads} heads x ${sp.headDim} dims`);
  }
}

async function insert(seqId: string, rows: KvRows): Promise<void> {
  checkRows(seqId, rows);
  const seq = sequence(seqId);
  seq.past = await kv.append(seq.past, seq.length, rows);
  seq.length += rows.count;
  if (rows.count > 0) seq.tokens = undefined;
}

/** Refuses an item with no tokens, tokens outside the vocabulary, or features the graph cannot serve. */
function checkItem(it: ForwardItem): void {
  if (it.inputIds.length === 0) throw new WorkerFailure('InvalidArgumentError', `forward on ${it.seqId} with no tokens`);
  const bad = it.inputIds.find((t) => !Number.isInteger(t) || t < 0 || t >= spec!.vocabSize);
  if (bad !== undefined) throw new WorkerFailure('InvalidArgumentError', `token id ${bad} outside the vocabulary of ${spec!.vocabSize}`);
  checkFeatures(it);
}

/** One sequence, everything in one call: roll back (`keep`), evict, insert, then the pass (reusing a prefix where it can). */
async function forwardSingle(it: ForwardItem, rows: LogitsRows, attention: boolean): Promise<{ pass: Pass; reused: number; evicted: KvRows | undefined }> {
  if (it.insert) checkRows(it.seqId, it.insert);
  if (it.keep !== undefined) await truncate(it.seqId, it.keep);
  const evicted = it.evict?.length ? await evict(it.seqId, it.evict, it.takeEvicted ?? false) : undefined;
  if (it.insert) await insert(it.seqId, it.insert);
  // H2O scores every token of the call: an attention step computes them all; features are
  // every token's too, and a feature drafter's rows depend on the features fed, not only the tokens
  const fed = attention || it.evict?.length || it.insert || it.hiddenStates || it.returnHidden ? { item: it, reused: 0 } : await reusePrefix(it, rows);
  const pass = await undoReuseOnFailure([fed], () => forwardOne(fed.item, rows, attention));
  return { pass, reused: fed.reused, evicted };
}

/**
 * ModelSession.decode: feeds `item`, then draws and feeds tokens here until `plan.steps` are chosen
 * or a stop id is; the last chosen token is not fed. Returns the 1..plan.steps chosen token ids and
 * the tokens of the item whose KV rows came from another sequence (prefix cache). Throws
 * InvalidArgumentError for a bad plan, positions, features or a reduced head, SequenceError for a
 * bad `keep`. On failure the sequence goes back to `keep` (or its length before the call), so the
 * caller's count stays true.
 */
async function decode(item: ForwardItem, plan: DecodePlan): Promise<{ tokens: number[]; reused: number }> {
  const base = Math.min(item.keep ?? Infinity, sequences.get(item.seqId)?.length ?? 0);
  try {
    checkItem(item);
    if (item.evict?.length || item.insert || item.hiddenStates || item.returnHidden) throw new WorkerFailure('InvalidArgumentError', 'decode feeds tokens only: no evict, insert or features');
    const bad = decodePlanError(plan);
    if (bad) throw new WorkerFailure('InvalidArgumentError', bad);
    if (item.positionIds && !item.positionIds.every((p, j) => p === base + j)) {
      throw new WorkerFailure('InvalidArgumentError', `decode places its tokens right after the sequence's ${base}: positionIds ${JSON.stringify(item.positionIds)} say otherwise`);
    }
    if (plan.tokens.length !== base + item.inputIds.length || item.inputIds.some((t, j) => plan.tokens[base + j] !== t)) {
      throw new WorkerFailure('InvalidArgumentError', `decode on ${item.seqId}: the plan's ${plan.tokens.length} tokens are not the ${base + item.inputIds.length} the sequence will hold, ending in the ones fed`);
    }
    if (spec!.draftVocab) throw new WorkerFailure('InvalidArgumentError', `${spec!.onnxPath} has a reduced head (draftVocab): its logits rows are not token ids to draw from, so it does not decode`);
    const noise = plan.sampling.temperature > 0 ? new PositionNoise(plan.noiseSeed!) : undefined;
    const stop = new Set(plan.stopIds ?? []);
    const tokens = [...plan.tokens];
    const chosen: number[] = [];
    const { pass, reused } = await forwardSingle(item, 'last', false);
    let row = pass.logits;
    for (;;) {
      const token = drawToken(row, plan.sampling, { tokens, length: tokens.length, promptLength: plan.promptLength }, noise);
      chosen.push(token);
      if (chosen.length === plan.steps || stop.has(token)) return { tokens: chosen, reused };
      tokens.push(token);
      row = (await forwardPiece({ seqId: item.seqId, inputIds: [token] }, 1, false)).logits;
    }
  } catch (err) {
    if ((sequences.get(item.seqId)?.length ?? 0) > base) await truncate(item.seqId, base).catch(() => undefined);
    throw err;
  }
}

async function handle(msg: WorkerRequest): Promise<WorkerReply> {
  switch (msg.op) {
    case 'load':
      return { id: msg.id, ok: true, ...(await load(msg.spec, msg.options)) };
    case 'forward': {
      for (const it of msg.items) checkItem(it);
      if (new Set(msg.items.map((it) => it.seqId)).size !== msg.items.length) throw new WorkerFailure('InvalidArgumentError', 'a batch may hold each sequence only once');
      const single = msg.items.length === 1;
      if (!single && (msg.attention || msg.items.some((it) => it.evict?.length || it.insert || it.hiddenStates || it.returnHidden))) {
        throw new WorkerFailure('InvalidArgumentError', 'attention, evict, insert and features work on one sequence at a time');
      }
      if (msg.attention && !hasAttention) {
        const why = seqlensFromMask ? 'it is a fused graph (GroupQueryAttention), which returns no attention probabilities: use the unfused graph' : 're-export it with tools/train/export.py';
        throw new WorkerFailure('ModelRuntimeError', `${spec!.onnxPath} has no attention_sum output: ${why}`);
      }
      if (single) {
        const { pass, reused, evicted } = await forwardSingle(msg.items[0]!, msg.rows, msg.attention ?? false);
        return {
          id: msg.id,
          ok: true,
          logits: [pass.logits],
          ...(pass.hidden ? { hidden: pass.hidden } : {}),
          ...(reused ? { reused: [reused] } : {}),
          ...(msg.attention ? { attention: lastAttention! } : {}),
          ...(evicted ? { evicted } : {}),
        };
      }
      for (const it of msg.items) if (it.keep !== undefined) await truncate(it.seqId, it.keep);
      // a fused graph's batch needs equal pasts: a copied prefix would make them unequal
      const fed: Fed[] = [];
      for (const it of msg.items) fed.push(seqlensFromMask ? { item: it, reused: 0 } : await reusePrefix(it, msg.rows));
      const logits = await undoReuseOnFailure(fed, () => forwardBatch(fed.map((f) => f.item), msg.rows));
      return { id: msg.id, ok: true, logits, ...(fed.some((f) => f.reused) ? { reused: fed.map((f) => f.reused) } : {}) };
    }
    case 'decode': {
      const { tokens, reused } = await decode(msg.item, msg.plan);
      return { id: msg.id, ok: true, tokens, ...(reused ? { reused: [reused] } : {}) };
    }
    case 'truncate':
      await truncate(msg.seqId, msg.length);
      return { id: msg.id, ok: true };
    case 'evict': {
      const rows = await evict(msg.seqId, msg.indices, msg.take);
      return rows ? { id: msg.id, ok: true, rows } : { id: msg.id, ok: true };
    }
    case 'insert':
      await insert(msg.seqId, msg.rows);
      return { id: msg.id, ok: true };
    case 'release': {
      const seq = sequences.get(msg.seqId);
      if (seq) await retain(seq);
      sequences.delete(msg.seqId);
      return { id: msg.id, ok: true };
    }
  }
}

/** Requests run one at a time, in arrival order: a truncate never interleaves with a forward. */
let queue: Promise<unknown> = Promise.resolve();
parentPort!.on('message', (msg: WorkerRequest) => {
  queue = queue.then(() => handle(msg)).then(
    (reply) => parentPort!.postMessage(reply, reply.ok ? [...(reply.logits ?? []), ...(reply.attention ? [reply.attention] : []), ...(reply.hidden ? [reply.hidden] : []), ...(reply.rows?.tensors ?? []), ...(reply.evicted?.tensors ?? [])].map((a) => a.buffer as ArrayBuffer) : []),
    (err: Error) => parentPort!.postMessage({ id: msg.id, ok: false, error: { name: err.name, message: err.message } } satisfies WorkerReply),
  );
});
