import { DRAFTINGS } from '../../engine/async-cascade.ts';
import { generateCascade, type DrafterSpec } from '../../engine/cascade.ts';
import { InvalidArgumentError } from '../../errors.ts';
import type { MagTables } from '../../kernels/maxgram.ts';
import { drafterKind } from '../../models/family.ts';
import type { ModelSession } from '../../models/session.ts';
import type { JobData, RequestOutcome } from '../coordinator.ts';
import { HttpError } from './errors.ts';
import type { Backend, OnTokens, Submitted } from './submit.ts';

/** The models an embedded gateway serves: the target, its neural drafters by name, its feature drafter, and MaG's tables. */
export interface EmbeddedModels {
  readonly target: ModelSession;
  readonly drafters: ReadonlyMap<string, ModelSession>;
  /** The family's EAGLE feature drafter (docs/eagle.md), which a request names first among its drafters. */
  readonly eagle?: { readonly name: string; readonly session: ModelSession };
  readonly magTables?: MagTables;
}

/**
 * `cascade serve --embedded`: the gateway's jobs run in this process, with the same cascade as
 * `cascade generate` (generateCascade), without NATS, Redis or other processes, as llama.cpp's
 * `llama-server` serves one machine. Each job is one request's cascade; concurrent jobs share the
 * models (their forwards run in the models' worker threads, and batch where the sessions batch: wrap
 * them in BatchingSession). A cancelled job stops at its next round (finish reason `cancelled`); one
 * past `timeoutMs` is cancelled and fails with a 504. Nothing is recorded: a restart loses the
 * requests in flight (the cluster's Redis log is what survives one).
 */
export function embeddedBackend(models: EmbeddedModels, options: { readonly timeoutMs: number }): Backend {
  const drafterOf = (name: string): DrafterSpec => {
    const kind = drafterKind({ eagle: models.eagle?.name }, name);
    if (kind === 'mag') return { kind, tables: models.magTables };
    if (kind === 'eagle') return { kind, session: models.eagle!.session };
    const session = models.drafters.get(name);
    if (!session) throw new HttpError(400, `drafter "${name}" is not served here (this gateway serves ${[...models.drafters.keys(), ...(models.eagle ? [models.eagle.name] : []), 'mag'].join(', ')})`, 'invalid_request_error', 'cascade.drafters');
    return { kind: 'model', session };
  };
  return {
    draftings: DRAFTINGS,
    async submit(data: JobData, onTokens: OnTokens): Promise<Submitted> {
      const drafters = data.drafters.map(drafterOf);
      let cancelled = false;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          cancelled = true;
          reject(new HttpError(504, `the request did not finish within ${options.timeoutMs} ms`, 'server_error'));
        }, options.timeoutMs);
      });
      const run = generateCascade(
        models.target,
        { drafters, kMatrix: data.kMatrix, lenience: data.lenience, drafting: data.drafting, magFirst: data.magFirst },
        { promptIds: data.promptIds, maxTokens: data.maxTokens, sampling: data.sampling, seed: data.seed, verification: data.verification, stopAtEos: data.stopAtEos, ...(data.logprobs !== undefined ? { logprobs: data.logprobs } : {}) },
        (ids, logprobs) => onTokens(ids, logprobs),
        { cancelled: () => cancelled, outcomeBranches: data.outcomeBranches, levelBelow: data.levelBelow },
      ).then(
        (result): RequestOutcome => ({ finishReason: result.finishReason, generatedTokens: result.tokenIds.length, resumedFrom: 0, failovers: [], queueSeconds: 0, stats: result.stats }),
        (err: Error) => {
          throw err instanceof InvalidArgumentError ? new HttpError(400, err.message) : new HttpError(500, `generation failed: ${err.message}`, 'server_error');
        },
      );
      const done = Promise.race([run, timedOut]).finally(() => clearTimeout(timer));
      done.catch(() => undefined);
      run.catch(() => undefined);
      return { requestId: data.requestId, promptTokens: data.promptIds.length, done, cancel: () => (cancelled = true) };
    },
  };
}
