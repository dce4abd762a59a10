/**
 * Where a model worker keeps its sequences' past_key_values, and the cache operations a cascade
 * needs there: roll back (truncate), release rows (evict, taking them to spill), append rebuilt rows
 * (insert), and assemble a batched pass (left-pad every past to the longest, stack them) and cut its
 * presents back apart. Runs inside the model's worker thread (ort-worker.ts).
 *
 * - HostKv: the cache is JavaScript arrays; ORT copies it in and out of every pass (the CPU EP, and
 *   any EP with `kvLocation: 'host'`).
 * - HostBufferKv: the cache is one JavaScript buffer per past tensor, with room to grow; a
 *   GroupQueryAttention graph reads it in place (its sequence lengths come from the attention mask,
 *   not the past's shape) and each pass returns only its new rows (onnx-proto.ts,
 *   presentRowsFragment), which are written after the others. Nothing is copied out of ONNX Runtime
 *   but those rows: onnxruntime-node copies every CPU output into a new JavaScript buffer, so the
 *   presents of the Optimum contract cost a copy of the whole cache each pass.
 * - DeviceKv: the presents stay where the EP computed them (IO binding: `preferredOutputLocation:
 *   'gpu-buffer'`, as measured in ../shared/gpu/README.md) and are fed back as the next pass's past.
 *   Every cache operation is a small ONNX graph (Gather, Concat, Pad, Slice over the 2 x layers
 *   tensors, onnx-proto.ts) run on the same EP, so nothing but the rows a spill takes ever crosses
 *   to the host. The shape follows onnxruntime-genai's KeyValueCache (one [batch, kv_heads, length,
 *   head_dim] tensor per past, replaced by the presents each step) rather than a static buffer,
 *   which would need a graph whose attention writes in place (GroupQueryAttention with a shared
 *   past/present buffer).
 */
import * as ort from 'onnxruntime-node';
import type { ModelSpec } from './config.ts';
import { gatherRows, kvArray } from './kv-store.ts';
import { ELEM, model, node, intAttr, valueInfo } from './onnx-proto.ts';
import type { KvArray, KvDtype, KvRows } from './session.ts';

/**
 * Where the KV lives: `auto` puts it on the device when the session runs on a GPU EP (webgpu), in a
 * host buffer for a GroupQueryAttention graph on the CPU, else on the host.
 */
export type KvLocation = 'auto' | 'host' | 'host-buffer' | 'device';

/** A sequence's rows in a batched pass's presents. */
export interface Span {
  readonly start: number;
  readonly length: number;
}

export interface KvPlacement {
  readonly location: 'host' | 'host-buffer' | 'device';
  /** 2 x layers empty tensors [1, kvHeads, 0, headDim] (a sequence's first past). */
  empty(): ort.Tensor[];
  /** Rows `indices` (ascending cache order) of a past of `length` rows; the old tensors are freed. */
  gather(past: ort.Tensor[], length: number, indices: readonly number[]): Promise<ort.Tensor[]>;
  /**
   * The first `keep` rows of a past of `length` rows (a rollback, or a padded pass's copy row
   * dropped): on the host in place, so the old tensors must not be used after.
   */
  truncate(past: ort.Tensor[], length: number, keep: number): Promise<ort.Tensor[]>;
  /**
   * A new past holding rows [0, count) of `past` (of `length` rows), which stays as it is: another
   * sequence's prefix (prefix-cache.ts). On the device the copy never leaves it.
   */
  copyPrefix(past: ort.Tensor[], length: number, count: number): Promise<ort.Tensor[]>;
  /** Rows `indices` of a past, as host arrays [kvHeads, indices.length, headDim] (a spill). */
  take(past: ort.Tensor[], length: number, indices: readonly number[]): Promise<KvArray[]>;
  /** The past with `rows` (host arrays) appended; the old tensors are freed. */
  append(past: ort.Tensor[], length: number, rows: KvRows): Promise<ort.Tensor[]>;
  /** A batched pass's pasts: each sequence's left-padded to `maxP` rows, stacked [b, kvHeads, maxP, headDim]. */
  batch(pasts: readonly ort.Tensor[][], lengths: readonly number[], maxP: number): Promise<ort.Tensor[]>;
  /**
   * Each sequence's rows of a batched pass's presents [b, kvHeads, total, headDim]: rows
   * [start, start + length) of batch row i (left padding before them, right padding after). The
   * presents are freed.
   */
  split(presents: readonly ort.Tensor[], rows: readonly Span[], total: number): Promise<ort.Tensor[][]>;
  /** Frees a past's tensors (device memory); a no-op on the host. */
  free(past: readonly ort.Tensor[]): void;
}

