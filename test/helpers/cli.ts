import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

/** The CLI's commands as child processes, for the CLI tests. */
export const run = promisify(execFile);
export const CLI = ['--import', 'tsx', new URL('../../src/cli/main.ts', import.meta.url).pathname];
export const cascade = (...args: string[]) => run(process.execPath, [...CLI, ...args], { cwd: new URL('../..', import.meta.url).pathname });

/** Runs a command that must fail; its exit code and stderr. */
export async function fails(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await cascade(...args);
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error(`cascade ${args.join(' ')} succeeded`);
}
