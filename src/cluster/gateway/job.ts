import { randomUUID } from 'node:crypto';
import { DRAFT_TOP_K } from '../../actors/model-actor.ts';
import { checkCascade } from '../../engine/cascade.ts';
import { checkKBound, planCascade, type KSchedule } from '../../engine/presets.ts';
import { DEFAULT_MAX_DRAFT } from '../../engine/schedule.ts';
import { InvalidArgumentError } from '../../errors.ts';
import { DEFAULT_VERIFICATION } from '../../kernels/noise.ts';
import { DEFAULT_DRAFTING, type Drafting } from '../../engine/async-cascade.ts';
import { withProcessors, type SamplingParams } from '../../kernels/sampling.ts';
import { drafterKind } from '../../models/family.ts';
import { resolveSampling } from '../../models/generation-config.ts';
import type { TokenizerThread } from '../../models/tokenizer-thread.ts';
import { checkVocabularySizes } from '../../models/vocabulary.ts';
import type { JobData } from '../coordinator.ts';
import { rowBytes } from '../messages.ts';
import { promptIdsOf, type PromptInput } from './chat.ts';
import { HttpError } from './errors.ts';
import type { GatewayOptions } from './options.ts';
import type { ChatBody, CompletionBody } from './schemas.ts';

/**
 * A sampled request's drafts travel with their q rows: a reviewer is sent up to the largest K entry's
 * worth at once (DEFAULT_MAX_DRAFT under K auto), each a draft actor's top DRAFT_TOP_K, sparse (see
 * messages.ts). Those rows must fit the budget RemoteLevel gives them, half the transport's payload
 * limit; a K matrix that cannot is refused here rather than sent one-hot (exact, but it would waste
 * the drafts). Greedy requests carry token ids only.
 */
export function checkRowBudget(kMatrix: KSchedule, sampling: SamplingParams, vocabSize: number, maxPayload: number): void {
  if (sampling.temperature === 0) return;
  const drafts = kMatrix === 'auto' ? DEFAULT_MAX_DRAFT : Math.max(0, ...kMatrix.flat());
  const entries = Math.min(vocabSize, sampling.topK > 0 ? Math.min(sampling.topK, DRAFT_TOP_K) : DRAFT_TOP_K);
  const bytes = 4 + drafts * rowBytes(vocabSize, entries);
  const budget = Math.floor(maxPayload / 2);
  if (bytes > budget) {
    const fits = Math.floor((budget - 4) / rowBytes(vocabSize, entries));
    throw new InvalidArgumentError(
      `cascade.k_matrix drafts up to ${drafts} tokens a round, whose distributions (${entries} entries each over a vocabulary of ${vocabSize}) take ${bytes} bytes: ` +
        `over the ${budget} bytes a message may give them (half the transport's ${maxPayload}-byte payload limit). ` +
        (fits > 0 ? `Use K entries of at most ${fits}, or raise NATS's max_payload` : `Not one sampled draft fits: raise NATS's max_payload`),
      { field: 'k_matrix' },
    );
  }
}

/**
 * The API's sampling defaults, OpenAI's (temperature 1, no top-p or top-k filter), for what neither
 * the request nor the model's generation_config.json says.
 */
export const API_SAMPLING: SamplingParams = { temperature: 1, topP: 1, topK: 0 };

/** A seed for a request that gives none: any of the 53-bit seeds. */
const randomSeed = () => Math.floor(Math.random() * 2 ** 53);