/** A past tensor [batch, kvHeads, length, headDim] over `data`; its dtype follows the array's. */
export function kvTensor(data: KvArray, dims: number[]): ort.Tensor {
  return data instanceof Uint16Array ? new ort.Tensor('float16', data, dims) : new ort.Tensor('float32', data, dims);
}

/** A float32 or float16 host tensor's values, float16 as Uint16Array bit patterns (whatever array ORT used). */
export function floatData(t: ort.Tensor): KvArray {
  const data = t.data as Float32Array | Uint16Array;
  if (data instanceof Float32Array || data instanceof Uint16Array) return data;
  const view = data as ArrayBufferView & { length: number };
  return new Uint16Array(view.buffer, view.byteOffset, view.length);
}

function emptyPast(spec: ModelSpec, dtype: KvDtype): ort.Tensor[] {
  return Array.from({ length: 2 * spec.layers }, () => kvTensor(kvArray(dtype, 0), [1, spec.kvHeads, 0, spec.headDim]));
}

/** The cache as JavaScript arrays: every operation is a copy on this thread. */
export class HostKv implements KvPlacement {
  readonly location: 'host' | 'host-buffer' = 'host';
  constructor(
    protected readonly spec: ModelSpec,
    protected readonly dtype: KvDtype,
  ) {}

  empty(): ort.Tensor[] {
    return emptyPast(this.spec, this.dtype);
  }

  async gather(past: ort.Tensor[], length: number, indices: readonly number[]): Promise<ort.Tensor[]> {
    const { kvHeads, headDim } = this.spec;
    return past.map((t) => kvTensor(gatherRows(floatData(t), length, indices, kvHeads), [1, kvHeads, indices.length, headDim]));
  }

  async truncate(past: ort.Tensor[], length: number, keep: number): Promise<ort.Tensor[]> {
    if (keep === length) return past;
    // a view keeps its whole buffer (a batch's presents, for a split's view) alive: keeping under a
    // quarter of it, copy what stays, as HostBufferKv shrinks
    if (4 * keep < length) return this.gather(past, length, upTo(keep));
    const { kvHeads, headDim } = this.spec;
    // head h's rows move from h * length to h * keep: forwards, so a move never overwrites a source
    // not yet moved; the tensors become views of their own buffers' starts (no allocation)
    return past.map((t) => {
      const data = floatData(t);
      for (let h = 1; h < kvHeads; h++) data.copyWithin(h * keep * headDim, h * length * headDim, (h * length + keep) * headDim);
      return kvTensor(data.subarray(0, kvHeads * keep * headDim), [1, kvHeads, keep, headDim]);
    });
  }

  async copyPrefix(past: ort.Tensor[], length: number, count: number): Promise<ort.Tensor[]> {
    return this.gather(past, length, upTo(count));
  }

  async take(past: ort.Tensor[], length: number, indices: readonly number[]): Promise<KvArray[]> {
    return past.map((t) => gatherRows(floatData(t), length, indices, this.spec.kvHeads));
  }

  async append(past: ort.Tensor[], length: number, rows: KvRows): Promise<ort.Tensor[]> {
    const { kvHeads, headDim } = this.spec;
    const total = length + rows.count;
    return past.map((t, k) => {
      const src = floatData(t);
      const add = rows.tensors[k]!;
      const dst = kvArray(this.dtype, kvHeads * total * headDim);
      for (let h = 0; h < kvHeads; h++) {
        dst.set(src.subarray(h * length * headDim, (h + 1) * length * headDim), h * total * headDim);
        dst.set(add.subarray(h * rows.count * headDim, (h + 1) * rows.count * headDim), (h * total + length) * headDim);
      }
      return kvTensor(dst, [1, kvHeads, total, headDim]);
    });
  }

