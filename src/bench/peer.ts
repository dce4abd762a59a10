import { cpus, loadavg } from 'node:os';
import type { QuantizeScheme } from '../cli/quantize.ts';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateCascade, type DrafterSpec } from '../engine/cascade.ts';
import { planCascade, type KSchedule } from '../engine/presets.ts';
import { CascadeError } from '../errors.ts';
import { GREEDY } from '../kernels/sampling.ts';
import { loadMagTables, memberSource, type Family } from '../models/family.ts';
import { locationOf } from '../models/model-dir.ts';
import { resolveModels, type ModelChoice } from '../models/model-choice.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import type { BatchInvariance, ModelSession } from '../models/session.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { PeerArtifacts, heldOutPrompts, type GgufType, type PeerPrompt } from './peer-inputs.ts';
import { PeerModel, PeerRuntime, type PeerSide, type PeerSpeculation } from './peer-llama.ts';
import { formatTable, median, writeJson } from './report.ts';

/** Weight widths of the comparison; this project has no 16-bit CPU path, so its f16 cells are empty. */
export const PEER_WEIGHTS = ['f32', 'f16', '8', '4'] as const;
export type PeerWeights = (typeof PEER_WEIGHTS)[number];

const GGUF_OF: Record<PeerWeights, GgufType> = { f32: 'f32', f16: 'f16', '8': 'q8_0', '4': 'q4_0' };
const OURS_OF: Record<PeerWeights, string | undefined> = { f32: 'f32', f16: undefined, '8': 'int8', '4': 'int4' };

/**
 * This project's graph forms: `unfused` is the export as it is (the Optimum contract, KV copied in
 * and out of every pass); `fused` is tools/train/fuse.py's GroupQueryAttention form, whose KV lives in
 * a host buffer read in place (kv-placement.ts, HostBufferKv); `fused-kv16` is that form with a
 * float16 KV cache (fuse.py --kv-dtype float16, as llama.cpp's default f16 cache; lossy against
 * float32 KV). Drafters run in the same form.
 */
export const PEER_FORMS = ['unfused', 'fused', 'fused-kv16'] as const;
export type PeerForm = (typeof PEER_FORMS)[number];
/** The forms measured unless --forms names others. */
export const DEFAULT_PEER_FORMS: readonly PeerForm[] = ['unfused', 'fused'];

export interface PeerBenchOptions {
  /** The target and this project's drafters (`--models`, `--model`, `--draft-model`). */
  readonly models: ModelChoice;
  /** llama.cpp's draft model: a member name or folder, exported at the target's GGUF type; default the smallest drafter. */
  readonly peerDraft?: string;
  readonly prompts: number;
  readonly promptsDir?: string;
  readonly maxTokens: number;
  /** Timed repeats per side; each side's tokens/s is the median over repeats of (all prompts' tokens / their time). */
  readonly repeats: number;
  /** Thread counts, each a separate set of warm sessions (ORT intra-op threads; llama.cpp context threads). */
  readonly threads: readonly number[];
  readonly weights: readonly PeerWeights[];
  /** This project's graph forms, each a set of sides. */
  readonly forms: readonly PeerForm[];
  /** MatMulNBits accuracy_level of this project's quantized copies (4: int8 compute on the CPU; 0: float). */
  readonly accuracyLevel: number;
  /** Weights per quantization block of this project's quantized copies (default 32, GGUF Q8_0's and Q4_0's block). */
  readonly blockSize?: number;
  /** How this project's 8-bit copies are quantized (cascade quantize --scheme; default nbits); 4-bit copies are always nbits. */
  readonly scheme?: QuantizeScheme;
  /**
   * Batch invariance of this project's timed targets (SessionOptions.batchInvariant; default auto):
   * off against on measures what running one-token passes as two rows costs. Drafters and the
   * identity check's f32 reference are not: drafters run off, the reference at auto (float: off).
   */
  readonly batchInvariant?: BatchInvariance;
  /** Python with onnx and numpy, for cascade quantize and the GGUF exporter. */
  readonly python: string;
  /** Where the int8/int4 folders, the GGUF files and the llama.cpp clone are kept between runs. */
  readonly cacheDir: string;
  /** A line recorded with the results (the machine's conditions, say). */
  readonly note?: string;
  /** The command line, recorded with the results. */
  readonly command?: string;
  readonly out: string;
}

