import { CascadeError } from '../errors.ts';

/** Message headers (W3C trace context rides here: `traceparent`, `tracestate`). */
export type Headers = Record<string, string>;

/** A request handler: a frame in, a frame out. Throwing is a bug; handlers answer errors as frames. */
export type Handler = (data: Uint8Array, headers: Headers) => Promise<Uint8Array>;

export interface Subscription {
  close(): Promise<void>;
}

/**
 * No instance serves the subject (the actor is gone), the request timed out, the frame or connection
 * failed (`closed`), or the instance called stopped sending heartbeats mid-call (`silent`, ActorLiveness).
 */
export class TransportError extends CascadeError {
  override readonly name = 'TransportError';
  override readonly isRetryable = true;
  constructor(
    message: string,
    readonly reason: 'no-responders' | 'timeout' | 'closed' | 'silent',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * How actors, coordinators and gateways talk (SPEC §6): request/reply on subjects, with queue groups
 * for placement, plus fire-and-forget publish for token streams and cancellation. Two
 * implementations: InProcessTransport (one process, no server) and NatsTransport.
 */
export interface Transport {
  request(subject: string, data: Uint8Array, options: { timeoutMs: number; headers?: Headers }): Promise<Uint8Array>;
  /** Serves a subject; with `queue`, one member of the group answers each request. */
  serve(subject: string, handler: Handler, options?: { queue?: string }): Subscription;
  publish(subject: string, data: Uint8Array, headers?: Headers): void;
  subscribe(subject: string, onMessage: (data: Uint8Array, headers: Headers) => void): Subscription;
  /** Largest frame the transport carries, in bytes; a larger request is refused, a larger reply is never delivered. */
  readonly maxPayload: number;
  /** Whether a request on `subject` is answered in this process (LocalServingTransport): it cannot be lost on the network. */
  servesLocally?(subject: string): boolean;
  /**
   * Requests served here that got no answer: the handler threw (a bug), its reply was over
   * `maxPayload`, or the reply could not be sent. Each is logged; the requester sees a timeout.
   */
  readonly unanswered: number;
  close(): Promise<void>;
}

/**
 * Serves one request: runs `handler` and passes its reply to `respond`. Resolves with why no answer
 * went out, or undefined when one did; it never rejects, so a failure here cannot become an
 * unhandled rejection (which ends a Node 20 process).
 */
export async function answer(handler: Handler, data: Uint8Array, headers: Headers, maxPayload: number, respond: (reply: Uint8Array) => void): Promise<string | undefined> {
  let reply: Uint8Array;
  try {
    reply = await handler(data, headers);
  } catch (err) {
    return `the handler failed without an answer: ${(err as Error)?.stack ?? String(err)}`;
  }
  if (reply.length > maxPayload) return `its reply of ${reply.length} bytes is over the transport's ${maxPayload}-byte payload limit`;
  try {
    respond(reply);
    return undefined;
  } catch (err) {
    return `its reply could not be sent: ${(err as Error)?.message ?? String(err)}`;
  }
}

/**
 * Subjects: `cascade.actor.<model>.open` (queue group per model: placement when no instance is
 * heard), `cascade.actor.<model>.<instance>` (an instance's placements and a placed session's calls), `cascade.stream.<request>`, `cascade.cancel.<request>` and
 * `cascade.alive` (actors' heartbeats).
 */
export const subjects = {
  alive: 'cascade.alive',
  open: (model: string) => `cascade.actor.${model}.open`,
  instance: (model: string, instance: string) => `cascade.actor.${model}.${instance}`,
  stream: (request: string) => `cascade.stream.${request}`,
  cancel: (request: string) => `cascade.cancel.${request}`,
};

/** Subject tokens may not contain '.', '*', '>' or whitespace. */
export function subjectToken(s: string, what: string): string {
  if (!/^[A-Za-z0-9_-]+$/.test(s)) throw new CascadeError(`${what} "${s}" may only use letters, digits, '-' and '_' (it becomes a NATS subject token)`);
  return s;
}

/**
 * The embedded transport: subjects map to handlers in this process; frames are still encoded, and
 * held to `maxPayload` as NATS holds them (1 MiB, NATS's default, unless given).
 */
export class InProcessTransport implements Transport {
  readonly maxPayload: number;
  unanswered = 0;
  private readonly handlers = new Map<string, Handler[]>();
  private readonly listeners = new Map<string, Set<(data: Uint8Array, headers: Headers) => void>>();
  private turn = 0;

  constructor(options: { maxPayload?: number } = {}) {
    this.maxPayload = options.maxPayload ?? 1024 * 1024;
  }

  async request(subject: string, data: Uint8Array, options: { timeoutMs: number; headers?: Headers }): Promise<Uint8Array> {
    if (data.length > this.maxPayload) throw new TransportError(`request on ${subject} of ${data.length} bytes is over the ${this.maxPayload}-byte payload limit`, 'closed');
    const list = this.handlers.get(subject);
    if (!list?.length) throw new TransportError(`no responders on ${subject}`, 'no-responders');
    const handler = list[this.turn++ % list.length]!;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TransportError(`request on ${subject} timed out after ${options.timeoutMs} ms`, 'timeout')), options.timeoutMs);
    });
    // as over NATS, a request that gets no answer (logged and counted) times out
    const replied = new Promise<Uint8Array>((resolve) => {
      void answer(handler, data.slice(), { ...options.headers }, this.maxPayload, resolve).then((why) => why && this.unanswerable(subject, why));
    });
    try {
      return await Promise.race([replied, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whether a handler in this process serves `subject`. */
  serves(subject: string): boolean {
    return Boolean(this.handlers.get(subject)?.length);
  }

  private unanswerable(subject: string, why: string): void {
    this.unanswered++;
    process.stderr.write(`a request on ${subject} got no answer: ${why}\n`);
  }

  serve(subject: string, handler: Handler): Subscription {
    const list = this.handlers.get(subject) ?? [];
    list.push(handler);
    this.handlers.set(subject, list);
    return {
      close: async () => {
        const i = list.indexOf(handler);
        if (i >= 0) list.splice(i, 1);
      },
    };
  }

  publish(subject: string, data: Uint8Array, headers: Headers = {}): void {
    for (const l of this.listeners.get(subject) ?? []) queueMicrotask(() => l(data.slice(), headers));
  }

  subscribe(subject: string, onMessage: (data: Uint8Array, headers: Headers) => void): Subscription {
    const set = this.listeners.get(subject) ?? new Set();
    set.add(onMessage);
    this.listeners.set(subject, set);
    return {
      close: async () => {
        set.delete(onMessage);
      },
    };
  }

  async close(): Promise<void> {
    this.handlers.clear();
    this.listeners.clear();
  }
}

/**
 * NATS (or any transport) for everything but the subjects served in this process, which are answered
 * in-process and not offered to the network: how `cascade coordinator --verifier` hosts the target's
 * verify actor beside itself. The coordinator's calls to it are then function calls (frames still
 * encoded, held to the same payload limit) and only the drafters' traffic crosses the network; no
 * other process can reach that actor, so it needs no NATS permission to serve. Its heartbeat goes
 * out on NATS (publish), under the coordinator's credentials, so that gateways see the verifier.
 */
export class LocalServingTransport implements Transport {
  private readonly local: InProcessTransport;

  constructor(private readonly remote: Transport) {
    this.local = new InProcessTransport({ maxPayload: remote.maxPayload });
  }

  get maxPayload(): number {
    return this.remote.maxPayload;
  }

  get unanswered(): number {
    return this.local.unanswered + this.remote.unanswered;
  }

  request(subject: string, data: Uint8Array, options: { timeoutMs: number; headers?: Headers }): Promise<Uint8Array> {
    return (this.local.serves(subject) ? this.local : this.remote).request(subject, data, options);
  }

  servesLocally(subject: string): boolean {
    return this.local.serves(subject);
  }

  /** Serves `subject` in this process only (a queue group is moot: this process's handlers take turns). */
  serve(subject: string, handler: Handler): Subscription {
    return this.local.serve(subject, handler);
  }

  publish(subject: string, data: Uint8Array, headers?: Headers): void {
    this.remote.publish(subject, data, headers);
  }

  subscribe(subject: string, onMessage: (data: Uint8Array, headers: Headers) => void): Subscription {
    return this.remote.subscribe(subject, onMessage);
  }

  /** Closes the in-process side; the remote transport belongs to whoever made it. */
  async close(): Promise<void> {
    await this.local.close();
  }
}