  async batch(pasts: readonly ort.Tensor[][], lengths: readonly number[], maxP: number): Promise<ort.Tensor[]> {
    const { kvHeads, headDim, layers } = this.spec;
    const b = pasts.length;
    const block = maxP * headDim;
    return Array.from({ length: 2 * layers }, (_, t) => {
      const data = kvArray(this.dtype, b * kvHeads * block);
      pasts.forEach((past, i) => {
        const src = floatData(past[t]!);
        // a past's third dimension is its rows in memory: its length here, a buffer's capacity in HostBufferKv
        const stride = past[t]!.dims[2]!;
        const n = lengths[i]!;
        const pad = maxP - n;
        for (let h = 0; h < kvHeads; h++) data.set(src.subarray(h * stride * headDim, (h * stride + n) * headDim), (i * kvHeads + h) * block + pad * headDim);
      });
      return kvTensor(data, [b, kvHeads, maxP, headDim]);
    });
  }

  /** The rows a sequence's past holds in memory after a batched pass gave it `length` rows. */
  protected capacityFor(length: number): number {
    return length;
  }

  async split(presents: readonly ort.Tensor[], rows: readonly Span[], total: number): Promise<ort.Tensor[][]> {
    const { kvHeads, headDim } = this.spec;
    return rows.map(({ start, length: len }, i) =>
      presents.map((t) => {
        const src = floatData(t);
        const cap = this.capacityFor(len);
        // a sequence that filled its rows of the batch exactly is a contiguous slab: a view, not a copy
        if (start === 0 && len === total && cap === len) return kvTensor(src.subarray(i * kvHeads * total * headDim, (i + 1) * kvHeads * total * headDim), [1, kvHeads, len, headDim]);
        const dst = kvArray(this.dtype, kvHeads * cap * headDim);
        for (let h = 0; h < kvHeads; h++) {
          const from = ((i * kvHeads + h) * total + start) * headDim;
          dst.set(src.subarray(from, from + len * headDim), h * cap * headDim);
        }
        return kvTensor(dst, [1, kvHeads, cap, headDim]);
      }),
    );
  }

  free(): void {}
}

/**
 * Runs of consecutive `indices` as [destination row, source row, count]: row j of the result comes
 * from row indices[j], so a prefix or the kept rows around a few released ones copy in a few moves.
 */
function runs(indices: readonly number[]): [number, number, number][] {
  const out: [number, number, number][] = [];
  indices.forEach((r, j) => {
    const last = out.at(-1);
    if (last && last[1] + last[2] === r) last[2]++;
    else out.push([j, r, 1]);
  });
  return out;
}

/**
 * The spare rows a host buffer gets beyond `rows` in use when it is made or grown: an eighth of them,
 * at least 64. Not more: the CPU's GroupQueryAttention allocates its present at the past's whole
 * capacity every pass, and its pass time grows with that capacity, used or not. Measured on the
 * fused 8-bit target, two tokens over a 1,024-row past, 1 thread: 6.02 ms at 1,026 rows of capacity,
 * 6.20 at 1,152, 6.69 at 1,536 and 7.45 at 2,048; over a 256-row past 2.23 ms at 258 rows against
 * 2.53 at 512 (scratch sweep, medians of 300 alternating passes). A buffer that doubled when full
 * held up to twice its rows; growing by an eighth copies the cache once per eighth of its length
 * (64 tokens at least), a fraction of a pass per token.
 */
export const spareRows = (rows: number): number => Math.max(64, Math.ceil(rows / 8));

/** The capacity a host buffer holding `rows` is made with: those rows and their spare ones. */
export const roomFor = (rows: number): number => rows + spareRows(rows);

/**
 * The cache in one host buffer per past tensor, [1, kvHeads, capacity, headDim], rows [0, length)
 * in use (the sequence's length is the worker's). ONNX Runtime reads it in place: only a graph that
 * takes each row's cache length from the attention mask (GroupQueryAttention) may be fed it.
 * Rollbacks and releases compact rows in place (into a smaller buffer when more than twice the spare
 * rows would stay unused); appends grow a full buffer to roomFor(rows), so it holds at most an eighth
 * more rows than it uses (64 at least) until a rollback frees some.
 */
export class HostBufferKv extends HostKv {
  override readonly location = 'host-buffer';

  private capacity = (t: ort.Tensor) => t.dims[2]!;

