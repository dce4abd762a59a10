import { statSync, unlinkSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { COMPILED } from '../checkout.ts';
import { ModelLoadError, ModelRuntimeError, SequenceError, InvalidArgumentError, CascadeError } from '../errors.ts';
import { loadModelSpec, type ModelSpec } from './config.ts';
import type { ModelSource } from './model-dir.ts';
import type { WorkerReply, WorkerRequest } from './protocol.ts';
import type { PrefixCacheStats } from './prefix-cache.ts';
import type { DecodePlan, ForwardItem, KvDtype, KvRows, LogitsRows, ModelSession, SessionOptions, StepResult } from './session.ts';

type Pending = { resolve: (r: WorkerReply & { ok: true }) => void; reject: (e: Error) => void };
type Request = WorkerRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

const ERRORS: Record<string, new (m: string) => CascadeError> = {
  ModelLoadError,
  ModelRuntimeError,
  SequenceError,
  InvalidArgumentError,
};

/**
 * onnxruntime-node 1.30's library writes an empty telemetry debug log, /tmp/mat-debug-<pid>.log,
 * for every process that loads it (its bundled 1DS telemetry, "MATSDK"), and never removes it: a
 * process that started a model worker removes its own at exit, when it is still empty.
 */
function removeTelemetryLogAtExit(): void {
  process.once('exit', () => {
    const path = `/tmp/mat-debug-${process.pid}.log`;
    try {
      if (statSync(path).size === 0) unlinkSync(path);
    } catch {
      // not there (another build, another platform)
    }
  });
}
let telemetryLogWatched = false;

/** Longest close() waits for the calls in flight (a long prompt's pass on a CPU), ms. */
const CLOSE_WAIT_MS = 60_000;

/** The worker module next to this file: compiled, started as it is; from the TypeScript sources, through worker-bootstrap.mjs, which loads tsx. */
function startWorker(): Worker {
  if (!telemetryLogWatched) {
    telemetryLogWatched = true;
    removeTelemetryLogAtExit();
  }
  if (COMPILED) return new Worker(new URL('./ort-worker.js', import.meta.url));
  return new Worker(new URL('./worker-bootstrap.mjs', import.meta.url), { workerData: { entry: new URL('./ort-worker.ts', import.meta.url).href } });
}

/**
 * A ModelSession over ONNX Runtime in a worker thread (see ort-worker.ts). The KV stays in the
 * graph's own dtype (`kvDtype`: float32, or float16 held as Uint16Array bit patterns), and so do the
 * rows `evict` returns and `insert` takes; logits are always float32.
 */
export class OrtModelSession implements ModelSession {
  private readonly pending = new Map<number, Pending>();
  private readonly lengths = new Map<string, number>();
  private nextId = 1;
  private failure: Error | undefined;
  provider = 'cpu';
  /** The element type of the model's KV, read from its ONNX graph at load (past_key_values.*). */
  kvDtype: KvDtype = 'float32';
  /**
   * Whether the graph takes `position_ids`. Without it the graph counts positions itself, so only
   * one sequence per pass (no batching) and no explicit positions (no bounded KV cache) work.
   */
  positionIds = true;
  /** Where the KV lives between passes: the host, or the device of a device EP (kv-placement.ts). */
  kvLocation: 'host' | 'host-buffer' | 'device' = 'host';
  /**
   * Whether logits do not depend on a pass's size (SessionOptions.batchInvariant, resolved): one-token
   * passes run as two rows, or the graph pads its own attention (paddedAttention).
   */
  batchInvariant = false;
  /** Whether the graph pads its own attention by a row (graph-ops.ts PADDED_ATTENTION), so no pass is padded here. */
  paddedAttention = false;
  /**
   * What automatic prefix caching saved (SessionOptions.prefixCache, prefix-cache.ts): forwards that
   * started a sequence from another's KV rows, and the tokens whose rows were copied, not computed.
   */
  readonly prefixCache: PrefixCacheStats = { hits: 0, reusedTokens: 0 };

  private constructor(
    /** Read from the model directory; at load it gains what the graph says (features). */
    public spec: ModelSpec,
    private readonly worker: Worker,
    multiStep: boolean,
  ) {
    if (multiStep) this.decode = (item, plan) => this.decodeInWorker(item, plan);
    worker.on('message', (reply: WorkerReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (reply.ok) p.resolve(reply);
      else p.reject(new (ERRORS[reply.error.name] ?? ModelRuntimeError)(`${spec.name}: ${reply.error.message}`));
    });
    const fail = (err: Error) => {
      this.failure = new ModelRuntimeError(`model worker for ${spec.name} stopped: ${err.message}`, { cause: err });
      for (const p of this.pending.values()) p.reject(this.failure);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`exit code ${code}`)));
  }

  /** Validates the directory (or a ModelLocation in it), starts a worker and loads the model into it. */
  static async open(source: ModelSource, options: SessionOptions = {}, onWarning: (w: string) => void = console.warn): Promise<OrtModelSession> {
    const spec = loadModelSpec(source);
    const worker = startWorker();
    const s = new OrtModelSession(spec, worker, options.multiStep ?? true);
    try {
      const reply = await s.call({ op: 'load', spec, options });
      s.provider = reply.provider ?? 'cpu';
      s.kvDtype = reply.kvDtype ?? 'float32';
      s.positionIds = reply.positionIds ?? true;
      s.kvLocation = reply.kvLocation ?? 'host';
      s.batchInvariant = reply.batchInvariant ?? false;
      s.paddedAttention = reply.paddedAttention ?? false;
      if (reply.features) s.spec = { ...spec, features: reply.features };
      if (reply.warning) onWarning(reply.warning);
    } catch (err) {
      await worker.terminate();
      throw err instanceof CascadeError ? err : new ModelLoadError(`cannot load ${spec.onnxPath}`, { cause: err });
    }
    return s;
  }

  private call(req: Request): Promise<WorkerReply & { ok: true }> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...req, id });
    });
  }

  async forward(item: ForwardItem, rows: LogitsRows = 'all'): Promise<Float32Array> {
    return (await this.forwardBatch([item], rows))[0]!;
  }

  async forwardAttention(item: ForwardItem, rows: LogitsRows = 'all'): Promise<{ logits: Float32Array; attention: Float32Array }> {
    const r = await this.step(item, rows, true);
    return { logits: r.logits, attention: r.attention! };
  }

  async step(item: ForwardItem, rows: LogitsRows, attention: boolean): Promise<StepResult> {
    const reply = await this.send([item], rows, attention);
    return {
      logits: reply.logits![0]!,
      ...(reply.attention ? { attention: reply.attention } : {}),
      ...(reply.evicted ? { evicted: reply.evicted } : {}),
      ...(reply.hidden ? { hidden: reply.hidden } : {}),
    };
  }

  async forwardBatch(items: readonly ForwardItem[], rows: LogitsRows = 'all'): Promise<Float32Array[]> {
    return (await this.send(items, rows, false)).logits!;
  }

  /** ModelSession.decode, unless SessionOptions.multiStep is false. */
  readonly decode?: (item: ForwardItem, plan: DecodePlan) => Promise<number[]>;

  private async decodeInWorker(item: ForwardItem, plan: DecodePlan): Promise<number[]> {
    this.checkKeep(item);
    const base = item.keep ?? this.length(item.seqId);
    try {
      const reply = await this.call({ op: 'decode', item, plan });
      this.countReuse(reply);
      const tokens = reply.tokens!;
      this.lengths.set(item.seqId, base + item.inputIds.length + tokens.length - 1);
      return tokens;
    } catch (err) {
      // the worker left the sequence at `base` (see ModelSession.decode)
      if (!this.failure) this.lengths.set(item.seqId, base);
      throw err;
    }
  }

  private checkKeep(it: ForwardItem): void {
    if (it.keep !== undefined && (!Number.isInteger(it.keep) || it.keep < 0 || it.keep > this.length(it.seqId))) {
      throw new SequenceError(`${this.spec.name}: cannot keep ${it.keep} tokens of sequence ${it.seqId} of length ${this.length(it.seqId)}`);
    }
  }

  private countReuse(reply: WorkerReply & { ok: true }): void {
    for (const n of reply.reused ?? []) {
      if (n === 0) continue;
      this.prefixCache.hits++;
      this.prefixCache.reusedTokens += n;
    }
  }

  private async send(items: readonly ForwardItem[], rows: LogitsRows, attention: boolean): Promise<WorkerReply & { ok: true }> {
    if (new Set(items.map((i) => i.seqId)).size !== items.length) {
      throw new InvalidArgumentError('a batch may hold each sequence only once');
    }
    for (const it of items) this.checkKeep(it);
    const reply = await this.call({ op: 'forward', items, rows, attention });
    this.countReuse(reply);
    for (const it of items) this.lengths.set(it.seqId, (it.keep ?? this.length(it.seqId)) - (it.evict?.length ?? 0) + (it.insert?.count ?? 0) + it.inputIds.length);
    return reply;
  }

  length(seqId: string): number {
    return this.lengths.get(seqId) ?? 0;
  }

  async truncate(seqId: string, length: number): Promise<void> {
    if (length === this.length(seqId)) return;
    await this.call({ op: 'truncate', seqId, length });
    this.lengths.set(seqId, length);
  }

  async evict(seqId: string, indices: readonly number[], take = false): Promise<KvRows | undefined> {
    const reply = await this.call({ op: 'evict', seqId, indices, take });
    this.lengths.set(seqId, this.length(seqId) - indices.length);
    return reply.rows;
  }

  async insert(seqId: string, rows: KvRows): Promise<void> {
    await this.call({ op: 'insert', seqId, rows });
    this.lengths.set(seqId, this.length(seqId) + rows.count);
  }

  async release(seqId: string): Promise<void> {
    this.lengths.delete(seqId);
    await this.call({ op: 'release', seqId });
  }

  /**
   * Refuses new calls, lets the ones in flight finish (at most CLOSE_WAIT_MS), then stops the worker.
   * A worker terminated inside session.run aborts the whole process: the binding's Napi::Error is
   * thrown into native code ("terminate called after throwing an instance of 'Napi::Error'").
   */
  async close(): Promise<void> {
    this.failure ??= new ModelRuntimeError(`model session ${this.spec.name} is closed`);
    for (const until = Date.now() + CLOSE_WAIT_MS; this.pending.size && Date.now() < until; ) await new Promise((r) => setTimeout(r, 5));
    await this.worker.terminate();
  }
}
