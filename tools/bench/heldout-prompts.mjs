#!/usr/bin/env node
/**
 * Builds held-out prompt sets for `cascade bench cascade --prompts-dir DIR` from sources outside
 * bench/prompts/ and outside every training corpus of the family (Python stdlib and its docs):
 *
 * - code.jsonl: JavaScript files of this checkout's node_modules (bench/prompts/code.jsonl is npm's
 *   own lib/, which is not there), minified and generated files skipped;
 * - english.jsonl: DESCRIPTION sections of the English man pages in sections 1, 5, 7 and 8 of
 *   /usr/share/man (bench/prompts/english.jsonl is sections 2 and 3), rendered by man(1); the
 *   Google Cloud SDK's thousands of near-identical gcloud pages are skipped.
 *
 * Each line is {id, source, license, prompt} as bench/prompts (workloads.ts): a prompt is whole
 * lines of about --chars characters (default 700, as bench/prompts). Files are picked evenly over
 * the sorted candidates, so a set depends only on what is installed; prompts are deduplicated by
 * content. The grounded and long workloads are not built (use bench/prompts for those).
 *
 * Usage: node tools/bench/heldout-prompts.mjs --out scratch/heldout [--count 24] [--chars 700]
 *        then: cascade bench cascade --prompts-dir scratch/heldout --workload code,english
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    count: { type: 'string', default: '24' },
    chars: { type: 'string', default: '700' },
    'node-modules': { type: 'string', default: 'node_modules' },
    man: { type: 'string', default: '/usr/share/man' },
  },
});
if (!values.out) {
  console.error('usage: node tools/bench/heldout-prompts.mjs --out DIR [--count 24] [--chars 700] [--node-modules node_modules] [--man /usr/share/man]');
  process.exit(2);
}
const count = Number(values.count);
const chars = Number(values.chars);
if (!(Number.isInteger(count) && count > 0 && Number.isInteger(chars) && chars >= 100)) {
  console.error('--count must be a positive integer and --chars an integer >= 100');
  process.exit(2);
}

/** Every file under `dir` whose name passes `keep`, sorted (symbolic links not followed). */
function walk(dir, keep, out = []) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) walk(path, keep, out);
    else if (st.isFile() && keep(name, st)) out.push(path);
  }
  return out;
}

/** Whole lines from `lines`, starting at the first, until about `chars` characters. */
function cut(lines) {
  const kept = [];
  let n = 0;
  for (const line of lines) {
    if (n >= chars) break;
    kept.push(line);
    n += line.length + 1;
  }
  return n >= chars * 0.8 ? kept.join('\n').slice(0, chars) : undefined;
}

/** Picks up to `count` prompts evenly over `candidates`, each through `make` (undefined = skip). */
function pick(candidates, make) {
  const rows = [];
  const seen = new Set();
  const stride = Math.max(1, Math.floor(candidates.length / (count * 3)));
  // evenly spaced first; where those fall short, the candidates halfway between them, and so on
  for (let offset = 0; offset < stride && rows.length < count; offset = offset === 0 ? Math.floor(stride / 2) || stride : offset + 1) {
    for (let i = offset; i < candidates.length && rows.length < count; i += stride) {
      const row = make(candidates[i]);
      if (!row || seen.has(row.prompt)) continue;
      seen.add(row.prompt);
      rows.push(row);
    }
  }
  return rows;
}

/** A JavaScript file's code after its leading comments and directives. */
function codePrompt(path) {
  const text = readFileSync(path, 'utf8');
  if (text.includes('\r') || /^.{400,}$/m.test(text)) return undefined; // minified or generated
  const lines = text.split('\n');
  let start = 0;
  let inBlock = false;
  for (; start < lines.length; start++) {
    const l = lines[start].trim();
    if (inBlock) {
      if (l.includes('*/')) inBlock = false;
      continue;
    }
    if (l === '' || l.startsWith('//') || l.startsWith('#!') || /^['"]use strict['"];?$/.test(l)) continue;
    if (l.startsWith('/*')) {
      inBlock = !l.includes('*/');
      continue;
    }
    break;
  }
  const prompt = cut(lines.slice(start));
  if (!prompt) return undefined;
  const rel = relative(values['node-modules'], path);
  const pkg = rel.startsWith('@') ? rel.split('/').slice(0, 2).join('/') : rel.split('/')[0];
  const license = (() => {
    try {
      return JSON.parse(readFileSync(join(values['node-modules'], pkg, 'package.json'), 'utf8')).license ?? 'see package';
    } catch {
      return 'see package';
    }
  })();
  return { id: `node_modules:${rel}`, source: `node_modules/${pkg}`, license: typeof license === 'string' ? license : 'see package', prompt };
}

/** The DESCRIPTION section of a man page, rendered as plain text, paragraphs unwrapped to lines. */
function manPrompt(path) {
  let text;
  try {
    text = execFileSync('man', ['-l', path], { env: { ...process.env, MANWIDTH: '80', MANPAGER: 'cat', PAGER: 'cat', MAN_KEEP_FORMATTING: '' }, stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 24 }).toString('utf8');
  } catch {
    return undefined;
  }
  text = text.replace(/.\x08/g, '').replace(/\u2010\n\s*/g, '');
  const m = /^DESCRIPTION\n([\s\S]*?)(?=^[A-Z][A-Z ]+\n)/m.exec(text);
  if (!m) return undefined;
  const paragraphs = m[1].split(/\n\s*\n/).map((p) => p.split('\n').map((l) => l.trim()).join(' ').replace(/ {2,}/g, ' ').trim()).filter(Boolean);
  const prompt = cut(paragraphs);
  if (!prompt) return undefined;
  const name = path.split('/').pop().replace(/\.gz$/, '');
  return { id: `man:${name}`, source: `${path.split('/').slice(-2, -1)[0]} of /usr/share/man`, license: 'per page (Debian package of the page)', prompt };
}

if (!existsSync(values['node-modules'])) throw new Error(`no ${values['node-modules']}: run npm ci first`);
const js = walk(values['node-modules'], (name, st) => name.endsWith('.js') && !name.endsWith('.min.js') && st.size >= 2000 && st.size < 200_000);
const pages = ['man1', 'man5', 'man7', 'man8'].flatMap((s) => (existsSync(join(values.man, s)) ? walk(join(values.man, s), (name) => /\.\d\w*(\.gz)?$/.test(name) && !name.startsWith('gcloud')) : []));
const sets = { code: pick(js, codePrompt), english: pick(pages, manPrompt) };
mkdirSync(values.out, { recursive: true });
for (const [name, rows] of Object.entries(sets)) {
  if (rows.length < count) console.error(`warning: ${name} has ${rows.length} prompts of the ${count} asked`);
  writeFileSync(join(values.out, `${name}.jsonl`), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  console.log(`${join(values.out, `${name}.jsonl`)}: ${rows.length} prompts from ${name === 'code' ? js.length : pages.length} candidates`);
}
