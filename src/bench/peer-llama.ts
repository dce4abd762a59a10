import { CascadeError } from '../errors.ts';

/**
 * The peer of `cascade bench peer`: llama.cpp through node-llama-cpp, installed on demand (not in package.json). This is
 * the only file that loads it; its types are declared here (the subset used) so the project builds
 * without it.
 */

/** node-llama-cpp is not installed (or its prebuilt binary does not load); the message says how to get it. */
export class PeerMissingError extends CascadeError {
  override readonly name = 'PeerMissingError';
}

type Token = number;
interface Sequence {
  evaluate(tokens: Token[], options?: { temperature?: number }): AsyncGenerator<Token, void>;
  clearHistory(): Promise<void>;
  readonly tokenPredictions: { used: number; unused: number; validated: number; refuted: number };
}
interface Context {
  getSequence(options?: { tokenPredictor?: unknown }): Sequence;
  dispose(): Promise<void>;
}
interface Model {
  createContext(options: { contextSize: number; threads: number; sequences: number; batchSize?: number }): Promise<Context>;
  tokenize(text: string): Token[];
  dispose(): Promise<void>;
}
interface Llama {
  loadModel(options: { modelPath: string; gpuLayers?: number }): Promise<Model>;
  dispose(): Promise<void>;
}
interface NodeLlamaCpp {
  getLlama(options: Record<string, unknown>): Promise<Llama>;
  LlamaLogLevel: { error: unknown };
  DraftSequenceTokenPredictor: new (draft: Sequence, options?: Record<string, unknown>) => unknown;
  InputLookupTokenPredictor: new (options?: Record<string, unknown>) => { updateInputTokens(tokens: Token[]): void };
}

export const INSTALL_HINT =
  'node-llama-cpp is optional and not in package.json (npm ci would need every platform binary in the lock file): ' +
  'install it with `NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-save node-llama-cpp@3.22.1`, as .ci/run does. Its prebuilt linux-x64 / macOS / ' +
  'Windows binaries come in the npm package; nothing else is downloaded (set NODE_LLAMA_CPP_SKIP_DOWNLOAD=true to be sure)';

let loaded: Promise<NodeLlamaCpp> | undefined;

/** The node-llama-cpp module, or PeerMissingError naming how to install it. */
export function loadNodeLlamaCpp(): Promise<NodeLlamaCpp> {
  const name = 'node-llama-cpp';
  loaded ??= (import(name) as Promise<NodeLlamaCpp>).catch((cause: unknown) => {
    loaded = undefined;
    throw new PeerMissingError(`cascade bench peer needs node-llama-cpp, which did not load (${(cause as Error).message.split('\n')[0]}). ${INSTALL_HINT}`, { cause });
  });
  return loaded;
}

/** Whether node-llama-cpp imports (tests skip on false). */
export async function hasNodeLlamaCpp(): Promise<boolean> {
  return loadNodeLlamaCpp().then(() => true, () => false);
}

/** One timed greedy generation: token ids and seconds (whole request; to the first token). */
export interface PeerRun {
  readonly tokenIds: number[];
  readonly seconds: number;
  readonly firstTokenSeconds: number;
  /** Draft tokens llama.cpp validated and refuted in this request (speculation only). */
  readonly validated?: number;
  readonly refuted?: number;
}

/** How a llama.cpp side speculates: not at all, with a draft model's GGUF, or by prompt lookup. */
export type PeerSpeculation = { kind: 'none' } | { kind: 'draft'; draft: PeerModel } | { kind: 'lookup' };

/** A GGUF loaded once, on the CPU. */
export class PeerModel {
  private constructor(
    private readonly mod: NodeLlamaCpp,
    readonly model: Model,
    readonly path: string,
  ) {}

  static async load(runtime: PeerRuntime, path: string): Promise<PeerModel> {
    return new PeerModel(runtime.mod, await runtime.llama.loadModel({ modelPath: path, gpuLayers: 0 }), path);
  }

  /** A sequence at `threads` threads, speculating as asked; its contexts close with `close()`. */
  async side(threads: number, speculation: PeerSpeculation, contextSize: number): Promise<PeerSide> {
    const ctx = await this.model.createContext({ contextSize, threads, sequences: 1, batchSize: 512 });
    const owned: Context[] = [ctx];
    if (speculation.kind === 'draft') {
      const draftCtx = await speculation.draft.model.createContext({ contextSize, threads, sequences: 1, batchSize: 512 });
      owned.push(draftCtx);
      const predictor = new this.mod.DraftSequenceTokenPredictor(draftCtx.getSequence());
      return new PeerSide(ctx.getSequence({ tokenPredictor: predictor }), owned);
    }
    if (speculation.kind === 'lookup') {
      const predictor = new this.mod.InputLookupTokenPredictor();
      return new PeerSide(ctx.getSequence({ tokenPredictor: predictor }), owned, (ids) => predictor.updateInputTokens(ids));
    }
    return new PeerSide(ctx.getSequence(), owned);
  }

  tokenize(text: string): number[] {
    return this.model.tokenize(text);
  }

  close(): Promise<void> {
    return this.model.dispose();
  }
}

/** A warm llama.cpp sequence: each run clears its history and decodes greedily from token ids. */
export class PeerSide {
  constructor(
    private readonly seq: Sequence,
    private readonly contexts: Context[],
    private readonly onPrompt?: (ids: number[]) => void,
  ) {}

  async generate(promptIds: readonly number[], maxTokens: number): Promise<PeerRun> {
    await this.seq.clearHistory();
    this.onPrompt?.([...promptIds]);
    const before = { ...this.seq.tokenPredictions };
    const tokenIds: number[] = [];
    const t0 = performance.now();
    let first = 0;
    for await (const t of this.seq.evaluate([...promptIds], { temperature: 0 })) {
      if (!tokenIds.length) first = performance.now();
      tokenIds.push(t);
      if (tokenIds.length >= maxTokens) break;
    }
    const end = performance.now();
    const after = this.seq.tokenPredictions;
    return { tokenIds, seconds: (end - t0) / 1000, firstTokenSeconds: (first - t0) / 1000, validated: after.validated - before.validated, refuted: after.refuted - before.refuted };
  }

  async close(): Promise<void> {
    for (const c of this.contexts) await c.dispose();
  }
}

/** llama.cpp's CPU backend, started once per bench (prebuilt binary only, never a build). */
export class PeerRuntime {
  private constructor(
    readonly mod: NodeLlamaCpp,
    readonly llama: Llama,
  ) {}

  static async start(): Promise<PeerRuntime> {
    const mod = await loadNodeLlamaCpp();
    try {
      // maxThreads 0: a context's `threads` is the number it runs at, not a hint shared with others
      const llama = await mod.getLlama({ gpu: false, build: 'never', skipDownload: true, logLevel: mod.LlamaLogLevel.error, maxThreads: 0 });
      return new PeerRuntime(mod, llama);
    } catch (cause) {
      throw new PeerMissingError(`node-llama-cpp is installed but its prebuilt CPU binary did not load (${(cause as Error).message.split('\n')[0]}). ${INSTALL_HINT}`, { cause });
    }
  }

  close(): Promise<void> {
    return this.llama.dispose();
  }
}
