import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect as tcpConnect } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CascadeError } from '../errors.ts';
import { natsConfig, redisConfig, type Role } from './security.ts';

/** A free TCP port on the loopback interface. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts connections on the port. */
export async function waitForPort(port: number, timeoutMs = 10_000, child?: ChildProcess): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new CascadeError(`${child.spawnfile} exited with status ${child.exitCode} before listening on port ${port}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = tcpConnect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new CascadeError(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface LocalServer {
  readonly url: string;
  readonly port: number;
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill('SIGKILL'), 3000);
      child.once('exit', () => (clearTimeout(kill), resolve()));
      child.kill('SIGTERM');
    });
}

/** `detached`: the server outlives this process (cluster up); otherwise it is this process's child. */
function launch(cmd: string, args: string[], what: string, detached = false): ChildProcess {
  const child = spawn(cmd, args, { stdio: 'ignore', detached });
  child.on('error', () => undefined);
  if (child.pid === undefined) throw new CascadeError(`cannot start ${what} (${cmd}): is it installed? (Debian: apt-get install ${cmd})`);
  return child;
}

/** A 0600 file in `dir` (a fresh temporary directory by default). */
function privateFile(dir: string | undefined, name: string, text: string): string {
  const path = join(dir ?? mkdtempSync(join(tmpdir(), 'cascade-')), name);
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

/**
 * Starts `nats-server` on a free loopback port (JetStream off: the cluster uses core NATS). With
 * `users`, it requires credentials: one user per role with its subject permissions (security.ts),
 * from a 0600 config file in `configDir`. `maxPayload`: the server's max_payload in bytes (default 1 MiB).
 * The URL returned carries no credentials.
 */
export async function startNats(options: { users?: Record<Role, string>; configDir?: string; port?: number; detached?: boolean; maxPayload?: number } = {}): Promise<LocalServer> {
  const port = options.port ?? (await freePort());
  const listen = `127.0.0.1:${port}`;
  const limit = options.maxPayload !== undefined ? `max_payload: ${options.maxPayload}\n` : '';
  const args =
    options.users || limit ? ['-c', privateFile(options.configDir, 'nats.conf', (options.users ? natsConfig(listen, options.users) : `listen: "${listen}"\n`) + limit)] : ['-a', '127.0.0.1', '-p', String(port)];
  const child = launch('nats-server', args, 'NATS', options.detached);
  await waitForPort(port, 10_000, child);
  return { url: `nats://127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
}

/**
 * Starts `redis-server` on a free loopback port, in memory only (no RDB, no AOF) unless
 * `persistenceDir` is given (append-only file there). With `acl`, the default user is off and only
 * that ACL user may connect (0600 config file in `configDir`). The URL returned carries no credentials.
 */
export async function startRedis(options: { port?: number; acl?: { user: string; password: string }; persistenceDir?: string; configDir?: string; detached?: boolean } = {}): Promise<LocalServer> {
  const port = options.port ?? (await freePort());
  const args = options.acl
    ? [privateFile(options.configDir, 'redis.conf', redisConfig(port, options.acl.user, options.acl.password, options.persistenceDir))]
    : ['--port', String(port), '--bind', '127.0.0.1', ...(options.persistenceDir ? ['--dir', options.persistenceDir, '--appendonly', 'yes'] : ['--save', '', '--appendonly', 'no'])];
  const child = launch('redis-server', args, 'Redis', options.detached);
  await waitForPort(port, 10_000, child);
  return { url: `redis://127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
}
