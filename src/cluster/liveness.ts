import { decode, encode, type Heartbeat } from './messages.ts';
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

/** What was heard of one instance last: when (`at`: this process's clock, ms; `heard`: ActorLiveness's heard-time), and its heartbeat. */
interface Heard {
  at: number;
  heard: number;
  beat: Heartbeat;
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
 * Silence is measured in heard-time, a clock that advances only as heartbeats arrive: by the time
 * between two heartbeats (of any instances), or not at all when that is over `gapMs` (two heartbeat
 * periods, at most `silenceMs`). An instance is silent when heard-time has run `silenceMs` past its
 * last heartbeat (and past the call's start): other instances kept beating meanwhile. A coordinator
 * that itself stalls (a long GC, an overloaded machine: the heartbeats wait unread in its socket) or
 * loses its connection hears from no one, and its heard-time stands still; the gap then counts for
 * nothing, while silence built up before it is kept. A cluster of one actor is never judged either:
 * with no other heartbeats its heard-time stops with it, and its calls keep the timeout (where
 * placing the session again has nowhere else to go). An instance never heard from (an actor of an
 * older build) is never judged. With `silenceMs` 0 no call is judged at all (the call timeout
 * alone); the instances heard are still listed and placeable.
 */
export class ActorLiveness {
  private readonly heard = new Map<string, Heard>();
  /** Heard-time, ms. */
  private clock = 0;
  /** When the latest heartbeat arrived, this process's clock. */
  private latest = -Infinity;
  private readonly watches = new Set<{ key: string; since: number; fail: (err: TransportError) => void }>();
  private readonly sub: Subscription;
  private readonly timer: NodeJS.Timeout;
  /** A pause in every heartbeat longer than this means this process heard nothing, not that time passed for the actors. */
  private readonly gapMs: number;
  /** When this process began to listen, its clock (the watches' `since` is heard-time). */
  private readonly listeningSince = performance.now();

  constructor(
    transport: Transport,
    /** Silence after which a watched call is given up, ms; 0: never (heard-time stands still). */
    readonly silenceMs = ACTOR_SILENCE_MS,
    /** The actors' heartbeat period, ms (ActorOptions.heartbeatMs). */
    private readonly heartbeatMs = HEARTBEAT_MS,
  ) {
    this.gapMs = Math.min(2 * heartbeatMs, silenceMs);
    this.sub = transport.subscribe(subjects.alive, (data) => {
      try {
        const m = decode(data);
        if (m.type === 'alive') this.hear(m);
      } catch {
        // not a heartbeat of this build: ignored, as an unknown subject would be
      }
    });
    this.timer = setInterval(() => this.judge(), silenceMs > 0 ? Math.max(20, Math.min(250, silenceMs / 4)) : 1000);
    this.timer.unref();
  }

  private hear(beat: Heartbeat): void {
    const now = performance.now();
    if (now - this.latest <= this.gapMs) this.clock += now - this.latest;
    this.latest = now;
    this.heard.set(`${beat.model}/${beat.instance}`, { at: now, heard: this.clock, beat });
  }

  private judge(): void {
    // instances gone for long (a restarted actor comes back under a new id) are forgotten
    const forget = performance.now() - Math.max(FORGET_MS, 10 * this.silenceMs);
    for (const [key, h] of this.heard) if (h.at < forget) this.heard.delete(key);
    for (const w of this.watches) {
      const h = this.heard.get(w.key);
      if (!h) continue;
      const quiet = this.clock - Math.max(h.heard, w.since);
      if (quiet > this.silenceMs) w.fail(new TransportError(`actor ${w.key} has sent no heartbeat for ${Math.round(quiet)} ms while others did`, 'silent'));
    }
  }

  /**
   * Watches one call to `model`'s `instance`: `silent` rejects once the instance, heard from before,
   * has been silent for `silenceMs` of heard-time (counted from the call's start at the earliest).
   * Call `stop` when the call settles.
   */
  watch(model: string, instance: string): Watch {
    let entry!: { key: string; since: number; fail: (err: TransportError) => void };
    const silent = new Promise<never>((_, reject) => {
      entry = { key: `${model}/${instance}`, since: this.clock, fail: (err) => (this.watches.delete(entry), reject(err)) };
    });
    silent.catch(() => undefined);
    this.watches.add(entry);
    return { silent, stop: () => void this.watches.delete(entry) };
  }

  /** Instances heard from in the last `silenceMs` (ACTOR_SILENCE_MS when 0; this process's clock), by model, each with the sessions it holds: for /health. */
  live(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const { beat } of this.recent(this.silenceMs > 0 ? this.silenceMs : ACTOR_SILENCE_MS)) (out[beat.model] ??= {})[beat.instance] = beat.sessions;
    return out;
  }

  /**
   * Instances of `model` a session may be placed on directly: heard within two heartbeat periods,
   * neither serving only inside another process (`local`) nor stopping (`leaving`). None before this
   * process has listened for two heartbeat periods: until then it may have heard some instances and
   * not others yet, and would place every session on the first it heard.
   */
  placeable(model: string): string[] {
    if (performance.now() - this.listeningSince < 2 * this.heartbeatMs) return [];
    return this.recent(2 * this.heartbeatMs).flatMap(({ beat }) => (beat.model === model && !beat.local && !beat.leaving ? [beat.instance] : []));
  }

  private recent(withinMs: number): Heard[] {
    const since = performance.now() - withinMs;
    return [...this.heard.values()].filter((h) => h.at >= since);
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    this.watches.clear();
    await this.sub.close();
  }
}

/**
 * Publishes an actor's heartbeat every `everyMs` until stopped (ModelActor.start). `beat()` gives
 * its fields at each tick (sessions held, and whether it is leaving).
 */
export function beat(transport: Transport, beat: () => Heartbeat, everyMs = HEARTBEAT_MS): { now(): void; stop(): void } {
  const send = () => {
    try {
      transport.publish(subjects.alive, encode(beat()));
    } catch {
      // a closed or draining connection: the actor is stopping, and its silence says so
    }
  };
  send();
  const timer = setInterval(send, everyMs);
  timer.unref();
  return { now: send, stop: () => clearInterval(timer) };
}
