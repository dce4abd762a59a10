import Fastify, { type FastifyInstance } from 'fastify';
import { Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The probe and metrics endpoints of a role that has no HTTP API of its own (actors, coordinators),
 * for Kubernetes and Prometheus:
 * - `GET /live`: 200 while the process serves HTTP (liveness: a restart would help only when this fails);
 * - `GET /health`: 200 with the role's details when its dependencies answer, 503 with the reason
 *   when one does not (readiness: take the pod out of rotation, do not restart it);
 * - `GET /metrics`: the process's Prometheus metrics (CPU, memory, event-loop lag, GC) and the role's own.
 */
export interface HealthServer {
  readonly url: string;
  close(): Promise<void>;
}

export interface HealthOptions {
  readonly host?: string;
  readonly port: number;
  /** Resolves with details when healthy; throws (or times out) when not. */
  readonly check: () => Promise<Record<string, unknown>>;
  /** Longest a check may take before the role counts as unhealthy. */
  readonly timeoutMs?: number;
  readonly registry?: Registry;
}

/** `work`, or a rejection when it takes longer than `ms`. */
async function deadline<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** `work` within `ms`, or a rejection naming what failed or did not answer. */
export const within = <T>(ms: number, what: string, work: Promise<T>): Promise<T> =>
  deadline(ms, what, work.catch((err: Error) => Promise.reject(new Error(`${what}: ${err.message}`))));

export function processRegistry(role: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ role });
  collectDefaultMetrics({ register: registry, prefix: 'cascade_' });
  return registry;
}

export async function startHealthServer(o: HealthOptions): Promise<HealthServer> {
  const app: FastifyInstance = Fastify({ logger: false });
  const registry = o.registry ?? new Registry();
  app.get('/live', async () => ({ status: 'ok' }));
  app.get('/health', async (_req, reply) => {
    try {
      return { status: 'ok', ...(await deadline(o.timeoutMs ?? 2000, 'the health check', o.check())) };
    } catch (err) {
      return reply.code(503).send({ status: 'unavailable', message: (err as Error).message });
    }
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
  const url = await app.listen({ host: o.host ?? '0.0.0.0', port: o.port });
  return { url, close: () => app.close() };
}