  /** Fresh buffers of `capacity` rows holding rows `indices` of `past`, in order. */
  private copy(past: readonly ort.Tensor[], indices: readonly number[], capacity: number): ort.Tensor[] {
    const { kvHeads, headDim } = this.spec;
    const moves = runs(indices);
    return past.map((t) => {
      const src = floatData(t);
      const cap = this.capacity(t);
      const dst = kvArray(this.dtype, kvHeads * capacity * headDim);
      for (let h = 0; h < kvHeads; h++) {
        for (const [j, r, n] of moves) dst.set(src.subarray((h * cap + r) * headDim, (h * cap + r + n) * headDim), (h * capacity + j) * headDim);
      }
      return kvTensor(dst, [1, kvHeads, capacity, headDim]);
    });
  }

  override async gather(past: ort.Tensor[], _length: number, indices: readonly number[]): Promise<ort.Tensor[]> {
    // a buffer far larger than what is kept shrinks: GroupQueryAttention allocates its present at the
    // past's full capacity every pass (measured: 0.86 against 0.37 ms a step at 8192 rows against 128)
    if (tooRoomy(this.capacity(past[0]!), indices.length)) return this.copy(past, indices, roomFor(indices.length));
    const { kvHeads, headDim } = this.spec;
    const moves = runs(indices).filter(([j, r]) => r !== j);
    // ascending indices: row j comes from row indices[j] >= j, so copying forwards never overwrites a source
    for (const t of past) {
      const data = floatData(t);
      const cap = this.capacity(t);
      for (let h = 0; h < kvHeads; h++) {
        for (const [j, r, n] of moves) data.copyWithin((h * cap + j) * headDim, (h * cap + r) * headDim, (h * cap + r + n) * headDim);
      }
    }
    return past;
  }

  override async truncate(past: ort.Tensor[], length: number, keep: number): Promise<ort.Tensor[]> {
    // rows past the sequence's length are never read: only a buffer far larger than what is kept moves
    return tooRoomy(this.capacity(past[0]!), keep) ? this.gather(past, length, upTo(keep)) : past;
  }

  override async copyPrefix(past: ort.Tensor[], _length: number, count: number): Promise<ort.Tensor[]> {
    return count === 0 ? this.empty() : this.copy(past, upTo(count), count);
  }

  override async take(past: ort.Tensor[], _length: number, indices: readonly number[]): Promise<KvArray[]> {
    // a copy of exactly the rows taken is laid out as KvRows are: [kvHeads, indices.length, headDim]
    return this.copy(past, indices, indices.length).map(floatData);
  }

  override async append(past: ort.Tensor[], length: number, rows: KvRows): Promise<ort.Tensor[]> {
    const { kvHeads, headDim } = this.spec;
    const total = length + rows.count;
    const cap = this.capacity(past[0]!);
    const room = total <= cap ? past : this.copy(past, upTo(length), roomFor(total));
    room.forEach((t, k) => {
      const dst = floatData(t);
      const add = rows.tensors[k]!;
      const c = this.capacity(t);
      for (let h = 0; h < kvHeads; h++) dst.set(add.subarray(h * rows.count * headDim, (h + 1) * rows.count * headDim), (h * c + length) * headDim);
    });
    return room;
  }

  protected override capacityFor(length: number): number {
    return roomFor(length);
  }
}

/** Whether a buffer of `capacity` rows left holding `rows` should move them to a smaller one: more than twice their spare rows would stay unused. */
const tooRoomy = (capacity: number, rows: number): boolean => capacity - rows > 2 * spareRows(rows);

const upTo = (n: number) => Array.from({ length: n }, (_, i) => i);
const int64 = (values: readonly number[]) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]);
const isDevice = (t: ort.Tensor) => t.location !== 'cpu' && t.location !== 'cpu-pinned';

/**
 * The cache on the device: the graphs below run on the model's EP with every output left there.
 * Names: x<t> / y<t> for the 2 x layers past tensors in input order (key0, value0, key1, …).
 */
export class DeviceKv implements KvPlacement {
  readonly location = 'device';
  private readonly graphs = new Map<string, Promise<ort.InferenceSession>>();
  private readonly elem: number;
  private readonly n: number;

  constructor(
    private readonly spec: ModelSpec,
    private readonly dtype: KvDtype,
    private readonly options: ort.InferenceSession.SessionOptions,
  ) {
    this.elem = dtype === 'float16' ? ELEM.float16 : ELEM.float32;
    this.n = 2 * spec.layers;
  }

  empty(): ort.Tensor[] {
    return emptyPast(this.spec, this.dtype);
  }

