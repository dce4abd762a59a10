import { randomBytes } from 'node:crypto';

/**
 * Cluster-mode credentials (SPEC §6 Security): one NATS user per role with the subject permissions
 * that role needs and no more, an ACL user for Redis (the default user switched off), and an API key
 * for the gateway. `cascade cluster up` generates them, writes them to a 0600 file, and hands each
 * role only its own credentials through the environment (never on a command line, never in a log).
 */
export type Role = 'gateway' | 'coordinator' | 'actor';
export const ROLES: readonly Role[] = ['gateway', 'coordinator', 'actor'];

export interface Secrets {
  readonly nats: Record<Role, string>;
  readonly redis: { readonly user: string; readonly password: string };
  readonly apiKey: string;
}

const secret = () => randomBytes(24).toString('base64url');

export function generateSecrets(apiKey?: string): Secrets {
  return {
    nats: { gateway: secret(), coordinator: secret(), actor: secret() },
    redis: { user: 'cascade', password: secret() },
    apiKey: apiKey ?? `sk-cascade-${secret()}`,
  };
}

/**
 * What each role may publish and subscribe to. Replies to requests travel on the requester's
 * `_INBOX.>`: the requester subscribes there, and the responder answers through `allow_responses`,
 * so an actor publishes only its heartbeat (`cascade.alive`, which coordinators and gateways hear).
 */
export const PERMISSIONS: Record<Role, { publish: string[]; subscribe: string[]; allowResponses: boolean }> = {
  // follows token streams, sends cancellations
  gateway: { publish: ['cascade.cancel.>'], subscribe: ['cascade.stream.>', '_INBOX.>', 'cascade.alive'], allowResponses: false },
  // calls actors, publishes token streams (and its --verifier's heartbeat), listens for cancellations and actors' heartbeats
  coordinator: { publish: ['cascade.actor.>', 'cascade.stream.>', 'cascade.alive'], subscribe: ['cascade.cancel.>', '_INBOX.>', 'cascade.alive'], allowResponses: false },
  // serves its model's subjects, answers, and sends its heartbeat
  actor: { publish: ['cascade.alive'], subscribe: ['cascade.actor.>'], allowResponses: true },
};

/** The environment variable that holds `role`'s NATS password in deployments (compose, Helm). */
export const natsPasswordVar = (role: Role) => `CASCADE_NATS_${role.toUpperCase()}_PASSWORD`;

/** The users of a NATS configuration, one per role with its permissions, passwords as `password(role)` gives them. */
function natsUsers<P>(password: (role: Role) => P) {
  return ROLES.map((role) => {
    const p = PERMISSIONS[role];
    return {
      user: role,
      password: password(role),
      permissions: {
        publish: p.publish.length ? { allow: p.publish } : { deny: ['>'] },
        subscribe: { allow: p.subscribe },
        ...(p.allowResponses ? { allow_responses: true } : {}),
      },
    };
  });
}

/** A token written into a NATS configuration as it is (a `$VARIABLE` reference). */
class Bare {
  constructor(readonly text: string) {}
}

/** NATS configuration syntax for a value: bare keys, JSON strings, `[a, b]` lists, `{ k: v }` maps. */
function natsValue(v: unknown): string {
  if (v instanceof Bare) return v.text;
  if (Array.isArray(v)) return `[${v.map(natsValue).join(', ')}]`;
  if (v !== null && typeof v === 'object') return `{ ${Object.entries(v).map(([k, x]) => `${k}: ${natsValue(x)}`).join(', ')} }`;
  return JSON.stringify(v);
}

/**
 * A nats-server configuration with one user per role, listening on `listen` (host:port). Passwords
 * are written in, or, with `passwords` 'env', read by nats-server from the variables
 * `natsPasswordVar(role)` (how deploy/compose.yaml runs it).
 */
export function natsConfig(listen: string, passwords: Record<Role, string> | 'env'): string {
  const users = natsUsers((role) => (passwords === 'env' ? new Bare(`$${natsPasswordVar(role)}`) : passwords[role]));
  return `${natsServerConfig(listen)}authorization {\n  users: [\n${users.map((u) => `    ${natsValue(u)}`).join('\n')}\n  ]\n}\n`;
}

/**
 * How often a nats-server pings its clients and routes, and how many pings may go unanswered before
 * it drops the connection (nats-server's `ping_interval`, `ping_max`; its defaults are 2 min and 2).
 * A server keeps a silent peer's subscriptions until it drops it: an actor cut off by a partition,
 * or a whole server of a NATS cluster, would keep its share of a queue group's requests (each one
 * then waiting for its timeout) for about 4-6 minutes at the defaults; at these, for 4-6 s. Except a
 * server's route on nats-server before 2.9.16, which is never pinged while messages flow to it
 * (nats-io/nats-server#4014): coordinators place sessions on the actors they hear (RemoteLevel.pick).
 */
export const NATS_SERVER_PINGS = { ping_interval: '2s', ping_max: 2 } as const;

/** A nats-server configuration's first lines: `listen` and NATS_SERVER_PINGS. */
export function natsServerConfig(listen: string): string {
  return `listen: "${listen}"\nping_interval: "${NATS_SERVER_PINGS.ping_interval}"\nping_max: ${NATS_SERVER_PINGS.ping_max}\n`;
}

/** The same users as a NATS configuration object (the Helm chart's `nats.config.merge.authorization`), passwords as `<< $VAR >>`. */
export function natsAuthorizationForHelm(): { users: Record<string, unknown>[] } {
  return { users: natsUsers((role) => `<< $${natsPasswordVar(role)} >>`) };
}

/** A redis-server configuration: loopback, no persistence unless asked, default user off, one ACL user. */
export function redisConfig(port: number, user: string, password: string, persistenceDir?: string): string {
  const persistence = persistenceDir ? `dir ${persistenceDir}\nappendonly yes\nappendfsync everysec\n` : `save ""\nappendonly no\n`;
  return `port ${port}\nbind 127.0.0.1\n${persistence}user default off\nuser ${user} on >${password} ~* &* +@all\n`;
}

/** `nats://user:pass@host:port` from a plain URL. */
export function withCredentials(url: string, user: string, password: string): string {
  const u = new URL(url);
  u.username = encodeURIComponent(user);
  u.password = encodeURIComponent(password);
  return u.toString().replace(/\/$/, '');
}

/** The URL with any credentials removed (for logs and state files). */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (!u.username && !u.password) return url;
    u.username = '';
    u.password = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return url.replace(/\/\/[^@/]*@/, '//');
  }
}
