import { Rng } from '../../src/kernels/rng.ts';
import type { ModelSession } from '../../src/models/session.ts';

/**
 * `session` whose forwards yield to the event loop `ticks()` times first: the in-memory models answer
 * at once, so this gives the target a pass time and the drafter a step time (a drafter whose ticks
 * exceed the target's is late), as worker threads do, without the test waiting on timers.
 */
export function paced(session: ModelSession, ticks: () => number): ModelSession {
  const pause = async () => {
    for (let n = ticks(); n > 0; n--) await new Promise((r) => setImmediate(r));
  };
  return new Proxy(session, {
    get: (inner, key) => {
      if (key === 'forward' || key === 'step' || key === 'forwardBatch') {
        const f = Reflect.get(inner, key) as (...a: unknown[]) => Promise<unknown>;
        return async (...args: unknown[]) => {
          await pause();
          return f.apply(inner, args);
        };
      }
      const value: unknown = Reflect.get(inner, key);
      return typeof value === 'function' ? value.bind(inner) : value;
    },
  });
}

/** A seeded stream in [0, 1) for the pacing (tests are reproducible; exactness holds for any pacing). */
export function jitter(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.uniform();
}
