// A verify actor SIGKILLed (dead) or SIGSTOPped (frozen, as behind a partition) mid-request, one of
// two: how long the request stalls, with the coordinator's
// --actor-silence-ms 0 (the call timeout alone, as before heartbeats) and 3000 (the default). Real
// processes: two `cascade actor verify`, one `cascade coordinator`, the gateway in this process,
// nats-server and redis-server. Each repeat starts them afresh, streams a greedy 160-token `mode: ar`
// request uninterrupted, then again, sending the signal to the verify actor that holds its session at
// the 10th chunk. Prints a JSON line per repeat, and writes them all to OUT (default bench/results/actor-liveness/results.json).
//
//   node --import tsx tools/bench/verifier-kill.ts [OUT]      (REPEATS=3 by default)
import { writeFileSync } from 'node:fs';
import OpenAI from 'openai';
import { startNats, startRedis } from '../../src/cluster/local-servers.ts';
import { spawnRole } from '../../src/cluster/processes.ts';
import { startGatewayRole } from '../../src/cluster/roles.ts';

const models = 'models';
const repeats = Number(process.env.REPEATS ?? 3);
const [nats, redis] = await Promise.all([startNats(), startRedis()]);
const rows: Record<string, unknown>[] = [];
const prompt = 'def parse_args(argv):\n';
for (const signal of ['SIGKILL', 'SIGSTOP'] as const) for (const silence of [0, 3000]) {
  for (let r = 0; r < repeats; r++) {
    const actors = await Promise.all(['v0', 'v1'].map((id) => spawnRole(['actor', 'verify', '--models', models, '--nats', nats.url, '--instance', id, '--idle-ms', '20000', '--health-port', '0'])));
    const coordinator = await spawnRole(['coordinator', '--models', models, '--nats', nats.url, '--redis', redis.url, '--actor-silence-ms', String(silence)]);
    const gateway = await startGatewayRole({ models, nats: nats.url, redis: [redis.url], port: 0 });
    const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const ask = async (kill: boolean) => {
      const t0 = performance.now();
      const stream = await client.completions.create({ model: 'target', prompt, max_tokens: 160, temperature: 0, stream: true, cascade: { mode: 'ar' } } as never);
      let text = '', chunks = 0, last = t0, gap = 0, killed = '';
      for await (const c of stream as unknown as AsyncIterable<OpenAI.Completions.Completion>) {
        const now = performance.now();
        gap = Math.max(gap, now - last);
        last = now;
        text += c.choices[0]?.text ?? '';
        if (kill && ++chunks === 10) {
          // the instance holding the session: its /health counts sessions
          for (const [i, a] of actors.entries()) {
            const url = /health on (http:\/\/[^\s,)]+)/.exec(a.output())?.[1];
            const h = (await (await fetch(`${url}/health`)).json()) as { sessions: number };
            if (h.sessions > 0) { a.child.kill(signal); killed = `v${i}`; break; }
          }
        }
      }
      return { text, ms: performance.now() - t0, gap, killed };
    };
    const plain = await ask(false);
    const hit = await ask(true);
    for (const a of actors) a.child.kill('SIGCONT');
    rows.push({ signal, actor_silence_ms: silence, repeat: r, uninterrupted_ms: Math.round(plain.ms), killed: hit.killed, with_kill_ms: Math.round(hit.ms), longest_gap_ms: Math.round(hit.gap), same_text: hit.text === plain.text });
    console.log(JSON.stringify(rows.at(-1)));
    await gateway.stop();
    await Promise.all([coordinator, ...actors].map((a) => a.stop().catch(() => undefined)));
  }
}
await Promise.all([nats.stop(), redis.stop()]);
writeFileSync(process.argv[2] ?? 'bench/results/actor-liveness/results.json', `${JSON.stringify({ command: 'node --import tsx tools/bench/verifier-kill.ts', repeats, rows }, null, 1)}\n`);
