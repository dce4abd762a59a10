import type { FeatureSpec, ModelSpec } from './config.ts';
import type { DecodePlan, ForwardItem, KvDtype, KvRows, LogitsRows, SessionOptions } from './session.ts';

/** Messages from the main thread to a model worker. Every request carries an id echoed in its reply. */
export type WorkerRequest =
  | { readonly op: 'load'; readonly id: number; readonly spec: ModelSpec; readonly options: SessionOptions }
  | { readonly op: 'forward'; readonly id: number; readonly items: readonly ForwardItem[]; readonly rows: LogitsRows; readonly attention?: boolean }
  | { readonly op: 'decode'; readonly id: number; readonly item: ForwardItem; readonly plan: DecodePlan }
  | { readonly op: 'truncate'; readonly id: number; readonly seqId: string; readonly length: number }
  | { readonly op: 'evict'; readonly id: number; readonly seqId: string; readonly indices: readonly number[]; readonly take: boolean }
  | { readonly op: 'insert'; readonly id: number; readonly seqId: string; readonly rows: KvRows }
  | { readonly op: 'release'; readonly id: number; readonly seqId: string };

/**
 * `reused`: per forward item, its first tokens whose KV rows were copied from another sequence
 * (prefix-cache.ts). `features`: the graph's feature tensors, at load. `hidden`: a single-sequence
 * forward's features (ForwardItem.returnHidden), [tokens, features.size]. `tokens`: what a decode chose.
 */
export type WorkerReply =
  | { readonly id: number; readonly ok: true; readonly provider?: string; readonly kvDtype?: KvDtype; readonly positionIds?: boolean; readonly kvLocation?: 'host' | 'host-buffer' | 'device'; readonly batchInvariant?: boolean; readonly paddedAttention?: boolean; readonly features?: FeatureSpec; readonly hidden?: Float32Array; readonly logits?: Float32Array[]; readonly reused?: readonly number[]; readonly attention?: Float32Array; readonly rows?: KvRows; readonly evicted?: KvRows; readonly warning?: string; readonly tokens?: number[] }
  | { readonly id: number; readonly ok: false; readonly error: { readonly name: string; readonly message: string } };
