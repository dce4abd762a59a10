import { Worker } from 'node:worker_threads';
import { COMPILED } from '../checkout.ts';
import type { TextTokenizer } from './tokenizer.ts';

/** Texts from this many characters are tokenized in the worker; shorter ones in place (a message costs more than they do). */
export const OFF_THREAD_CHARS = 16_384;

/**
 * Tokenizes long texts in a worker thread, so that a server's event loop (every stream's chunks,
 * `/health`) does not stop for the second or more that BPE takes over a megabyte of text (about 1.5 s
 * per MB for the family's tokenizer on this project's 2-core machine). vLLM's API server likewise
 * tokenizes off its event loop. Short texts are tokenized in place.
 *
 * One worker, started at the first long text, loads the same files as the tokenizer (`source`); idle, it
 * does not keep the process alive. A worker that dies fails its texts' calls and is started again for the next.
 */
export class TokenizerThread {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, { readonly worker: Worker; readonly resolve: (ids: number[]) => void; readonly reject: (err: Error) => void }>();
  private nextId = 1;

  constructor(readonly tokenizer: TextTokenizer) {}

  /** `tokenizer.encode(text)`, in the worker when the text is long. Errors: the tokenizer's, or the worker's exit. */
  async encode(text: string): Promise<number[]> {
    if (text.length < OFF_THREAD_CHARS || !this.tokenizer.source.tokenizerPath) return this.tokenizer.encode(text);
    const worker = this.start();
    const id = this.nextId++;
    return new Promise<number[]>((resolve, reject) => {
      this.pending.set(id, { worker, resolve, reject });
      // held while it has work: idle, it does not keep the process alive
      worker.ref();
      worker.postMessage({ id, text });
    });
  }

  /** Stops the worker; calls in flight fail. */
  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const source = this.tokenizer.source;
    const worker = COMPILED
      ? new Worker(new URL('./tokenizer-worker.js', import.meta.url), { workerData: { source } })
      : new Worker(new URL('./worker-bootstrap.mjs', import.meta.url), { workerData: { entry: new URL('./tokenizer-worker.ts', import.meta.url).href, source } });
    worker.on('message', ({ id, ids, error }: { id: number; ids?: Uint32Array; error?: string }) => {
      const call = this.pending.get(id);
      this.pending.delete(id);
      if (![...this.pending.values()].some((c) => c.worker === worker)) worker.unref();
      if (error !== undefined) call?.reject(new Error(`tokenizer: ${error}`));
      else call?.resolve(Array.from(ids!));
    });
    const fail = (err: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const [id, call] of this.pending) {
        if (call.worker !== worker) continue;
        this.pending.delete(id);
        call.reject(err);
      }
    };
    worker.on('error', (err) => fail(err));
    worker.on('exit', (code) => fail(new Error(`the tokenizer's worker thread exited (code ${code})`)));
    // after the listeners: adding a 'message' listener refs the worker again
    worker.unref();
    this.worker = worker;
    return worker;
  }
}
