import test from 'ava';
import { startRedis } from '../src/cluster/local-servers.ts';
import { logRedisEvents, openRedis, parseRedis, throttledErrorLog } from '../src/cluster/redis-connection.ts';
import { describeNatsStatus } from '../src/cluster/nats-transport.ts';

/**
 * What an operator reads when a role loses Redis or NATS: one line when the connection is lost and
 * one when it is back, not one per retry (a real redis-server, frozen with SIGSTOP past the socket
 * timeout, then resumed).
 */
test('connection log - a frozen redis-server: one line for the loss (the socket timeout), one when connected again; the command lands', async (t) => {
  const server = await startRedis();
  const client = openRedis(parseRedis(server.url), { name: 'probe' });
  const lines: string[] = [];
  logRedisEvents(client, 'probe', (l) => lines.push(l));
  t.teardown(async () => {
    server.process.kill('SIGCONT');
    client.disconnect();
    await server.stop();
  });
  await client.ping();
  server.process.kill('SIGSTOP');
  const set = client.set('k', 'v');
  await new Promise((r) => setTimeout(r, 7000));
  server.process.kill('SIGCONT');
  t.is(await set, 'OK', 'the command owed is sent again once connected');
  for (let i = 0; i < 50 && lines.length < 2; i++) await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(lines, ["Redis (probe): Socket timeout. Expecting data, but didn't receive any in 5000ms; reconnecting", 'Redis (probe): connected again']);
  t.is(await client.get('k'), 'v');
});

test('connection log - repeated errors are logged once a minute per message; NATS status lines name the role and skip the routine ones', (t) => {
  const lines: string[] = [];
  const log = throttledErrorLog('BullMQ worker (coordinator)', (l) => lines.push(l));
  for (let i = 0; i < 5; i++) log(new Error('connect ECONNREFUSED 127.0.0.1:6379'));
  log(new Error('READONLY'));
  t.deepEqual(lines, ['BullMQ worker (coordinator): connect ECONNREFUSED 127.0.0.1:6379', 'BullMQ worker (coordinator): READONLY']);
  t.is(describeNatsStatus('gateway', { type: 'reconnect', server: '10.0.0.2:4222' }), 'NATS (gateway): connected to 10.0.0.2:4222');
  t.regex(describeNatsStatus('actor-target', { type: 'staleConnection' })!, /^NATS \(actor-target\): the server did not answer 2 pings 2000 ms apart/);
  t.is(describeNatsStatus('gateway', { type: 'ping', pendingPings: 1 }), undefined);
  t.is(describeNatsStatus('gateway', { type: 'reconnecting' }), undefined);
});
