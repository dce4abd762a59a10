import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { decode, encode } from '../cluster/messages.ts';
import { QUEUE_NAME } from '../cluster/coordinator.ts';
import { startNats, startRedis, startRedisCluster, type LocalRedisCluster, type LocalServer } from '../cluster/local-servers.ts';
import { parseRedis, queuePrefix } from '../cluster/redis-connection.ts';
import { NatsTransport } from '../cluster/nats-transport.ts';
import { spawnRole, type RoleProcess } from '../cluster/processes.ts';
import { startGatewayRole } from '../cluster/roles.ts';
import { subjects } from '../cluster/transport.ts';
import { generateAutoregressive } from '../engine/generate.ts';
import { CascadeError } from '../errors.ts';
import { GREEDY } from '../kernels/sampling.ts';
import { loadFamily, memberDir } from '../models/family.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { formatTable, median, writeJson } from './report.ts';
import { loadWorkload } from './workloads.ts';

/** Actors free a session untouched this long (a dead coordinator's, say). */
const IDLE_MS = 5000;

/** The fault scenarios of `cascade chaos` (issue 6; modelled on NVIDIA Dynamo's fault tests). */
export const SCENARIOS = ['kill-drafter', 'kill-verifier', 'kill-coordinator', 'partition-drafter', 'restart-nats', 'restart-redis'] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface ChaosOptions {
  readonly models: string;
  readonly scenarios: readonly Scenario[];
  /** Concurrent streaming requests per phase. */
  readonly concurrency: number;
  readonly maxTokens: number;
  readonly out: string;
  readonly log?: (line: string) => void;
  /**
   * The Redis deployment: one redis-server (append-only file on; default) or a Redis Cluster of
   * three masters with a replica each, where restart-redis kills the master holding the request
   * queue (SIGKILL) and its replica takes over (a failover), then the dead node rejoins as a replica.
   */
  readonly redis?: 'server' | 'cluster';
}

export interface ScenarioResult {
  readonly scenario: Scenario;
  readonly requests: number;
  readonly completed: number;
  /** Requests of the fault wave whose greedy text equals target-only decoding's (the target alone). */
  readonly identical: number;
  /** Requests that failed with an explicit error and completed when the client retried them. */
  readonly retried: number;
  readonly failed: number;
  /** Requests of the recovery wave whose greedy text equals target-only decoding's. */
  readonly recoveryCompleted: number;
  /** Sessions still held once the idle timeout has passed (leaks). */
  readonly leakedSessions: number;
  /** Seconds after the recovery phase until every actor held no session. */
  readonly drainSeconds: number;
  readonly medianSeconds: number;
  readonly pass: boolean;
}

interface Outcome {
  readonly text: string;
  readonly seconds: number;
  readonly retried: boolean;
  readonly error?: string;
}

/**
 * A cluster on this machine whose parts can be killed, paused and restarted: nats-server, redis-server
 * (append-only file on, so queued jobs survive a restart), two verifier actors, one actor per drafter,
 * two coordinators, and the gateway in this process.
 */
export class ChaosCluster {
  nats!: LocalServer;
  redis!: LocalServer | LocalRedisCluster;
  readonly redisDir = mkdtempSync(join(tmpdir(), 'cascade-chaos-redis-'));
  readonly roles = new Map<string, { args: string[]; proc: RoleProcess }>();
  gateway!: Awaited<ReturnType<typeof startGatewayRole>>;
  readonly family;

  constructor(
    readonly models: string,
    readonly redisKind: 'server' | 'cluster' = 'server',
  ) {
    this.family = loadFamily(models);
  }

