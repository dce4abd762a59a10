import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ROOT } from '../checkout.ts';
import { gunzipSync } from 'node:zlib';
import { folderKey, fusedCopy, quantizedCopy, type QuantizeScheme } from '../cli/quantize.ts';
import { CascadeError, InvalidArgumentError } from '../errors.ts';

/**
 * What `cascade bench peer` runs on: held-out prompts, and the converted models (the target's
 * `cascade quantize` int8/int4 folders and the GGUF files), made once into a cache folder.
 */

/** tools/train/quantize.py or tools/gguf/export_gguf.py failed; its own message went to stderr. */
export class PeerToolError extends CascadeError {
  override readonly name = 'PeerToolError';
}

/** One held-out prompt: where it came from and its text. */
export interface PeerPrompt {
  readonly id: string;
  readonly kind: 'code' | 'english' | 'file';
  readonly text: string;
}

const PROMPT_CHARS = 1200;
/** Packages this project always installs; their JavaScript is held out (the corpus excluded npm's own sources, bench/prompts uses them). */
const CODE_PACKAGES = ['commander', 'yaml', 'fastify', 'ioredis', 'bullmq', 'pure-rand', 'openai', 'prom-client', 'zod', '@huggingface/jinja'];
/** Sections 1 and 8: bench/prompts draws on 2 and 3. */
const MAN_DIRS = ['/usr/share/man/man1', '/usr/share/man/man8'];

/** This checkout's root (src/checkout.ts ROOT), which must hold the GGUF exporter. */
const repoRoot = (): string => {
  if (existsSync(join(ROOT, 'tools', 'gguf', 'export_gguf.py'))) return ROOT;
  throw new PeerToolError('tools/gguf/export_gguf.py is missing from this installation (it ships in the repository)');
};

/** The first `chars` characters of `text` cut at a line end. */
function cut(text: string, chars: number): string {
  if (text.length <= chars) return text;
  const end = text.lastIndexOf('\n', chars);
  return text.slice(0, end > chars / 2 ? end + 1 : chars);
}

/** `n` items spread evenly over `xs` (deterministic). */
const evenly = <T>(xs: readonly T[], n: number): T[] => (xs.length <= n ? [...xs] : Array.from({ length: n }, (_, i) => xs[Math.floor((i * xs.length) / n)]!));

function walkJs(dir: string, out: string[], depth = 0): void {
  if (depth > 4 || !existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    if (e.name === 'node_modules' || e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) walkJs(p, out, depth + 1);
    else if (/\.(c|m)?js$/.test(e.name) && !/\.min\.js$/.test(e.name)) out.push(p);
  }
}

