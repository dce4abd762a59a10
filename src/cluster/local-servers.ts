import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect as tcpConnect } from 'node:net';
import { CascadeError } from '../errors.ts';

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

/** Starts `nats-server` on a free loopback port (JetStream off: the cluster uses core NATS). */
export async function startNats(options: { user?: string; pass?: string; port?: number; detached?: boolean } = {}): Promise<LocalServer> {
  const port = options.port ?? (await freePort());
  const args = ['-a', '127.0.0.1', '-p', String(port)];
  if (options.user) args.push('--user', options.user, '--pass', options.pass ?? '');
  const child = launch('nats-server', args, 'NATS', options.detached);
  await waitForPort(port, 10_000, child);
  const auth = options.user ? `${encodeURIComponent(options.user)}:${encodeURIComponent(options.pass ?? '')}@` : '';
  return { url: `nats://${auth}127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
}

/** Starts `redis-server` on a free loopback port, in memory only (no RDB, no AOF). */
export async function startRedis(options: { port?: number; password?: string; detached?: boolean } = {}): Promise<LocalServer> {
  const port = options.port ?? (await freePort());
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  if (options.password) args.push('--requirepass', options.password);
  const child = launch('redis-server', args, 'Redis', options.detached);
  await waitForPort(port, 10_000, child);
  const auth = options.password ? `:${encodeURIComponent(options.password)}@` : '';
  return { url: `redis://${auth}127.0.0.1:${port}`, port, process: child, stop: stopper(child) };
}