/** llama.cpp's f32 conversion did not reproduce this project's greedy target-only tokens. */
export class PeerIdentityError extends CascadeError {
  override readonly name = 'PeerIdentityError';
}

/** One measured configuration: an engine, its weights, how it speculates, at a thread count. */
export interface PeerRow {
  readonly engine: 'cascade-cluster' | 'llama.cpp';
  /** f32, f16, 8 or 4 (this project: f32, cascade quantize int8/int4; llama.cpp: f32, f16, Q8_0, Q4_0). */
  readonly weights: PeerWeights;
  /** What the weights are in that engine's terms. */
  readonly format: string;
  readonly method: string;
  readonly threads: number;
  /** Generated tokens over whole requests (prefill included), median over repeats. */
  readonly tokensPerSecond: number;
  /** Tokens after the first over the time after the first, median over repeats. */
  readonly decodeTokensPerSecond: number;
  readonly firstTokenSeconds: number;
  /** tokensPerSecond over the same engine's plain decoding at the same weights and threads. */
  vsPlain: number;
  /** Prompts whose greedy tokens equal this project's f32 target-only output. */
  readonly sameAsF32: number;
  /** Prompts whose greedy tokens equal the same engine's plain decoding at the same weights. */
  sameAsPlain: number;
  /** This project: mean tokens per target pass; llama.cpp: draft tokens validated / (validated + refuted). */
  readonly acceptance?: number;
  /** This project: whether the target was batch-invariant (SessionOptions.batchInvariant, resolved): its one-token passes ran as two rows, or its graph pads its attention. */
  readonly batchInvariant?: boolean;
  /** This project: whether the target's graph pads its own attention by a row (graph-ops.ts PADDED_ATTENTION), so the runner padded no pass. */
  readonly paddedAttention?: boolean;
}

interface Run {
  readonly tokenIds: readonly number[];
  readonly seconds: number;
  readonly firstTokenSeconds: number;
  readonly acceptance?: number;
}

/** The method name of plain decoding without batch invariance, measured beside plain decoding when the target pads (not an exact base for speculation, so not in the summary). */
const PLAIN_UNPADDED = 'target only, batch invariance off';

/** A warm configuration: generate() runs one greedy request; nothing loads in it. */
interface Side {
  readonly engine: PeerRow['engine'];
  readonly weights: PeerWeights;
  readonly format: string;
  readonly method: string;
  /** This project: the target's batch invariance, resolved, and whether its graph pads its own attention. */
  readonly batchInvariant?: boolean;
  readonly paddedAttention?: boolean;
  generate(promptIds: readonly number[], maxTokens: number): Promise<Run>;
}

const log = (msg: string) => process.stderr.write(msg + '\n');

function oursSide(weights: PeerWeights, format: string, target: ModelSession, method: string, drafters: DrafterSpec[], kMatrix: KSchedule): Side {
  return {
    engine: 'cascade-cluster',
    weights,
    format,
    method,
    ...(target.batchInvariant !== undefined ? { batchInvariant: target.batchInvariant } : {}),
    ...(target.paddedAttention ? { paddedAttention: true } : {}),
    async generate(promptIds, maxTokens) {
      const r = await generateCascade(target, { drafters, kMatrix, lenience: 1 }, { promptIds: [...promptIds], maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });
      return { tokenIds: r.tokenIds, seconds: r.stats.seconds, firstTokenSeconds: r.stats.firstTokenSeconds, acceptance: drafters.length ? r.stats.meanAcceptanceLength : undefined };
    },
  };
}

function peerSide(weights: PeerWeights, method: string, side: PeerSide): Side {
  return {
    engine: 'llama.cpp',
    weights,
    format: `GGUF ${GGUF_OF[weights].toUpperCase()}`,
    method,
    async generate(promptIds, maxTokens) {
      const r = await side.generate(promptIds, maxTokens);
      const drafted = (r.validated ?? 0) + (r.refuted ?? 0);
      return { ...r, acceptance: method === 'target only' ? undefined : drafted ? r.validated! / drafted : 0 };
    },
  };
}

const sameTokens = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((t, i) => t === b[i]);
const firstDifference = (a: readonly number[], b: readonly number[]): number => {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
};