/** Validates the decoding settings and builds the job (the prompt tokenized: promptIdsOf); throws HttpError 400 on bad input. */
export async function buildJob(options: Pick<GatewayOptions, 'model' | 'defaultMode' | 'defaultVerification' | 'defaultDrafting' | 'defaultOutcomeBranches'> & { readonly tokenizerThread: TokenizerThread; readonly maxPayload: number | undefined; readonly draftings?: readonly Drafting[] }, body: CompletionBody | ChatBody, input: PromptInput): Promise<JobData> {
  const { model, maxPayload } = options;
  if (body.model && body.model !== model.target) throw new HttpError(404, `model "${body.model}" is not served here (this gateway serves "${model.target}")`, 'invalid_request_error', 'model');
  const promptIds = await promptIdsOf(options.tokenizerThread, input, model.maxPositions);
  if (!promptIds.length) throw new HttpError(400, 'the prompt is empty', 'invalid_request_error', 'prompt');
  const outside = model.vocabSize === undefined ? undefined : promptIds.find((id) => id >= model.vocabSize!);
  if (outside !== undefined) throw new HttpError(400, `prompt token id ${outside} is outside the vocabulary of ${model.vocabSize} tokens`, 'invalid_request_error', 'prompt');
  if (model.maxPositions !== undefined && promptIds.length >= model.maxPositions) {
    const param = 'messages' in input ? 'messages' : 'prompt';
    throw new HttpError(400, `the ${param === 'messages' ? 'chat template\'s prompt' : 'prompt'} (${promptIds.length} tokens) leaves no room for a completion in the model's context of ${model.maxPositions} tokens`, 'invalid_request_error', param);
  }
  // unset: the rest of the context, as vLLM (16 where the context is unknown)
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? (model.maxPositions !== undefined ? Math.max(1, model.maxPositions - promptIds.length) : 16);
  if (model.maxPositions !== undefined && promptIds.length + maxTokens > model.maxPositions) {
    // the field the client sent (vLLM's chat takes either)
    const field = body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens';
    throw new HttpError(400, `prompt (${promptIds.length} tokens) plus ${field} (${maxTokens}) exceeds the model's context of ${model.maxPositions} tokens`, 'invalid_request_error', field);
  }
  const sampling = withProcessors(resolveSampling({ temperature: body.temperature, topP: body.top_p, topK: body.top_k }, model.generation, API_SAMPLING), {
    minP: body.min_p,
    repetitionPenalty: body.repetition_penalty,
    presencePenalty: body.presence_penalty,
    frequencyPenalty: body.frequency_penalty,
    logitBias: body.logit_bias && Object.fromEntries(Object.entries(body.logit_bias).map(([id, v]) => [Number(id), v])),
  });
  const biasOutside = model.vocabSize === undefined ? undefined : Object.keys(sampling.logitBias ?? {}).find((id) => Number(id) >= model.vocabSize!);
  if (biasOutside !== undefined) throw new HttpError(400, `logit_bias names token id ${biasOutside}, outside the vocabulary of ${model.vocabSize} tokens`, 'invalid_request_error', 'logit_bias');
  const verification = body.cascade?.verification ?? options.defaultVerification ?? DEFAULT_VERIFICATION;
  const drafting = body.cascade?.drafting ?? options.defaultDrafting ?? DEFAULT_DRAFTING;
  if (!(options.draftings ?? ['serial']).includes(drafting)) {
    throw new HttpError(400, `drafting "${drafting}" is not served here (it serves ${(options.draftings ?? ['serial']).join(', ')})`, 'invalid_request_error', 'cascade.drafting');
  }
  if (body.cascade?.outcome_branches && drafting !== 'async') {
    throw new HttpError(400, `outcome branches are drafted under async drafting: ask for drafting "async" too (this request drafts ${drafting})`, 'invalid_request_error', 'cascade.outcome_branches');
  }
  if (body.cascade?.level_below && drafting !== 'async') {
    throw new HttpError(400, `a level below the drafter runs under async drafting: ask for drafting "async" too (this request drafts ${drafting})`, 'invalid_request_error', 'cascade.level_below');
  }
  let plan;
  try {
    plan = planCascade(
      { mode: body.cascade?.mode ?? options.defaultMode ?? 'csd', drafters: body.cascade?.drafters, kMatrix: body.cascade?.k_matrix, lenience: body.cascade?.lenience },
      model.drafters,
      model.eagle ? [model.eagle] : [],
    );
  } catch (err) {
    // the named drafters (unknown, named twice, none outside mode ar); without them, the mode's own
    throw new HttpError(400, (err as Error).message, 'invalid_request_error', body.cascade?.drafters ? 'cascade.drafters' : 'cascade');
  }
  try {
    // shape checks only: the drafters are remote, so stand-ins carry their kind
    checkKBound(plan.kMatrix, 'cascade.k_matrix'); // first: a K entry over the limit is named whatever the matrix's shape
    const kind = (d: string) => drafterKind(model, d);
    checkCascade({ drafters: plan.drafters.map((d) => ({ kind: kind(d) }) as never), kMatrix: plan.kMatrix, lenience: plan.lenience, drafting, magFirst: body.cascade?.mag_first });
    const neural = plan.drafters.filter((d) => kind(d) !== 'mag');
    // invariant verification sends no q rows, so only rejection has a row budget to respect
    if (verification === 'rejection' && model.vocabSize !== undefined && maxPayload !== undefined && neural.length) checkRowBudget(plan.kMatrix, sampling, model.vocabSize, maxPayload);
    // a request may order the drafters itself: each must be at most as wide as the models above it
    const sizes = model.vocabSizes;
    // (a feature drafter drafts over the target's own vocabulary through its draft_vocab map)
    if (sizes) checkVocabularySizes({ name: model.target, vocabSize: sizes[model.target]! }, neural.filter((d) => kind(d) === 'model').map((name) => ({ name, vocabSize: sizes[name]! })));
  } catch (err) {
    const field = err instanceof InvalidArgumentError ? err.field : undefined;
    // a client that did not ask for async drafting learns where it came from
    const fromServer = drafting === 'async' && body.cascade?.drafting === undefined && /async drafting/.test((err as Error).message);
    const message = fromServer ? `${(err as Error).message} (this server drafts async unless a request asks otherwise: send cascade.drafting "serial")` : (err as Error).message;
    throw new HttpError(400, message, 'invalid_request_error', field ? `cascade.${field}` : 'cascade');
  }
  const logprobs = 'messages' in input ? ((body as ChatBody).logprobs ? ((body as ChatBody).top_logprobs ?? 0) : undefined) : (body as CompletionBody).logprobs;
  return {
    requestId: `req-${randomUUID()}`,
    promptIds,
    maxTokens,
    sampling,
    seed: body.seed ?? randomSeed(),
    stopAtEos: true,
    drafters: [...plan.drafters],
    kMatrix: plan.kMatrix === 'auto' ? 'auto' : plan.kMatrix.map((r) => [...r]),
    lenience: plan.lenience,
    ...(body.cascade?.mag_first !== undefined ? { magFirst: body.cascade.mag_first } : {}),
    verification,
    ...(drafting !== 'serial' ? { drafting } : {}),
    ...(body.cascade?.level_below ? { levelBelow: true } : {}),
    ...((body.cascade?.outcome_branches ?? (drafting === 'async' && options.defaultOutcomeBranches === true)) ? { outcomeBranches: true } : {}),
    ...(logprobs !== undefined ? { logprobs } : {}),
    trace: {},
    enqueuedAt: Date.now(),
  };
}

/**
 * The jobs of a request's `n` choices: the first as built, each other one a request of its own
 * (its id) with its own seed: the request's seed + index (wrapping within the 53-bit seeds), or a
 * random one when the request gives none. So choice 0 of a seeded request is what n = 1 gives.
 */
export function choiceJobs(job: JobData, n: number, seeded: boolean): JobData[] {
  const seedOf = (i: number) => (!seeded ? randomSeed() : job.seed > Number.MAX_SAFE_INTEGER - i ? job.seed - 2 ** 53 + i : job.seed + i);
  return Array.from({ length: n }, (_, i) => (i === 0 ? job : { ...job, requestId: `req-${randomUUID()}`, seed: seedOf(i) }));
}
