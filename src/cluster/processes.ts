import { spawn, type ChildProcess } from 'node:child_process';
import { cliCommand, ROOT } from '../checkout.ts';

export interface RoleProcess {
  readonly child: ChildProcess;
  /** Everything the process wrote so far. */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `cascade <args>` (this checkout's CLI, `cliCommand`) as its own OS process and resolves once it prints `ready: …`: how tests and `bench cluster` start roles.
 */
export async function spawnRole(args: readonly string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<RoleProcess> {
  const child = spawn(process.execPath, [...cliCommand(), ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cascade ${args.join(' ')} not ready after ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const check = () => {
      if (/^ready: /m.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`cascade ${args.join(' ')} exited with ${code}:\n${out}`));
    });
  });
  return {
    child,
    output: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
      child.kill(signal);
      await exited;
      clearTimeout(kill);
    },
  };
}
