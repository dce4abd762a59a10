import { isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** True when this code runs compiled (tsc's dist/), false when it runs from the TypeScript sources under tsx. */
export const COMPILED = import.meta.url.endsWith('.js');

/**
 * The checkout's root folder (where models/, bench/ and tools/ are), whether this code runs from the
 * TypeScript sources (src/, under tsx) or compiled by tsc (dist/src/).
 */
export const ROOT = fileURLToPath(new URL(COMPILED ? '../..' : '..', import.meta.url));

/**
 * How to start this checkout's `cascade` CLI as a child process: `process.execPath` with `args`.
 *
 * - `CASCADE_CLI` (a path to a compiled `main.js`, relative to the root or absolute) wins: `npm test`
 *   builds dist/ with tsc and points it there, since a compiled process starts on about half the CPU
 *   of one under tsx, and the tests start hundreds of them.
 * - Otherwise the CLI in the form this process runs: compiled, dist/src/cli/main.js; from the
 *   sources, bin/cascade.js (the installed command, which loads them through tsx from any working
 *   directory).
 */
export function cliCommand(): string[] {
  const override = process.env.CASCADE_CLI;
  if (override) return [isAbsolute(override) ? override : resolve(ROOT, override)];
  if (COMPILED) return [fileURLToPath(new URL('./cli/main.js', import.meta.url))];
  return [resolve(ROOT, 'bin', 'cascade.js')];
}