/** Roff source as plain text: macro lines dropped (their arguments kept for headings and fonts), escapes removed. */
export function roffText(src: string): string {
  const lines: string[] = [];
  // the page starts at its first section heading (pod2man and others put string definitions before it)
  const start = src.search(/^\.SH/m);
  for (const raw of (start < 0 ? '' : src.slice(start)).split('\n')) {
    let line = raw;
    if (/^[.'](\\"|TH|so|de|if|ie|el|ds|nr|ig|PD|IX|ne|sp|br|in|ti|ta|fi|nf|ft|ps|vs|ad|na|hy|nh|ll|TP|PP|LP|P|IP|RS|RE|EX|EE|\s*$)/.test(line)) {
      const m = /^\.(?:SH|SS|IP)\s+(.*)$/.exec(line);
      if (!m) continue;
      line = m[1]!.replace(/^"(.*)"$/, '$1');
    } else if (/^[.']/.test(line)) line = line.replace(/^[.'][A-Za-z]+\s*/, '').replace(/"/g, '');
    line = line
      .replace(/\\f(\[[^\]]*\]|\(..|.)/g, '')
      .replace(/\\s[-+]?\d/g, '')
      .replace(/\\w'[^']*'u?/g, '')
      .replace(/\\\((..)/g, (_, c: string) => ({ em: '—', en: '–', aq: "'", dq: '"', lq: '"', rq: '"', bu: '•', co: '©' })[c] ?? '')
      .replace(/\\\[[^\]]*\]/g, '')
      .replace(/\\[-e]/g, (e) => (e === '\\-' ? '-' : '\\'))
      .replace(/\\[&|^~ 0c%]/g, (e) => (e === '\\ ' || e === '\\~' || e === '\\0' ? ' ' : ''));
    lines.push(line);
  }
  return lines.join('\n').replace(/\n{3,}/g, '\n\n').trim();
}

/**
 * Held-out prompts: from `dir` (every WORKLOAD.jsonl row's `prompt`, every .txt file whole), or
 * half from the JavaScript of this project's dependencies and half from man pages of sections 1 and
 * 8 (code only where no man pages are installed), none of which the family was trained on.
 */
export function heldOutPrompts(n: number, dir?: string): PeerPrompt[] {
  if (dir !== undefined) {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new InvalidArgumentError(`--prompts-dir ${dir} is not a folder`);
    const found: PeerPrompt[] = [];
    for (const f of readdirSync(dir).sort()) {
      const path = join(dir, f);
      if (f.endsWith('.txt')) found.push({ id: f, kind: 'file', text: readFileSync(path, 'utf8') });
      else if (f.endsWith('.jsonl')) {
        readFileSync(path, 'utf8').split('\n').forEach((l, i) => {
          if (!l.trim()) return;
          const row = JSON.parse(l) as { id?: unknown; prompt?: unknown };
          if (typeof row.prompt !== 'string') throw new InvalidArgumentError(`${path} line ${i + 1} has no string "prompt"`);
          found.push({ id: typeof row.id === 'string' ? row.id : `${f}:${i + 1}`, kind: 'file', text: row.prompt });
        });
      }
    }
    if (!found.length) throw new InvalidArgumentError(`--prompts-dir ${dir} holds no .txt file and no .jsonl row with a "prompt"`);
    return evenly(found, n);
  }
  const root = repoRoot();
  const js: string[] = [];
  for (const pkg of CODE_PACKAGES) walkJs(join(root, 'node_modules', pkg), js);
  const modules = join(root, 'node_modules');
  // gcloud's thousands of generated pages would crowd out the rest
  const manPages = MAN_DIRS.filter((d) => existsSync(d)).flatMap((d) => readdirSync(d).sort().filter((f) => f.endsWith('.gz') && !f.startsWith('gcloud')).map((f) => join(d, f)));
  const manCount = manPages.length ? Math.floor(n / 2) : 0;
  const code = spread(js, n - manCount, (p): PeerPrompt | undefined => {
    const text = readFileSync(p, 'utf8');
    if (text.length < PROMPT_CHARS * 2 || text.split('\n').length <= 40) return undefined;
    return { id: `js:${p.slice(modules.length + 1)}`, kind: 'code', text: cut(text, PROMPT_CHARS) };
  });
  const man = spread(manPages, manCount, (p): PeerPrompt | undefined => {
    let text: string;
    try {
      text = roffText(gunzipSync(readFileSync(p)).toString('utf8'));
    } catch {
      return undefined;
    }
    // prose: from the DESCRIPTION section on, where there is one
    const description = text.search(/^DESCRIPTION$/m);
    if (description > 0) text = text.slice(description);
    if (text.length < PROMPT_CHARS * 2) return undefined;
    return { id: `man:${p.split('/').at(-1)!.replace(/\.gz$/, '')}`, kind: 'english', text: cut(text, PROMPT_CHARS) };
  });
  const picked = [...code, ...man];
  if (picked.length < n) throw new InvalidArgumentError(`found ${picked.length} held-out prompts for --prompts ${n}: give a --prompts-dir`);
  return picked;
}

/**
 * Up to `n` prompts spread evenly over `paths` (sorted): from each of n equal stretches, the first
 * path that makes one. Deterministic, and reads only a few files of a long list.
 */
function spread(paths: readonly string[], n: number, make: (path: string) => PeerPrompt | undefined): PeerPrompt[] {
  const out: PeerPrompt[] = [];
  for (let i = 0; i < n; i++) {
    const end = Math.floor(((i + 1) * paths.length) / n);
    for (let j = Math.floor((i * paths.length) / n); j < end; j++) {
      const p = make(paths[j]!);
      if (p) {
        out.push(p);
        break;
      }
    }
  }
  return out;
}

function runTool(python: string, script: string, args: readonly string[]): Promise<void> {
  return new Promise((done, fail) => {
    const child = spawn(python, [script, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('error', (err) => fail(new PeerToolError(`cannot run ${python}: ${err.message}`, { cause: err })));
    child.on('close', (code) => (code === 0 ? done() : fail(new PeerToolError(`${script} ${args.join(' ')} failed (exit ${code}); its message is above`))));
  });
}

/** GGUF weight types the exporter writes (tools/gguf/export_gguf.py --type). */
export type GgufType = 'f32' | 'f16' | 'q8_0' | 'q4_0';

/** Makes (once) the converted models of one bench run under `cacheDir`; returns their paths. */
export class PeerArtifacts {
  constructor(
    private readonly cacheDir: string,
    private readonly python: string,
    private readonly log: (msg: string) => void,
  ) {}

  /** `cascade quantize --bits N [--quantize-head] [--accuracy-level L] [--block-size B] [--scheme w8a8]` of `model`, cached (quantizedCopy). */
  quantized(model: string, bits: 8 | 4, o: { readonly quantizeHead?: boolean; readonly accuracyLevel?: number; readonly blockSize?: number; readonly scheme?: QuantizeScheme } = {}): Promise<string> {
    return quantizedCopy(model, bits, { cacheDir: this.cacheDir, name: modelBase(model), python: this.python, log: this.log, ...o });
  }

  /** tools/train/fuse.py's form of `model`, with a float16 KV cache when `kvDtype` says so, cached (fusedCopy). */
  fused(model: string, kvDtype?: 'float16'): Promise<string> {
    return fusedCopy(model, { cacheDir: this.cacheDir, name: modelBase(model), python: this.python, log: this.log, ...(kvDtype ? { kvDtype } : {}) });
  }

  /** `model` as GGUF of `type` (tools/gguf/export_gguf.py), cached. */
  async gguf(model: string, type: GgufType): Promise<string> {
    const out = join(this.cacheDir, 'gguf', `${modelBase(model)}-${folderKey(model)}-${type}.gguf`);
    if (existsSync(out)) return out;
    this.log(`exporting ${model} to GGUF ${type} into ${out}`);
    mkdirSync(join(this.cacheDir, 'gguf'), { recursive: true });
    await runTool(this.python, join(repoRoot(), 'tools', 'gguf', 'export_gguf.py'), ['--model', model, '--out', out, '--type', type, '--cache-dir', this.cacheDir]);
    return out;
  }
}

const modelBase = (dir: string): string => resolve(dir).split(/[\\/]/).filter(Boolean).at(-1) ?? 'model';
