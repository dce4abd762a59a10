import { connect, headers as natsHeaders, RequestError, TimeoutError, type MsgHdrs, type NatsConnection, type Status } from '@nats-io/transport-node';
import { CascadeError } from '../errors.ts';
import { logLine } from './log.ts';
import { answer, TransportError, type Handler, type Headers, type Subscription, type Transport } from './transport.ts';

/** Connection settings: server URLs and optional credentials (SPEC §6: cluster mode requires them). */
export interface NatsOptions {
  readonly servers: string | string[];
  readonly user?: string;
  readonly pass?: string;
  readonly token?: string;
  readonly name?: string;
  /** Where the connection's changes go, one line each (describeNatsStatus); default stderr, with a timestamp. */
  readonly log?: (line: string) => void;
}

/**
 * A line for an operator about a NATS connection's change of state (`name`: the role's connection
 * name), or undefined for the routine ones (pings, reconnect attempts, cluster updates).
 */
export function describeNatsStatus(name: string, status: Status): string | undefined {
  switch (status.type) {
    case 'disconnect':
      return `NATS (${name}): disconnected from ${status.server}; reconnecting`;
    case 'reconnect':
      return `NATS (${name}): connected to ${status.server}`;
    case 'staleConnection':
      return `NATS (${name}): the server did not answer ${NATS_MAX_PINGS_OUT} pings ${NATS_PING_INTERVAL_MS} ms apart; taking the connection for stale`;
    case 'ldm':
      return `NATS (${name}): ${status.server} is shutting down (lame duck mode); moving to another server`;
    case 'error':
      return `NATS (${name}): server error: ${status.error.message}`;
    case 'slowConsumer':
      return `NATS (${name}): a subscription is slow: ${status.pending} messages pending`;
    default:
      return undefined;
  }
}

function toHeaders(h: MsgHdrs | undefined): Headers {
  const out: Headers = {};
  if (!h) return out;
  for (const k of h.keys()) out[k] = h.get(k);
  return out;
}

function fromHeaders(h: Headers | undefined): MsgHdrs | undefined {
  if (!h || Object.keys(h).length === 0) return undefined;
  const out = natsHeaders();
  for (const [k, v] of Object.entries(h)) out.set(k, v);
  return out;
}

/**
 * How a connection notices a server that went silent: a server frozen, or cut off by a partition,
 * keeps its TCP connections open and answers nothing, and the client's defaults (a ping every 2 min,
 * 2 unanswered) would keep every role on it for about 4 minutes, every actor call timing out. A ping
 * every 2 s with 2 unanswered takes the connection for stale in 4-6 s; the client then reconnects to
 * another server of the NATS cluster (which it learned from the first: server discovery), and a
 * server that accepts the connection but sends nothing is given up after the connect timeout.
 */
export const NATS_PING_INTERVAL_MS = 2000;
export const NATS_MAX_PINGS_OUT = 2;
export const NATS_CONNECT_TIMEOUT_MS = 3000;
/** How long a role's first connection may take, its handshake timing out and tried again meanwhile (the client's own default timeout). */
export const NATS_FIRST_CONNECT_MS = 20_000;

/**
 * The NATS transport, on the `@nats-io/transport-node` v3 client: the maintained line of the NATS
 * JavaScript client (the `nats` v2 package is in maintenance), modular, and it works on Node 20.
 * Reconnects forever: NATS restarts are survived, and requests made while disconnected fail fast
 * with a retryable TransportError.
 */
export class NatsTransport implements Transport {
  unanswered = 0;

  private constructor(private readonly nc: NatsConnection) {}