  async start(): Promise<void> {
    [this.nats, this.redis] = await Promise.all([startNats(), this.redisKind === 'cluster' ? startRedisCluster({ masters: 3, replicas: 1 }) : startRedis({ persistenceDir: this.redisDir })]);
    const common = ['--models', this.family.dir, '--nats', this.nats.url];
    const specs: [string, string[]][] = [
      ['verify-0', ['actor', 'verify', ...common, '--instance', 'v0', '--idle-ms', String(IDLE_MS)]],
      ['verify-1', ['actor', 'verify', ...common, '--instance', 'v1', '--idle-ms', String(IDLE_MS)]],
      ...this.family.drafters.map((d): [string, string[]] => [`draft-${d}`, ['actor', 'draft', '--model', d, ...common, '--instance', `${d}-0`, '--idle-ms', String(IDLE_MS)]]),
      ['coordinator-0', ['coordinator', ...common, '--redis', this.redis.url, '--lock-ms', '2000', '--call-timeout-ms', '2000']],
      ['coordinator-1', ['coordinator', ...common, '--redis', this.redis.url, '--lock-ms', '2000', '--call-timeout-ms', '2000']],
    ];
    const procs = await Promise.all(specs.map(([, args]) => spawnRole(args)));
    specs.forEach(([name, args], i) => this.roles.set(name, { args, proc: procs[i]! }));
    this.gateway = await startGatewayRole({ models: this.family.dir, nats: this.nats.url, redis: [this.redis.url], port: 0, maxInFlight: 1024, requestTimeoutMs: 120_000 });
  }

  role(name: string): RoleProcess {
    const r = this.roles.get(name);
    if (!r) throw new CascadeError(`no role ${name}`);
    return r.proc;
  }

  async restart(name: string): Promise<void> {
    const r = this.roles.get(name)!;
    await r.proc.stop('SIGKILL');
    r.proc = await spawnRole(r.args);
  }

  async restartNats(): Promise<void> {
    await this.nats.stop();
    await new Promise((r) => setTimeout(r, 1000));
    this.nats = await startNats({ port: this.nats.port });
  }

  async restartRedis(): Promise<void> {
    if ('failover' in this.redis) {
      await this.redis.failover(`${queuePrefix(parseRedis(this.redis.url))}:${QUEUE_NAME}:id`);
      return;
    }
    await this.redis.stop();
    await new Promise((r) => setTimeout(r, 1000));
    this.redis = await startRedis({ port: (this.redis as LocalServer).port, persistenceDir: this.redisDir });
  }

  /** Sessions every actor instance still holds (after requests finished: leaks). */
  async sessions(): Promise<number> {
    const nc = await NatsTransport.connect({ servers: this.nats.url });
    try {
      const instances: [string, string][] = [[this.family.target, 'v0'], [this.family.target, 'v1'], ...this.family.drafters.map((d): [string, string] => [d, `${d}-0`])];
      let n = 0;
      for (const [model, instance] of instances) {
        const reply = decode(await nc.request(subjects.instance(model, instance), encode({ type: 'stats' }), { timeoutMs: 5000 }));
        if (reply.type === 'statsReply') n += reply.sessions;
      }
      return n;
    } finally {
      await nc.close();
    }
  }

  async stop(): Promise<void> {
    await this.gateway?.stop().catch(() => undefined);
    await Promise.all([...this.roles.values()].map((r) => r.proc.stop()));
    await Promise.all([this.nats?.stop(), this.redis?.stop()]);
  }
}

/**
 * One streaming completion, read with the official openai client (its SSE parser; an error event
 * from the server throws); returns the text, or throws when the stream ends without a finish reason.
 */
export async function stream(url: string, prompt: string, maxTokens: number, onToken: () => void): Promise<string> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
  let text = '';
  let finished = false;
  for await (const chunk of await client.completions.create({ model: '', prompt, max_tokens: maxTokens, temperature: 0, stream: true })) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.text) onToken();
    text += choice.text;
    if (choice.finish_reason) finished = true;
  }
  if (!finished) throw new Error('the stream ended without a finish reason');
  return text;
}

