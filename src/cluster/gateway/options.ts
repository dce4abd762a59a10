import type { Queue } from 'bullmq';
import type { MODES } from '../../engine/presets.ts';
import type { Verification } from '../../kernels/noise.ts';
import type { Drafting } from '../../engine/async-cascade.ts';
import type { GenerationDefaults } from '../../models/generation-config.ts';
import type { TextTokenizer } from '../../models/tokenizer.ts';
import type { GatewayMetrics } from '../metrics.ts';
import type { RequestLog } from '../redis-store.ts';
import type { Transport } from '../transport.ts';
import type { Backend } from './submit.ts';

export interface GatewayOptions {
  /** Where jobs run, when not the cluster of `transport`, `queue` and `log` (`cascade serve --embedded`). */
  readonly backend?: Backend;
  /** The cluster: NATS, the BullMQ queue and the Redis request log (all three, unless `backend` is given). */
  readonly transport?: Transport;
  readonly queue?: Queue;
  readonly log?: RequestLog;
  /** The target's tokenizer: its add_bos_token encodes completions' prompts, its chat template chats. */
  readonly tokenizer: TextTokenizer;
  readonly metrics: GatewayMetrics;
  /**
   * The family: the model id served, its drafters (for modes), context length, and the target's
   * sampling defaults (its generation_config.json), which fill what a request leaves out before the
   * API's own defaults do (API_SAMPLING), and its vocabulary (sampled drafts' rows must fit a message).
   */
  readonly model: {
    readonly target: string;
    readonly drafters: readonly string[];
    /** The family's feature drafter (EAGLE), served beside the target: a request names it first among its drafters to use it. */
    readonly eagle?: string;
    readonly maxPositions?: number;
    readonly generation?: GenerationDefaults;
    /** The target's vocab_size. */
    readonly vocabSize?: number;
    /** Every model's vocab_size by name (target and drafters), to check a request's drafter order. */
    readonly vocabSizes?: Readonly<Record<string, number>>;
  };
  /** Accepted bearer keys; empty = no authentication (local use only). */
  readonly apiKeys?: readonly string[];
  /** Requests in flight before 503 + Retry-After. */
  readonly maxInFlight?: number;
  /** Longest a request may take, end to end. */
  readonly requestTimeoutMs?: number;
  /** Default decoding mode of requests that name none. */
  readonly defaultMode?: (typeof MODES)[number];
  /** Verification of requests whose `cascade` field names none (default DEFAULT_VERIFICATION). */
  readonly defaultVerification?: Verification;
  /** Drafting of requests whose `cascade` field names none (default serial; async only where the backend runs it). */
  readonly defaultDrafting?: Drafting;
  /** Whether async requests whose `cascade` field does not say draft outcome branches (`--outcome-branches`; default false). */
  readonly defaultOutcomeBranches?: boolean;
  /** Health: resolves when NATS and Redis answer. */
  readonly health?: () => Promise<Record<string, unknown>>;
}