  static async connect(options: NatsOptions): Promise<NatsTransport> {
    // credentials may ride in the URL (nats://user:pass@host:port)
    let { user, pass } = options;
    const servers = (Array.isArray(options.servers) ? options.servers : [options.servers]).map((s) => {
      try {
        const u = new URL(s);
        if (u.username) {
          user ??= decodeURIComponent(u.username);
          pass ??= decodeURIComponent(u.password);
          return `${u.protocol}//${u.host}`;
        }
      } catch {
        // not a URL with credentials: host:port, passed as given
      }
      return s;
    });
    try {
      const settings = { servers, user, pass, token: options.token, name: options.name, maxReconnectAttempts: -1, reconnectTimeWait: 250, pingInterval: NATS_PING_INTERVAL_MS, maxPingOut: NATS_MAX_PINGS_OUT, timeout: NATS_CONNECT_TIMEOUT_MS };
      // the first connection gets NATS_FIRST_CONNECT_MS in all: a handshake that timed out (a busy
      // server, or this process's event loop held up) is tried again; a refusal fails at once
      const deadline = Date.now() + NATS_FIRST_CONNECT_MS;
      let nc: NatsConnection;
      for (;;) {
        try {
          nc = await connect(settings);
          break;
        } catch (err) {
          if (!(err instanceof TimeoutError) || Date.now() + NATS_CONNECT_TIMEOUT_MS > deadline) throw err;
        }
      }
      const log = options.log ?? logLine;
      void (async () => {
        for await (const status of nc.status()) {
          const line = describeNatsStatus(options.name ?? 'client', status);
          if (line) log(line);
        }
      })().catch(() => undefined);
      return new NatsTransport(nc);
    } catch (cause) {
      throw new CascadeError(`cannot connect to NATS at ${servers.join(', ')}${user ? ` as ${user}` : ''}: ${(cause as Error).message}`, { cause });
    }
  }

  get maxPayload(): number {
    return this.nc.info?.max_payload ?? 1024 * 1024;
  }

  async request(subject: string, data: Uint8Array, options: { timeoutMs: number; headers?: Headers }): Promise<Uint8Array> {
    try {
      const reply = await this.nc.request(subject, data, { timeout: options.timeoutMs, headers: fromHeaders(options.headers) });
      return reply.data;
    } catch (err) {
      if (err instanceof RequestError && err.isNoResponders()) throw new TransportError(`no responders on ${subject}`, 'no-responders', { cause: err });
      if (err instanceof TimeoutError || (err instanceof RequestError && err.cause instanceof TimeoutError)) {
        throw new TransportError(`request on ${subject} timed out after ${options.timeoutMs} ms`, 'timeout', { cause: err });
      }
      throw new TransportError(`request on ${subject} failed: ${(err as Error).message}`, 'closed', { cause: err });
    }
  }

  serve(subject: string, handler: Handler, options: { queue?: string } = {}): Subscription {
    const sub = this.nc.subscribe(subject, {
      queue: options.queue,
      callback: (err, msg) => {
        if (err) return;
        const respond = (reply: Uint8Array) => {
          if (!msg.respond(reply)) throw new Error('the request came without a reply subject');
        };
        void answer(handler, msg.data, toHeaders(msg.headers), this.maxPayload, respond).then((why) => {
          if (why === undefined) return;
          this.unanswered++;
          process.stderr.write(`a request on ${subject} got no answer: ${why}\n`);
        });
      },
    });
    return { close: async () => sub.unsubscribe() };
  }

  publish(subject: string, data: Uint8Array, headers?: Headers): void {
    this.nc.publish(subject, data, { headers: fromHeaders(headers) });
  }

  subscribe(subject: string, onMessage: (data: Uint8Array, headers: Headers) => void): Subscription {
    const sub = this.nc.subscribe(subject, { callback: (err, msg) => (err ? undefined : onMessage(msg.data, toHeaders(msg.headers))) });
    return { close: async () => sub.unsubscribe() };
  }

  /** Waits until the server has seen every subscription made so far. */
  async flush(): Promise<void> {
    await this.nc.flush();
  }

  async close(): Promise<void> {
    await this.nc.drain().catch(() => this.nc.close());
  }
}
