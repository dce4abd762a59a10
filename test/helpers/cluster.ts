import { rmSync } from 'node:fs';

export { spawnRole, type RoleProcess } from '../../src/cluster/processes.ts';

interface Stoppable {
  stop(): Promise<unknown>;
}

/**
 * A cluster test's teardown, in the order that loses nothing: the gateways (a failure to stop one is
 * ignored: a test may have stopped it), then the role processes, then the servers (nats-server,
 * redis-server), then the scratch folder. Parts a failed `before` never made may be undefined.
 */
export async function stopCluster(parts: {
  gateways?: (Stoppable | undefined)[];
  roles?: Iterable<Stoppable>;
  servers?: (Stoppable | undefined)[];
  scratch?: string;
}): Promise<void> {
  await Promise.all((parts.gateways ?? []).map((g) => g?.stop().catch(() => undefined)));
  await Promise.all([...(parts.roles ?? [])].map((r) => r.stop()));
  await Promise.all((parts.servers ?? []).map((s) => s?.stop()));
  if (parts.scratch) rmSync(parts.scratch, { recursive: true, force: true });
}