/** Runs every prompt at once; a request that fails with an explicit error is retried once. */
async function wave(url: string, prompts: readonly string[], maxTokens: number, onFirstToken?: () => void): Promise<Outcome[]> {
  let fired = false;
  const first = () => {
    if (!fired) {
      fired = true;
      onFirstToken?.();
    }
  };
  return Promise.all(
    prompts.map(async (p) => {
      const t0 = performance.now();
      try {
        return { text: await stream(url, p, maxTokens, first), seconds: (performance.now() - t0) / 1000, retried: false };
      } catch {
        try {
          return { text: await stream(url, p, maxTokens, first), seconds: (performance.now() - t0) / 1000, retried: true };
        } catch (err) {
          return { text: '', seconds: (performance.now() - t0) / 1000, retried: true, error: (err as Error).message };
        }
      }
    }),
  );
}

/** The oracle of a greedy request: the text target-only decoding (the target model alone) gives each prompt. */
async function targetOnlyTexts(models: string, prompts: readonly string[], maxTokens: number): Promise<string[]> {
  const family = loadFamily(models);
  const target = await OrtModelSession.open(memberDir(family, family.target));
  try {
    const tokenizer = TextTokenizer.load(target.spec.tokenizerPath);
    const texts = new Map<string, string>();
    for (const p of new Set(prompts)) {
      const r = await generateAutoregressive(target, { promptIds: tokenizer.encode(p), maxTokens, sampling: GREEDY, seed: 0 });
      texts.set(p, tokenizer.decode(r.tokenIds));
    }
    return prompts.map((p) => texts.get(p)!);
  } finally {
    await target.close();
  }
}

/**
 * `cascade chaos`: each scenario runs normal → fault → recovery against a local multi-process
 * cluster. Every greedy text is compared with target-only decoding, never with the cluster's own
 * no-fault run (a cascade that was wrong the same way with and without the fault would pass that).
 */