/**
 * `cascade bench peer`: this project against llama.cpp (node-llama-cpp) on GGUF conversions of the
 * same weights. Checks first that llama.cpp's f32 reproduces this project's greedy target-only
 * tokens on every prompt (PeerIdentityError otherwise), then times every engine × weights ×
 * speculation × threads side warm (models loaded once, an untimed warm-up, medians over repeats).
 */
export async function benchPeer(o: PeerBenchOptions): Promise<{ rows: PeerRow[]; identity: { prompts: number; identical: number } }> {
  const family = resolveModels(o.models);
  const dirOf = (f: Family, name: string): string => locationOf(memberSource(f, name)).dir;
  const targetDir = dirOf(family, family.target);
  const drafterDirs = family.drafters.map((d) => dirOf(family, d));
  const peerFamily = o.peerDraft === undefined ? undefined : resolveModels({ models: o.models.models, model: o.peerDraft, draftModels: [] });
  const peerDraftDir = peerFamily ? dirOf(peerFamily, peerFamily.target) : drafterDirs.at(-1);
  const artifacts = new PeerArtifacts(o.cacheDir, o.python, log);
  const inForm = (dir: string, form: PeerForm): Promise<string> => (form === 'unfused' ? Promise.resolve(dir) : artifacts.fused(dir, form === 'fused-kv16' ? 'float16' : undefined));
  const prompts: PeerPrompt[] = heldOutPrompts(o.prompts, o.promptsDir);
  const magTables = loadMagTables(family);

  const runtime = await PeerRuntime.start();
  const peerModels = new Map<PeerWeights, { target: PeerModel; draft?: PeerModel }>();
  /** This project's target folder per `${weights} ${form}`, and its drafters' per form. */
  const ourDirs = new Map<string, string>();
  const ourDrafters = new Map<PeerForm, string[]>();
  const opened: { close(): Promise<void> }[] = [];
  const rows: PeerRow[] = [];
  let identity = { prompts: 0, identical: 0 };
  try {
    // every conversion first (minutes on a first run, then cached), then every model loads once
    const weights = o.weights.includes('f32') ? o.weights : (['f32', ...o.weights] as PeerWeights[]);
    for (const w of weights) {
      const target = await PeerModel.load(runtime, await artifacts.gguf(targetDir, GGUF_OF[w]));
      const draft = peerDraftDir ? await PeerModel.load(runtime, await artifacts.gguf(peerDraftDir, GGUF_OF[w])) : undefined;
      peerModels.set(w, { target, ...(draft ? { draft } : {}) });
      opened.push(target, ...(draft ? [draft] : []));
      const ours = OURS_OF[w];
      for (const form of ours ? o.forms : []) {
        const base = await inForm(targetDir, form);
        // quantized copies quantize the LM head too: at this size it is a third of the weights read per token
        ourDirs.set(`${w} ${form}`, ours === 'f32' ? base : await artifacts.quantized(base, ours === 'int8' ? 8 : 4, { quantizeHead: true, accuracyLevel: o.accuracyLevel, blockSize: o.blockSize ?? 32, ...(ours === 'int8' && o.scheme === 'w8a8' ? { scheme: 'w8a8' } : {}) }));
      }
    }
    for (const form of o.forms) ourDrafters.set(form, await Promise.all(drafterDirs.map((d) => inForm(d, form))));
    const tok = TextTokenizer.forModel({ dir: targetDir, tokenizerPath: join(targetDir, 'tokenizer.json') });
    const promptIds = prompts.map((p) => tok.encodePrompt(p.text));
    const tokenizerAgrees = prompts.filter((p, i) => sameTokens(peerModels.get('f32')!.target.tokenize(p.text), promptIds[i]!)).length;
    const contextSize = Math.max(...promptIds.map((p) => p.length)) + o.maxTokens + 64;
    const csd = planCascade({ mode: 'csd' }, family.drafters);
    const mag = planCascade({ mode: 'mag' }, family.drafters);
    const peerDraftName = peerDraftDir?.split(/[\\/]/).filter(Boolean).at(-1);

    let reference: (readonly number[])[] | undefined;
    for (const threads of o.threads) {
      const sides: Side[] = [];
      const sessions: ModelSession[] = [];
      const peerSides: PeerSide[] = [];
      try {
        const drafterSessions = new Map<PeerForm, ModelSession[]>();
        for (const form of o.forms) {
          const opened: ModelSession[] = [];
          for (const d of ourDrafters.get(form)!) opened.push(await OrtModelSession.open(d, { intraOpThreads: threads, prefixCache: false, batchInvariant: 'off' }));
          drafterSessions.set(form, opened);
          sessions.push(...opened);
        }
        const magSpec: DrafterSpec = { kind: 'mag', tables: magTables };
        for (const w of o.weights) {
          for (const form of o.forms) {
            const dir = ourDirs.get(`${w} ${form}`);
            if (!dir) continue;
            const target = await OrtModelSession.open(dir, { intraOpThreads: threads, prefixCache: false, batchInvariant: o.batchInvariant ?? 'auto' });
            sessions.push(target);
            const quantizer = [...(o.accuracyLevel === 4 ? [] : [`level ${o.accuracyLevel}`]), ...((o.blockSize ?? 32) === 32 ? [] : [`blocks of ${o.blockSize}`])];
            const w8a8 = OURS_OF[w] === 'int8' && o.scheme === 'w8a8';
            const format = `ONNX ${w === 'f32' ? 'f32' : w8a8 ? 'w8a8+head (cascade quantize --scheme w8a8)' : `${OURS_OF[w]}+head (cascade quantize${quantizer.map((q) => `, ${q}`).join('')})`} ${form}`;
            const neural: DrafterSpec[] = csd.drafters.flatMap((d): DrafterSpec[] => (d === 'mag' ? [magSpec] : [{ kind: 'model', session: drafterSessions.get(form)![family.drafters.indexOf(d)]! }]));
            sides.push(oursSide(w, format, target, 'target only', [], []));
            if (target.batchInvariant && !target.paddedAttention) {
              // what plain decoding costs without the padding that keeps speculation over this target exact (a user who never speculates may turn it off)
              const unpadded = await OrtModelSession.open(dir, { intraOpThreads: threads, prefixCache: false, batchInvariant: 'off' });
              sessions.push(unpadded);
              sides.push(oursSide(w, format, unpadded, PLAIN_UNPADDED, [], []));
            }
            if (family.drafters.length) sides.push(oursSide(w, format, target, `default cascade (${csd.drafters.join(', ')})`, neural, csd.kMatrix));
            sides.push(oursSide(w, format, target, 'MaG', [magSpec], mag.kMatrix));
          }
          const peer = peerModels.get(w)!;
          const specs: [string, PeerSpeculation][] = [['target only', { kind: 'none' }], ['prompt lookup', { kind: 'lookup' }]];
          if (peer.draft) specs.splice(1, 0, [`draft model (${peerDraftName} ${GGUF_OF[w].toUpperCase()})`, { kind: 'draft', draft: peer.draft }]);
          for (const [method, speculation] of specs) {
            const s = await peer.target.side(threads, speculation, contextSize);
            peerSides.push(s);
            sides.push(peerSide(w, method, s));
          }
        }

        if (!reference) {
          // token identity: llama.cpp f32 against this project's f32 target-only (the export as it is), greedy,
          // every prompt, whatever --weights and --forms time
          const refTarget = await OrtModelSession.open(targetDir, { intraOpThreads: threads, prefixCache: false });
          sessions.push(refTarget);
          const refPeer = await peerModels.get('f32')!.target.side(threads, { kind: 'none' }, contextSize);
          peerSides.push(refPeer);
          const ours = oursSide('f32', 'ONNX f32 unfused', refTarget, 'target only', [], []);
          const theirs = peerSide('f32', 'target only', refPeer);
          log(`identity check: llama.cpp f32 against this project's f32 target-only on ${prompts.length} prompts, ${o.maxTokens} greedy tokens each`);
          reference = [];
          const diverged: string[] = [];
          for (const [i, ids] of promptIds.entries()) {
            const a = (await ours.generate(ids, o.maxTokens)).tokenIds;
            const b = (await theirs.generate(ids, o.maxTokens)).tokenIds;
            reference.push(a);
            const at = firstDifference(a, b);
            if (at >= 0) diverged.push(`${prompts[i]!.id} at generated token ${at} (${a[at]} here, ${b[at]} in llama.cpp)`);
          }
          identity = { prompts: prompts.length, identical: prompts.length - diverged.length };
          log(`identity: ${identity.identical}/${identity.prompts} prompts identical; llama.cpp's tokenizer gives the same prompt ids on ${tokenizerAgrees}/${prompts.length}`);
          if (diverged.length) throw new PeerIdentityError(`llama.cpp's f32 GGUF diverges from this project's greedy target-only decoding on ${diverged.length}/${prompts.length} prompts: ${diverged.join('; ')}`);
        }

        // untimed warm-up of every side, then the timed repeats, order rotated each repeat
        for (const s of sides) await s.generate(promptIds[0]!, Math.min(16, o.maxTokens));
        const runs = new Map<Side, Run[][]>(sides.map((s) => [s, []]));
        for (let rep = 0; rep < o.repeats; rep++) {
          for (let k = 0; k < sides.length; k++) {
            const s = sides[(k + rep) % sides.length]!;
            log(`[${threads} thread${threads > 1 ? 's' : ''}] repeat ${rep + 1}/${o.repeats}: ${s.engine} ${s.format} ${s.method}`);
            const perPrompt: Run[] = [];
            for (const ids of promptIds) perPrompt.push(await s.generate(ids, o.maxTokens));
            runs.get(s)!.push(perPrompt);
          }
        }
        const measured = sides.map((s): PeerRow => {
          const reps = runs.get(s)!;
          const sum = (rs: Run[], f: (r: Run) => number) => rs.reduce((a, r) => a + f(r), 0);
          const acc = reps.flat().map((r) => r.acceptance).filter((a): a is number => a !== undefined);
          return {
            engine: s.engine,
            weights: s.weights,
            format: s.format,
            method: s.method,
            threads,
            tokensPerSecond: median(reps.map((rs) => sum(rs, (r) => r.tokenIds.length) / sum(rs, (r) => r.seconds))),
            decodeTokensPerSecond: median(reps.map((rs) => sum(rs, (r) => r.tokenIds.length - 1) / sum(rs, (r) => r.seconds - r.firstTokenSeconds))),
            firstTokenSeconds: median(reps.flat().map((r) => r.firstTokenSeconds)),
            vsPlain: NaN,
            sameAsF32: reps[0]!.filter((r, i) => sameTokens(r.tokenIds, reference![i]!)).length,
            sameAsPlain: 0,
            ...(acc.length ? { acceptance: acc.reduce((a, b) => a + b, 0) / acc.length } : {}),
            ...(s.batchInvariant !== undefined ? { batchInvariant: s.batchInvariant } : {}),
            ...(s.paddedAttention ? { paddedAttention: true } : {}),
          };
        });
        for (const [i, r] of measured.entries()) {
          const plainIndex = measured.findIndex((p) => p.engine === r.engine && p.format === r.format && p.method === 'target only');
          r.vsPlain = r.tokensPerSecond / measured[plainIndex]!.tokensPerSecond;
          const plain = runs.get(sides[plainIndex]!)![0]!;
          r.sameAsPlain = runs.get(sides[i]!)![0]!.filter((x, j) => sameTokens(x.tokenIds, plain[j]!.tokenIds)).length;
        }
        rows.push(...measured);
      } finally {
        for (const s of peerSides) await s.close();
        await Promise.all(sessions.map((s) => s.close()));
      }
    }
  } finally {
    for (const m of opened) await m.close();
    await runtime.close();
  }
  report(o, prompts, rows, identity);
  return { rows, identity };
}

