import { decode, encode } from './messages.ts';
import { subjects, TransportError, type Subscription, type Transport } from './transport.ts';

/** How often an actor publishes its heartbeat on `subjects.alive`, ms (ActorOptions.heartbeatMs). */
export const HEARTBEAT_MS = 1000;

/** How long an actor may go unheard before a call in flight to it is given up, ms (three heartbeats). */
export const ACTOR_SILENCE_MS = 3000;

/** An instance unheard for this long (or ten silences, if longer) is forgotten, ms. */
const FORGET_MS = 60_000;

/** A call in flight to one actor instance, given up once the instance falls silent (ActorLiveness.watch). */
export interface Watch {
  /** Rejects with TransportError (`silent`) when the instance falls silent; never resolves. */
  readonly silent: Promise<never>;
  stop(): void;
}

/**
 * What a coordinator or gateway hears of the actors: each actor publishes `{ model, instance,
 * sessions }` on `subjects.alive` every HEARTBEAT_MS from its main thread (its models run in worker
 * threads, so a long pass does not stop it). A process that was killed, frozen or cut off the
 * network stops; NATS then delivers nothing on a request already sent to it, which otherwise
 * fails only at the call timeout (10 s by default). `watch` gives up such a call once the instance
 * has been silent for `silenceMs` instead, so the session is placed again seconds sooner; the
 * output is unchanged (the coordinator's copy of the context is resent).
 *
 * Silence is measured on the other actors' heartbeats, not on this process's clock: an instance is
 * silent when heartbeats of other instances kept arriving for `silenceMs` after its last one (and
 * after the call began). A coordinator that itself stalls (a long GC, an overloaded machine: the
 * heartbeats wait unread in its socket) or loses its connection hears from no one, and judges no
 * one; when it hears again after such a gap, every instance starts a fresh silence, since the
 * others' heartbeats arrive in no set order after a reconnect. A cluster of one actor, where placing
 * the session again has nowhere else to go, is never judged either: its calls keep the timeout. An
 * instance never heard from (an actor of an older build) is never judged.
 */
export class ActorLiveness {
  /** Last heartbeat per `model/instance`: when (ms, this process's clock) and its sessions. */
  private readonly heard = new Map<string, { at: number; sessions: number }>();
  /** When the latest heartbeat of any instance arrived. */
  private latest = -Infinity;
  private readonly watches = new Set<{ key: string; since: number; fail: (err: TransportError) => void }>();
  private readonly sub: Subscription;
  private readonly timer: NodeJS.Timeout;
  /** A pause in every heartbeat longer than this (two heartbeat periods, at most silenceMs) means this process heard nothing, not that all fell silent. */
  private readonly gapMs: number;

  constructor(
    transport: Transport,
    /** Silence after which a watched call is given up, ms (> 0). */
    readonly silenceMs = ACTOR_SILENCE_MS,
  ) {
    this.gapMs = Math.min(2 * HEARTBEAT_MS, silenceMs);
    this.sub = transport.subscribe(subjects.alive, (data) => {
      try {
        const m = decode(data);
        if (m.type !== 'alive') return;
        const now = performance.now();
        // heard from no one for a while, then from someone: this process was cut off or stalled (a NATS reconnect,
        // a long pause), and heartbeats of the others may still be on their way; everyone starts a fresh silence
        if (now - this.latest > this.gapMs) {
          for (const h of this.heard.values()) h.at = now;
          for (const w of this.watches) w.since = now;
        }
        this.latest = now;
        this.heard.set(`${m.model}/${m.instance}`, { at: now, sessions: m.sessions });
      } catch {
        // not a heartbeat of this build: ignored, as an unknown subject would be
      }
    });
    this.timer = setInterval(() => this.judge(), Math.max(20, Math.min(250, silenceMs / 4)));
    this.timer.unref();
  }

  private judge(): void {
    // instances gone for long (a restarted actor comes back under a new id) are forgotten
    const forget = performance.now() - Math.max(FORGET_MS, 10 * this.silenceMs);
    for (const [key, h] of this.heard) if (h.at < forget) this.heard.delete(key);
    for (const w of this.watches) {
      const h = this.heard.get(w.key);
      if (!h) continue;
      const quiet = this.latest - Math.max(h.at, w.since);
      if (quiet > this.silenceMs) w.fail(new TransportError(`actor ${w.key} has sent no heartbeat for ${Math.round(quiet)} ms while others did`, 'silent'));
    }
  }

  /**
   * Watches one call to `model`'s `instance`: `silent` rejects once the instance, heard from before,
   * has been silent for `silenceMs` while others were not (counted from the call's start at the
   * earliest). Call `stop` when the call settles.
   */
  watch(model: string, instance: string): Watch {
    let entry!: { key: string; since: number; fail: (err: TransportError) => void };
    const silent = new Promise<never>((_, reject) => {
      entry = { key: `${model}/${instance}`, since: performance.now(), fail: (err) => (this.watches.delete(entry), reject(err)) };
    });
    silent.catch(() => undefined);
    this.watches.add(entry);
    return { silent, stop: () => void this.watches.delete(entry) };
  }

  /** Instances heard from in the last `silenceMs`, by model, each with the sessions it holds: for /health. */
  live(): Record<string, Record<string, number>> {
    const now = performance.now();
    const out: Record<string, Record<string, number>> = {};
    for (const [key, h] of this.heard) {
      if (now - h.at > this.silenceMs) continue;
      const [model, instance] = key.split('/') as [string, string];
      (out[model] ??= {})[instance] = h.sessions;
    }
    return out;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    this.watches.clear();
    await this.sub.close();
  }
}

/** Publishes an actor's heartbeat every `everyMs` until stopped (ModelActor.start). */
export function beat(transport: Transport, model: string, instance: string, sessions: () => number, everyMs = HEARTBEAT_MS): () => void {
  const send = () => {
    try {
      transport.publish(subjects.alive, encode({ type: 'alive', model, instance, sessions: sessions() }));
    } catch {
      // a closed or draining connection: the actor is stopping, and its silence says so
    }
  };
  send();
  const timer = setInterval(send, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