export async function runChaos(o: ChaosOptions): Promise<ScenarioResult[]> {
  const log = o.log ?? ((s: string) => process.stderr.write(`${s}\n`));
  const prompts = Array.from({ length: o.concurrency }, (_, i) => {
    const all = loadWorkload('code');
    return all[i % all.length]!.prompt;
  });
  log('target-only decoding of every prompt (the oracle) …');
  const want = await targetOnlyTexts(o.models, prompts, o.maxTokens);
  const cluster = new ChaosCluster(o.models, o.redis);
  const results: ScenarioResult[] = [];
  try {
    log(`starting the cluster (2 verifiers, one actor per drafter, 2 coordinators, ${o.redis === 'cluster' ? 'a Redis Cluster of 3 masters with a replica each' : 'one redis-server'}) …`);
    await cluster.start();
    log(`normal: ${o.concurrency} concurrent streams, no fault`);
    const normal = await wave(cluster.gateway.url, prompts, o.maxTokens);
    if (normal.some((r) => r.error)) throw new CascadeError(`the no-fault run failed: ${normal.find((r) => r.error)!.error}`);
    const inexact = normal.filter((r, i) => r.text !== want[i]).length;
    if (inexact) throw new CascadeError(`the no-fault run differs from target-only decoding for ${inexact} of ${prompts.length} greedy requests`);
    const drafter = `draft-${cluster.family.drafters[0]}`;
    for (const scenario of o.scenarios) {
      log(`${scenario}: fault …`);
      let recover: () => Promise<void> = async () => undefined;
      const inject = async () => {
        switch (scenario) {
          case 'kill-drafter':
            await cluster.role(drafter).stop('SIGKILL');
            recover = () => cluster.restart(drafter);
            break;
          case 'kill-verifier':
            await cluster.role('verify-0').stop('SIGKILL');
            recover = () => cluster.restart('verify-0');
            break;
          case 'kill-coordinator':
            await cluster.role('coordinator-0').stop('SIGKILL');
            recover = () => cluster.restart('coordinator-0');
            break;
          case 'partition-drafter': {
            const pid = cluster.role(drafter).child.pid!;
            process.kill(pid, 'SIGSTOP');
            setTimeout(() => process.kill(pid, 'SIGCONT'), 4000).unref();
            break;
          }
          case 'restart-nats':
            await cluster.restartNats();
            break;
          case 'restart-redis':
            await cluster.restartRedis();
            break;
        }
      };
      let injected: Promise<void> | undefined;
      const faulty = await wave(cluster.gateway.url, prompts, o.maxTokens, () => {
        injected = new Promise((r) => setTimeout(r, 300)).then(inject);
      });
      await injected;
      log(`${scenario}: recovery …`);
      await recover();
      await new Promise((r) => setTimeout(r, 1500));
      const after = await wave(cluster.gateway.url, prompts, o.maxTokens);
      // orphaned sessions (a dead coordinator's, closes lost in an outage) must be gone within the idle timeout
      const drainStart = performance.now();
      let leaked = await cluster.sessions().catch(() => -1);
      while (leaked !== 0 && performance.now() - drainStart < 2 * IDLE_MS + 3000) {
        await new Promise((r) => setTimeout(r, 500));
        leaked = await cluster.sessions().catch(() => -1);
      }
      const drainSeconds = (performance.now() - drainStart) / 1000;
      const identical = faulty.filter((r, i) => !r.error && r.text === want[i]).length;
      const recovered = after.filter((r, i) => !r.error && r.text === want[i]).length;
      const result: ScenarioResult = {
        scenario,
        requests: prompts.length,
        completed: faulty.filter((r) => !r.error).length,
        identical,
        retried: faulty.filter((r) => r.retried && !r.error).length,
        failed: faulty.filter((r) => r.error).length,
        recoveryCompleted: recovered,
        leakedSessions: leaked,
        drainSeconds,
        medianSeconds: median(faulty.map((r) => r.seconds)),
        pass: identical === prompts.length && recovered === prompts.length && leaked === 0,
      };
      results.push(result);
      const errors = faulty.filter((r) => r.error).map((r) => r.error);
      log(`${scenario}: ${result.pass ? 'pass' : 'FAIL'} (${identical}/${prompts.length} identical to target-only, ${result.retried} retried, ${leaked} sessions left after ${drainSeconds.toFixed(1)} s${errors.length ? `; errors: ${[...new Set(errors)].join(' | ')}` : ''})`);
    }
  } finally {
    await cluster.stop();
  }
  return results;
}

export function chaosTable(results: readonly ScenarioResult[]): string {
  return formatTable(
    ['scenario', 'requests', 'completed', '= target-only', 'retried', 'failed', 'recovery ok', 'sessions left', 'drained in s', 'median s', 'result'],
    results.map((r) => [r.scenario, r.requests, r.completed, r.identical, r.retried, r.failed, r.recoveryCompleted, r.leakedSessions, r.drainSeconds, r.medianSeconds, r.pass ? 'pass' : 'FAIL']),
  );
}

/** Runs the suite, prints the table, writes chaos.json and chaos.md; exits non-zero when a scenario fails. */
export async function chaosCommand(o: ChaosOptions): Promise<boolean> {
  const results = await runChaos(o);
  const table = chaosTable(results);
  writeJson(o.out, 'chaos', { concurrency: o.concurrency, maxTokens: o.maxTokens, results });
  writeFileSync(join(o.out, 'chaos.md'), `# Chaos suite\n\n${o.concurrency} concurrent greedy streams of ${o.maxTokens} tokens per phase; each scenario runs normal → fault → recovery; *= target-only* and *recovery ok* count greedy texts equal to target-only decoding (the target model alone); actors free orphaned sessions after ${IDLE_MS / 1000} s idle, and *sessions left* is counted once that has passed.\n\n\`\`\`\n${table}\n\`\`\`\n`);
  process.stdout.write(`${table}\n\nwrote ${join(o.out, 'chaos.json')} and chaos.md\n`);
  return results.every((r) => r.pass);
}
