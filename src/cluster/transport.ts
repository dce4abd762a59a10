import { CascadeError } from '../errors.ts';

/** Message headers (W3C trace context rides here: `traceparent`, `tracestate`). */
export type Headers = Record<string, string>;

/** A request handler: a frame in, a frame out. Throwing is a bug; handlers answer errors as frames. */
export type Handler = (data: Uint8Array, headers: Headers) => Promise<Uint8Array>;

export interface Subscription {
  close(): Promise<void>;
}

/** No instance serves the subject (the actor is gone), or the request timed out. */
export class TransportError extends CascadeError {
  override readonly name = 'TransportError';
  override readonly isRetryable = true;
  constructor(
    message: string,
    readonly reason: 'no-responders' | 'timeout' | 'closed',
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
  /** Largest frame the transport carries. */
  readonly maxPayload: number;
  close(): Promise<void>;
}

/**
 * Subjects: `cascade.<model>.open` (queue group per model: placement), `cascade.<model>.<instance>`
 * (a placed session's calls), `cascade.stream.<request>` and `cascade.cancel.<request>`.
 */
export const subjects = {
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

/** The embedded transport: subjects map to handlers in this process; frames are still encoded. */
export class InProcessTransport implements Transport {
  readonly maxPayload = 1024 * 1024;
  private readonly handlers = new Map<string, Handler[]>();
  private readonly listeners = new Map<string, Set<(data: Uint8Array, headers: Headers) => void>>();
  private turn = 0;

  async request(subject: string, data: Uint8Array, options: { timeoutMs: number; headers?: Headers }): Promise<Uint8Array> {
    const list = this.handlers.get(subject);
    if (!list?.length) throw new TransportError(`no responders on ${subject}`, 'no-responders');
    const handler = list[this.turn++ % list.length]!;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TransportError(`request on ${subject} timed out after ${options.timeoutMs} ms`, 'timeout')), options.timeoutMs);
    });
    try {
      return await Promise.race([handler(data.slice(), { ...options.headers }), timeout]);
    } finally {
      clearTimeout(timer);
    }
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
