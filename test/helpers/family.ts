import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadFamily, memberDir, type Family } from '../../src/models/family.ts';

export const MODELS_DIR = new URL('../../models', import.meta.url).pathname;
export const family: Family = loadFamily(MODELS_DIR);
export const members: string[] = [family.target, ...family.drafters];
export const dirOf = (name: string): string => memberDir(family, name);

/** The reference written by tools/train/export.py: input ids and torch logits [n, vocab]. */
export interface Reference {
  text: string;
  inputIds: number[];
  prefix: number;
  logits: Float32Array;
}

export function reference(name: string): Reference {
  const dir = dirOf(name);
  const meta = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8'));
  const buf = readFileSync(join(dir, meta.logits.file));
  return { text: meta.text, inputIds: meta.input_ids, prefix: meta.prefix, logits: new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4) };
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
