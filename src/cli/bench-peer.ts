import { resolve } from 'node:path';
import type { Command } from 'commander';
import { benchPeer, DEFAULT_PEER_FORMS, PEER_FORMS, PEER_WEIGHTS, type PeerForm, type PeerWeights } from '../bench/peer.ts';
import { InvalidArgumentError } from '../errors.ts';
import { BATCH_INVARIANT_HELP, parseBatchInvariant, parseNumber, parseOutDir } from './options.ts';
import type { BatchInvariance } from '../models/session.ts';
import { BLOCK_SIZES, blockSizeError, findPython, parseScheme, type QuantizeScheme } from './quantize.ts';

interface PeerFlags {
  models: string;
  model?: string;
  draftModel?: string[];
  peerDraft?: string;
  prompts: number;
  promptsDir?: string;
  maxTokens: number;
  repeats: number;
  threads: number[];
  weights: PeerWeights[];
  forms: PeerForm[];
  accuracyLevel: number;
  blockSize: number;
  scheme: QuantizeScheme;
  batchInvariant: BatchInvariance;
  cacheDir: string;
  python?: string;
  note?: string;
  out: string;
}

const parseThreads = (raw: string): number[] => raw.split(',').map((t) => parseNumber('--threads', { min: 1, integer: true })(t));

function parseForms(raw: string): PeerForm[] {
  const list = raw.split(',');
  const bad = list.find((f) => !(PEER_FORMS as readonly string[]).includes(f));
  if (bad !== undefined) throw new InvalidArgumentError(`--forms must be among ${PEER_FORMS.join(', ')} (comma-separated), got "${bad}"`);
  return [...new Set(list)] as PeerForm[];
}

function parseWeights(raw: string): PeerWeights[] {
  const list = raw.split(',');
  const bad = list.find((w) => !(PEER_WEIGHTS as readonly string[]).includes(w));
  if (bad !== undefined) throw new InvalidArgumentError(`--weights must be among ${PEER_WEIGHTS.join(', ')} (comma-separated), got "${bad}"`);
  return list as PeerWeights[];
}

/** `cascade bench peer` (src/bench/peer.ts): this project against llama.cpp on GGUF conversions of the same weights. */
export function registerBenchPeer(bench: Command): void {
  bench
    .command('peer')
    .description(
      'this project against llama.cpp (node-llama-cpp, installed on demand: npm install --no-save node-llama-cpp@3.22.1) on GGUF conversions of the same weights: checks token identity of the f32 conversion, then f32 / f16 / 8-bit / 4-bit, plain and speculating, warm, side by side',
    )
    .option('--models <dir>', 'model family directory', 'models')
    .option('--model <dir|name>', 'the target: a Llama export folder or a member of the --models family (default: the family target)')
    .option('--draft-model <dir|name>', "this project's drafters, repeatable, largest first (default: the family's)", (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--peer-draft <dir|name>', "llama.cpp's draft model, exported at the target's GGUF type (default: the smallest drafter)")
    .option('--prompts <n>', 'held-out prompts: half JavaScript of this project\'s dependencies, half man pages of sections 1 and 8 (not bench/prompts)', parseNumber('--prompts', { min: 1, integer: true }), 12)
    .option('--prompts-dir <dir>', 'take the prompts from this folder instead: every .txt file, and every "prompt" of every .jsonl row')
    .option('--max-tokens <n>', 'greedy tokens generated per prompt', parseNumber('--max-tokens', { min: 1, integer: true }), 128)
    .option('--repeats <n>', 'timed repeats per configuration (medians are reported)', parseNumber('--repeats', { min: 1, integer: true }), 3)
    .option('--threads <list>', 'thread counts, comma-separated (ONNX Runtime intra-op threads; llama.cpp context threads)', parseThreads, [1, 2])
    .option('--weights <list>', `weight widths, comma-separated: ${PEER_WEIGHTS.join(', ')} (this project has no f16 CPU path; 8 and 4 are cascade quantize int8/int4 and GGUF Q8_0/Q4_0)`, parseWeights, [...PEER_WEIGHTS])
    .option('--forms <list>', "this project's graph forms, comma-separated, each measured: unfused (the export as it is), fused (tools/train/fuse.py's GroupQueryAttention form, KV in a host buffer read in place) and fused-kv16 (the fused form with a float16 KV cache, cascade fuse --kv-dtype float16, as llama.cpp's default f16 cache; lossy against float32 KV); drafters run in the same form", parseForms, [...DEFAULT_PEER_FORMS])
    .option('--accuracy-level <n>', "MatMulNBits accuracy_level of this project's quantized copies: 4 computes in int8 on the CPU, 0 in float (exact under speculation, see docs/quantization.md)", parseNumber('--accuracy-level', { min: 0, integer: true }), 4)
    .option('--block-size <n>', `weights per quantization block of this project's quantized copies: ${BLOCK_SIZES.join(', ')} (GGUF Q8_0 and Q4_0 use 32; larger blocks read fewer scales per weight: report their NLL beside, docs/quantization.md)`, parseNumber('--block-size', { min: 16, integer: true }), 32)
    .option('--scheme <name>', "how this project's 8-bit copies are quantized: nbits (block-wise weight-only MatMulNBits, as Q8_0's blocks of 32) or w8a8 (int8 weights per output channel, int8 activations per token; cascade quantize --scheme, docs/quantization.md); 4-bit copies are always nbits", parseScheme, 'nbits')
    .option('--batch-invariant <mode>', `whether a token's logits from this project's targets stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP}; off against on measures what it costs plain decoding (drafters run off, and the f32 reference of the identity check at auto)`, parseBatchInvariant, 'auto')
    .option('--cache-dir <dir>', 'where the quantized folders, GGUF files and llama.cpp clone (for gguf-py) are made once', '.cache/bench-peer')
    .option('--python <path>', 'Python with onnx and numpy for cascade quantize and tools/gguf/export_gguf.py (default: $CASCADE_PYTHON, /usr/bin/python3, then python3)')
    .option('--note <text>', 'a line recorded with the results (the machine\'s conditions, say)')
    .option('--out <dir>', 'directory for peer.json and peer.md', parseOutDir('--out'), 'results')
    .action(async (o: PeerFlags) => {
      if (o.accuracyLevel > 4) throw new InvalidArgumentError(`--accuracy-level must be 0 to 4, got ${o.accuracyLevel}`);
      const blockError = blockSizeError(o.blockSize);
      if (blockError) throw new InvalidArgumentError(blockError);
      await benchPeer({
        models: { models: o.models, model: o.model, draftModels: o.draftModel },
        peerDraft: o.peerDraft,
        prompts: o.prompts,
        promptsDir: o.promptsDir,
        maxTokens: o.maxTokens,
        repeats: o.repeats,
        threads: o.threads,
        weights: o.weights,
        forms: o.forms,
        accuracyLevel: o.accuracyLevel,
        blockSize: o.blockSize,
        scheme: o.scheme,
        batchInvariant: o.batchInvariant,
        python: findPython(o.python),
        cacheDir: resolve(o.cacheDir),
        note: o.note,
        command: `cascade bench ${process.argv.slice(process.argv.indexOf('peer')).map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ')}`,
        out: o.out,
      });
    });
}
