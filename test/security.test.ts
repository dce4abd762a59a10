import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { Redis } from 'ioredis';
import { startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { NatsTransport } from '../src/cluster/nats-transport.ts';
import { generateSecrets, withCredentials, type Role } from '../src/cluster/security.ts';
import { CLI } from './helpers/cli.ts';

/** Cluster-mode authentication with real servers: every unauthenticated or unauthorised attempt is refused. */
const secrets = generateSecrets();
let nats: LocalServer;
let redis: LocalServer;
const as = (role: Role, password = secrets.nats[role]) => NatsTransport.connect({ servers: withCredentials(nats.url, role, password) });

test.before(async () => {
  [nats, redis] = await Promise.all([startNats({ users: secrets.nats }), startRedis({ acl: secrets.redis })]);
});

test.after.always(async () => {
  await Promise.all([nats?.stop(), redis?.stop()]);
});

test('security - NATS refuses connections without credentials or with a wrong password', async (t) => {
  await t.throwsAsync(NatsTransport.connect({ servers: nats.url }), { message: /cannot connect to NATS/ });
  const err = await t.throwsAsync(as('actor', 'not-the-password'), { message: /cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+ as actor/ });
  t.false(err!.message.includes('not-the-password'), 'the error does not echo the password');
});

/** Whether a message `from` publishes on `subject` reaches a subscriber allowed to listen there. */
async function delivered(from: Role, subject: string, listener: Role): Promise<boolean> {
  const [pub, sub] = await Promise.all([as(from), as(listener)]);
  try {
    let got = false;
    const s = sub.subscribe(subject, () => (got = true));
    await sub.flush();
    pub.publish(subject, new Uint8Array([1]));
    await pub.flush().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    await s.close();
    return got;
  } finally {
    await Promise.all([pub.close(), sub.close()]);
  }
}

test('security - per-role subject permissions: only the coordinator streams tokens, only the gateway cancels, only actors send heartbeats', async (t) => {
  t.true(await delivered('coordinator', 'cascade.stream.r1', 'gateway'), 'control: the coordinator may publish a token stream');
  t.false(await delivered('actor', 'cascade.stream.r1', 'gateway'), 'an actor may not publish on the gateway\'s stream subjects');
  t.false(await delivered('gateway', 'cascade.stream.r1', 'gateway'), 'the gateway may not forge a token stream');
  t.true(await delivered('gateway', 'cascade.cancel.r1', 'coordinator'), 'control: the gateway may cancel');
  t.false(await delivered('actor', 'cascade.cancel.r1', 'coordinator'), 'an actor may not cancel requests');
  t.true(await delivered('actor', 'cascade.alive', 'coordinator'), 'control: an actor\'s heartbeat reaches the coordinators');
  t.true(await delivered('actor', 'cascade.alive', 'gateway'), 'and the gateways');
  t.true(await delivered('coordinator', 'cascade.alive', 'gateway'), 'as does a coordinator\'s, for the verifier it hosts (--verifier)');
  t.false(await delivered('gateway', 'cascade.alive', 'coordinator'), 'the gateway may not forge an actor\'s heartbeat');
});

test('security - only coordinators may call actors; actors answer through their replies alone', async (t) => {
  const [actor, coordinator, gateway] = await Promise.all([as('actor'), as('coordinator'), as('gateway')]);
  try {
    actor.serve('cascade.actor.m.open', async () => new Uint8Array([42]), { queue: 'm' });
    await actor.flush();
    const reply = await coordinator.request('cascade.actor.m.open', new Uint8Array([0]), { timeoutMs: 2000 });
    t.deepEqual([...reply], [42], 'control: a coordinator calls an actor and gets its answer');
    await t.throwsAsync(gateway.request('cascade.actor.m.open', new Uint8Array([0]), { timeoutMs: 1000 }), undefined, 'the gateway may not call actors');
    await t.throwsAsync(actor.request('cascade.actor.m.open', new Uint8Array([0]), { timeoutMs: 1000 }), undefined, 'an actor may not call actors');
  } finally {
    await Promise.all([actor.close(), coordinator.close(), gateway.close()]);
  }
});

test('security - Redis refuses the default user; the ACL user works', async (t) => {
  const anonymous = new Redis(redis.url, { maxRetriesPerRequest: 0, lazyConnect: true, enableReadyCheck: false, retryStrategy: () => null });
  anonymous.on('error', () => undefined);
  await anonymous.connect();
  await t.throwsAsync(anonymous.ping(), { message: /NOAUTH/ }, 'the default user is off');
  await t.throwsAsync(anonymous.call('AUTH', secrets.redis.user, 'wrong'), { message: /WRONGPASS/ });
  await t.throwsAsync(anonymous.call('AUTH', 'default', ''), { message: /WRONGPASS/ });
  anonymous.disconnect();
  const ok = new Redis(withCredentials(redis.url, secrets.redis.user, secrets.redis.password));
  t.is(await ok.ping(), 'PONG');
  await ok.quit();
});

test('security - cluster up turns authentication on, keeps secrets in a 0600 file and out of every log', async (t) => {
  const run = promisify(execFile);
  const cli = CLI;
  const cwd = new URL('..', import.meta.url).pathname;
  const dir = mkdtempSync(join(tmpdir(), 'cluster-up-'));
  const up = await run(process.execPath, [...cli, 'cluster', 'up', '--state-dir', dir], { cwd, timeout: 120_000 });
  try {
    const state = JSON.parse(readFileSync(join(dir, 'cluster.json'), 'utf8'));
    const s = JSON.parse(readFileSync(join(dir, 'secrets.json'), 'utf8'));
    t.is(statSync(join(dir, 'secrets.json')).mode & 0o777, 0o600);
    const bad = await fetch(`${state.gateway}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"prompt":"x","max_tokens":2}' });
    t.is(bad.status, 401);
    const good = await fetch(`${state.gateway}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${s.apiKey}` }, body: '{"prompt":"import os","max_tokens":4,"temperature":0}' });
    t.is(good.status, 200);
    const secretsList: string[] = [...Object.values(s.nats as Record<string, string>), s.redis.password, s.apiKey];
    const logs = readdirSync(dir).filter((f) => f.endsWith('.log')).map((f) => readFileSync(join(dir, f), 'utf8'));
    for (const text of [...logs, up.stdout, up.stderr, JSON.stringify(state)]) for (const secret of secretsList) t.false(text.includes(secret), 'a secret leaked into a log or the state file');
  } finally {
    await run(process.execPath, [...cli, 'cluster', 'down', '--state-dir', dir], { cwd, timeout: 60_000 });
  }
});