const WEIGHT_LABEL: Record<PeerWeights, string> = { f32: 'f32', f16: 'f16', '8': '8-bit', '4': '4-bit' };

function report(o: PeerBenchOptions, prompts: readonly PeerPrompt[], rows: readonly PeerRow[], identity: { prompts: number; identical: number }): void {
  const n = prompts.length;
  const full = formatTable(
    ['engine', 'weights', 'method', 'threads', 'batch inv.', 'tok/s', 'decode tok/s', 'x plain', 'first token s', 'accept', `= f32 (of ${n})`, `= plain (of ${n})`],
    rows.map((r) => [r.engine, r.format, r.method, r.threads, r.batchInvariant === undefined ? '-' : r.paddedAttention ? 'graph' : r.batchInvariant ? 'on' : 'off', r.tokensPerSecond, r.decodeTokensPerSecond, r.vsPlain, r.firstTokenSeconds, r.acceptance ?? '-', r.sameAsF32, r.sameAsPlain]),
  );
  // the fastest row of an engine at a width, at thread count t (undefined: at whichever is fastest), plain decoding only or any method
  const fastest = (engine: PeerRow['engine'], w: PeerWeights, t: number | undefined, plainOnly: boolean) =>
    rows
      .filter((r) => r.engine === engine && r.weights === w && (t === undefined || r.threads === t) && r.method !== PLAIN_UNPADDED && (!plainOnly || r.method === 'target only'))
      .reduce<PeerRow | undefined>((a, b) => (!a || b.tokensPerSecond > a.tokensPerSecond ? b : a), undefined);
  const eachBest = o.threads.length > 1;
  const cell = (r: PeerRow | undefined, withMethod = false) => (r ? `${r.tokensPerSecond.toFixed(0)} (${r.decodeTokensPerSecond.toFixed(0)})${withMethod ? ` ${r.method}` : ''}` : '-');
  const summaryRows: string[][] = [];
  for (const t of [...o.threads, ...(eachBest ? [undefined] : [])]) {
    for (const w of o.weights) {
      const ob = fastest('cascade-cluster', w, t, false);
      const pb = fastest('llama.cpp', w, t, false);
      // at each engine's best thread count, a cell says which count that was
      const at = (r: PeerRow | undefined, text: string) => (t === undefined && r ? `${text} @${r.threads}` : text);
      const op = fastest('cascade-cluster', w, t, true);
      const pp = fastest('llama.cpp', w, t, true);
      summaryRows.push([WEIGHT_LABEL[w], t === undefined ? 'each best' : String(t), at(op, cell(op)), at(ob, cell(ob, true)), at(pp, cell(pp)), at(pb, cell(pb, true)), ob && pb ? (ob.tokensPerSecond / pb.tokensPerSecond).toFixed(2) : '-']);
    }
  }
  const summary = formatTable(['weights', 'threads', 'this project plain (fastest form)', 'this project best', 'llama.cpp plain', 'llama.cpp best', 'best / best'], summaryRows);
  const what =
    `${n} held-out prompts (${[...new Set(prompts.map((p) => p.kind))].join(', ')}), ${o.maxTokens} greedy tokens each, both engines in one process, every side warm ` +
    `(models loaded once, one untimed warm-up request; this project's automatic prefix caching off, as llama.cpp's history is cleared per request); tok/s = generated tokens over whole requests (prefill included), decode = tokens after the first over the time after it; ` +
    `median over ${o.repeats} repeats of the sums over all prompts; this project's targets at --batch-invariant ${o.batchInvariant ?? 'auto'} (batch inv.: on, their one-token passes ran as two rows; graph, their graph pads its attention by a row, which makes them invariant unpadded; off, neither). Identity: llama.cpp f32 reproduced this project's f32 greedy target-only tokens on ${identity.identical}/${identity.prompts} prompts`;
  const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} logical CPUs visible, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')} at the end`;
  writeJson(o.out, 'peer', { what, machine, note: o.note, command: o.command, batchInvariant: o.batchInvariant ?? 'auto', identity, prompts: prompts.map((p) => ({ id: p.id, kind: p.kind })), rows });
  const md =
    `# cascade bench peer: this project against llama.cpp on the same weights\n\n${o.note ? `**${o.note}**\n\n` : ''}${what}.\n\n` +
    `Machine: ${machine}.\n\n${o.command ? `Command: \`${o.command}\`\n\n` : ''}` +
    `## Side by side (tok/s end to end, decode in brackets)\n\n\`\`\`\n${summary}\n\`\`\`\n\n## Every configuration\n\n\`\`\`\n${full}\n\`\`\`\n\n` +
    `accept: this project, mean tokens per target pass; llama.cpp, draft tokens validated / drafted. = f32: prompts whose tokens equal this project's f32 target-only output; = plain: equal to the same engine's plain decoding at the same weights. ${PLAIN_UNPADDED}: plain decoding of a target that pads its one-token passes (batch inv. on), timed without the padding; speculation over it would not be exact, so the summary leaves it out.\n\n` +
    `Prompts: ${prompts.map((p) => p.id).join(', ')}\n`;
  writeFileSync(join(o.out, 'peer.md'), md);
  process.stdout.write(`${what}.\n${o.note ? `${o.note}\n` : ''}\n${summary}\n\n${full}\n\nwrote ${join(o.out, 'peer.json')} and peer.md\n`);
}
