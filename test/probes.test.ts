import test from 'ava';
import { freePort, startNats, startRedis, type LocalServer } from '../src/cluster/local-servers.ts';
import { generateSecrets } from '../src/cluster/security.ts';
import { MODELS_DIR } from './helpers/family.ts';
import { spawnRole, stopCluster, type RoleProcess } from './helpers/cluster.ts';

/**
 * The probe endpoints Kubernetes uses (helm/cascade): actors and coordinators serve /live, /health
 * and /metrics on --health-port, and take their NATS/Redis credentials from separate environment
 * variables, as the chart hands them over from a Secret. Real servers with authentication on.
 */
const secrets = generateSecrets();
let nats: LocalServer;
let redis: LocalServer;
const roles: RoleProcess[] = [];

test.before(async () => {
  [nats, redis] = await Promise.all([startNats({ users: secrets.nats }), startRedis({ acl: secrets.redis })]);
});

test.after.always(async () => {
  await stopCluster({ roles, servers: [nats, redis] });
});

const get = async (url: string) => {
  const res = await fetch(url);
  return { status: res.status, text: await res.text() };
};

test.serial('probes - an actor and a coordinator with credentials from the environment answer /live, /health and /metrics; /health turns 503 when NATS goes away', async (t) => {
  const [actorPort, coordinatorPort] = [await freePort(), await freePort()];
  const natsEnv = (role: 'actor' | 'coordinator') => ({ CASCADE_NATS_URL: nats.url, CASCADE_NATS_USER: role, CASCADE_NATS_PASSWORD: secrets.nats[role] });
  roles.push(await spawnRole(['actor', 'draft', '--model', 'draft-l1', '--models', MODELS_DIR], { ...natsEnv('actor'), CASCADE_HEALTH_PORT: String(actorPort) }));
  roles.push(
    await spawnRole(['coordinator', '--models', MODELS_DIR, '--health-port', String(coordinatorPort)], {
      ...natsEnv('coordinator'),
      CASCADE_REDIS_URL: redis.url,
      CASCADE_REDIS_USER: secrets.redis.user,
      CASCADE_REDIS_PASSWORD: secrets.redis.password,
    }),
  );
  const actor = `http://127.0.0.1:${actorPort}`;
  const coordinator = `http://127.0.0.1:${coordinatorPort}`;
  for (const base of [actor, coordinator]) {
    t.is((await get(`${base}/live`)).status, 200);
    const health = await get(`${base}/health`);
    t.is(health.status, 200, health.text);
    const metrics = await get(`${base}/metrics`);
    t.is(metrics.status, 200);
    t.regex(metrics.text, /cascade_process_resident_memory_bytes\{role="(draft-actor|coordinator)"\}/);
  }
  t.like(JSON.parse((await get(`${actor}/health`)).text), { status: 'ok', model: 'draft-l1', sessions: 0 });
  t.like(JSON.parse((await get(`${coordinator}/health`)).text), { status: 'ok', running: true });
  t.regex((await get(`${coordinator}/metrics`)).text, /# TYPE cascade_actor_round_trip_seconds histogram/, 'the coordinator exports its actor calls\' round trips');
  t.regex((await get(`${coordinator}/metrics`)).text, /# TYPE cascade_log_append_seconds histogram/, 'and its appends to the token log');
  for (const role of roles) t.false(role.output().includes(secrets.nats.actor) || role.output().includes(secrets.redis.password), 'no password in a log');

  await nats.stop();
  for (const base of [actor, coordinator]) {
    let health = await get(`${base}/health`);
    for (let i = 0; i < 50 && health.status === 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      health = await get(`${base}/health`);
    }
    t.is(health.status, 503, `${base}: not ready without NATS`);
    t.regex(JSON.parse(health.text).message, /^NATS/);
    t.is((await get(`${base}/live`)).status, 200, 'still alive: a restart would not bring NATS back');
  }
});

test('probes - a malformed CASCADE_HEALTH_PORT is refused with a clear error', async (t) => {
  const err = await t.throwsAsync(spawnRole(['coordinator', '--models', MODELS_DIR], { CASCADE_HEALTH_PORT: 'eighty', CASCADE_NATS_URL: 'nats://127.0.0.1:1', CASCADE_REDIS_URL: 'redis://127.0.0.1:1' }, 20_000));
  t.regex(err!.message, /CASCADE_HEALTH_PORT/);
});