  /**
   * A cache graph, built and loaded once per shape of the call (per batch size for batch/split), its
   * outputs left on the device, or brought to the host (`host`: reading a device tensor's data with
   * getData() aborts onnxruntime-node 1.30, ../shared/gpu/README.md fact 8, so ORT copies them out).
   */
  private graph(key: string, build: () => Uint8Array, outputs: readonly string[], host = false): Promise<ort.InferenceSession> {
    let g = this.graphs.get(key);
    if (!g) {
      const preferredOutputLocation = Object.fromEntries(outputs.map((o) => [o, host ? ('cpu' as const) : ('gpu-buffer' as const)]));
      g = ort.InferenceSession.create(build(), { ...this.options, preferredOutputLocation });
      this.graphs.set(key, g);
      g.catch(() => this.graphs.delete(key)); // a failed build (a transient device error) is tried again next time
    }
    return g;
  }

  private range = (prefix: string, count = this.n) => Array.from({ length: count }, (_, t) => `${prefix}${t}`);

  /** y<t> = Gather(x<t>, idx, axis 2), on the device or brought to the host. */
  private gatherGraph(host: boolean): Promise<ort.InferenceSession> {
    const xs = this.range('x');
    const ys = this.range('y');
    return this.graph(
      host ? 'gather-host' : 'gather',
      () =>
        model(
          'kv_gather',
          xs.map((x, t) => node('Gather', [x, 'idx'], [ys[t]!], [intAttr('axis', 2)])),
          [...xs.map((x) => valueInfo(x, this.elem, ['b', 'h', 'n', 'd'])), valueInfo('idx', ELEM.int64, ['m'])],
          ys.map((y) => valueInfo(y, this.elem, ['b', 'h', 'm', 'd'])),
        ),
      ys,
      host,
    );
  }

  private async runGather(past: ort.Tensor[], indices: readonly number[], host = false): Promise<ort.Tensor[]> {
    const g = await this.gatherGraph(host);
    const feeds: Record<string, ort.Tensor> = { idx: int64(indices) };
    past.forEach((t, k) => (feeds[`x${k}`] = t));
    const out = await g.run(feeds);
    return this.range('y').map((y) => out[y] as ort.Tensor);
  }

  async gather(past: ort.Tensor[], length: number, indices: readonly number[]): Promise<ort.Tensor[]> {
    if (indices.length === length && indices.every((r, j) => r === j)) return past;
    const kept = indices.length === 0 ? this.empty() : await this.runGather(past, indices);
    this.free(past);
    return kept;
  }

  truncate(past: ort.Tensor[], length: number, keep: number): Promise<ort.Tensor[]> {
    return this.gather(past, length, upTo(keep));
  }

  async copyPrefix(past: ort.Tensor[], _length: number, count: number): Promise<ort.Tensor[]> {
    // a Gather's outputs are new device buffers, even of every row: the source keeps its own
    return count === 0 ? this.empty() : this.runGather(past, upTo(count));
  }

  async take(past: ort.Tensor[], _length: number, indices: readonly number[]): Promise<KvArray[]> {
    if (indices.length === 0) return past.map(() => kvArray(this.dtype, 0));
    // only the taken rows cross to the host
    const rows = await this.runGather(past, indices, true);
    return rows.map((t) => floatData(t).slice());
  }

  async append(past: ort.Tensor[], length: number, rows: KvRows): Promise<ort.Tensor[]> {
    const { kvHeads, headDim } = this.spec;
    if (rows.count === 0) return past;
    const added = rows.tensors.map((a) => kvTensor(a, [1, kvHeads, rows.count, headDim]));
    if (length === 0) {
      // nothing to concatenate with: the rows go up as they are (a Gather of every row places them)
      return this.runGather(added, Array.from({ length: rows.count }, (_, r) => r));
    }
    const xs = this.range('x');
    const cs = this.range('c');
    const ys = this.range('y');
    const g = await this.graph(
      'concat',
      () =>
        model(
          'kv_append',
          xs.map((x, t) => node('Concat', [x, cs[t]!], [ys[t]!], [intAttr('axis', 2)])),
          [...xs.map((x) => valueInfo(x, this.elem, ['b', 'h', 'n', 'd'])), ...cs.map((c) => valueInfo(c, this.elem, ['b', 'h', 'm', 'd']))],
          ys.map((y) => valueInfo(y, this.elem, ['b', 'h', 'nm', 'd'])),
        ),
      ys,
    );
    const feeds: Record<string, ort.Tensor> = {};
    past.forEach((t, k) => (feeds[`x${k}`] = t));
    added.forEach((t, k) => (feeds[`c${k}`] = t));
    const out = await g.run(feeds);
    this.free(past);
    return ys.map((y) => out[y] as ort.Tensor);
  }

