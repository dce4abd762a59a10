import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { cliCommand, ROOT } from '../../src/checkout.ts';

/** The CLI's commands as child processes, for the CLI tests. */
export const run = promisify(execFile);
/** `process.execPath` arguments that start the CLI: compiled when `npm test` set CASCADE_CLI, else from the sources (cliCommand, src/checkout.ts). */
export const CLI = cliCommand();
export const cascade = (...args: string[]) => run(process.execPath, [...CLI, ...args], { cwd: ROOT });

/** Runs a command that must fail; its exit code and stderr. */
export async function fails(args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stderr: string }> {
  try {
    await run(process.execPath, [...CLI, ...args], { cwd: ROOT, ...options });
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error(`cascade ${args.join(' ')} succeeded`);
}