  async batch(pasts: readonly ort.Tensor[][], lengths: readonly number[], maxP: number): Promise<ort.Tensor[]> {
    const { kvHeads, headDim } = this.spec;
    const b = pasts.length;
    if (maxP === 0) return this.range('x').map(() => kvTensor(kvArray(this.dtype, 0), [b, kvHeads, 0, headDim]));
    // y<t> = Concat over i of Pad(x<i>_<t>, pads<i>) on axis 0: left padding of maxP - length rows
    const xs = (i: number) => this.range(`x${i}_`);
    const ys = this.range('y');
    const g = await this.graph(
      `batch${b}`,
      () =>
        model(
          'kv_batch',
          [
            ...Array.from({ length: b }, (_, i) => xs(i).map((x, t) => node('Pad', [x, `pads${i}`], [`p${i}_${t}`]))).flat(),
            ...ys.map((y, t) => node('Concat', Array.from({ length: b }, (_, i) => `p${i}_${t}`), [y], [intAttr('axis', 0)])),
          ],
          [...Array.from({ length: b }, (_, i) => [...xs(i).map((x) => valueInfo(x, this.elem, [1, 'h', `n${i}`, 'd'])), valueInfo(`pads${i}`, ELEM.int64, [8])]).flat()],
          ys.map((y) => valueInfo(y, this.elem, [b, 'h', 'p', 'd'])),
        ),
      ys,
    );
    const feeds: Record<string, ort.Tensor> = {};
    pasts.forEach((past, i) => {
      const n = lengths[i]!;
      // an empty past is a host block of zeros already as long as the others (no zero-size device buffers)
      const own = n === 0 ? this.range('x').map(() => kvTensor(kvArray(this.dtype, kvHeads * maxP * headDim), [1, kvHeads, maxP, headDim])) : past;
      own.forEach((t, k) => (feeds[`x${i}_${k}`] = t));
      feeds[`pads${i}`] = int64([0, 0, n === 0 ? 0 : maxP - n, 0, 0, 0, 0, 0]);
    });
    const out = await g.run(feeds);
    return ys.map((y) => out[y] as ort.Tensor);
  }

  async split(presents: readonly ort.Tensor[], rows: readonly Span[]): Promise<ort.Tensor[][]> {
    const b = rows.length;
    // z<i>_<t> = Slice(y<t>, starts<i>, ends<i>, axes [0, 2]): row i of the batch, positions [start, start + length)
    const ys = this.range('y');
    const zs = (i: number) => this.range(`z${i}_`);
    const outputs = Array.from({ length: b }, (_, i) => zs(i)).flat();
    const g = await this.graph(
      `split${b}`,
      () =>
        model(
          'kv_split',
          Array.from({ length: b }, (_, i) => ys.map((y, t) => node('Slice', [y, `starts${i}`, `ends${i}`, 'axes'], [zs(i)[t]!]))).flat(),
          [...ys.map((y) => valueInfo(y, this.elem, [b, 'h', 't', 'd'])), ...Array.from({ length: b }, (_, i) => [valueInfo(`starts${i}`, ELEM.int64, [2]), valueInfo(`ends${i}`, ELEM.int64, [2])]).flat(), valueInfo('axes', ELEM.int64, [2])],
          outputs.map((z) => valueInfo(z, this.elem, [1, 'h', 'l', 'd'])),
        ),
      outputs,
    );
    const feeds: Record<string, ort.Tensor> = { axes: int64([0, 2]) };
    presents.forEach((t, k) => (feeds[`y${k}`] = t));
    rows.forEach(({ start, length }, i) => {
      feeds[`starts${i}`] = int64([i, start]);
      feeds[`ends${i}`] = int64([i + 1, start + length]);
    });
    const out = await g.run(feeds);
    this.free(presents);
    return rows.map((_, i) => zs(i).map((z) => out[z] as ort.Tensor));
  }

  free(past: readonly ort.Tensor[]): void {
    for (const t of past) if (isDevice(t)) t.dispose();
  }
}

