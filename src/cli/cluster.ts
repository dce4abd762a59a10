import { DEFAULT_BATCHING } from '../models/batching-session.ts';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { InvalidArgumentError, CascadeError } from '../errors.ts';
import { freePort, portUnavailable, startNats, startRedis } from '../cluster/local-servers.ts';
import { startActorRole, startCoordinatorRole, startEmbeddedGatewayRole, startGatewayRole, type ModelFlags, type Role } from '../cluster/roles.ts';
import { KV_POLICIES, type KvPolicyName } from '../kernels/kv-policy.ts';
import { isFamilyMember, resolveModels } from '../models/model-choice.ts';
import { chaosCommand, SCENARIOS, type Scenario } from '../bench/chaos.ts';
import { isClusterUrl, parseRedis, withRedisCredentials } from '../cluster/redis-connection.ts';
import { generateSecrets, natsPasswordVar, redact, ROLES, withCredentials, type Role as SecurityRole } from '../cluster/security.ts';
import { BATCH_INVARIANT_HELP, EXECUTION_PROVIDERS, KV_LOCATIONS, parseBatchInvariant, parseExecutionProviders, parseKvLocation, parseNumber, parsePort, parseVerificationFlag, VERIFICATION_HELP, parseDraftingFlag, DRAFTING_HELP, OUTCOME_BRANCHES_HELP, noteOutcomeBranches, parseOutDir } from './options.ts';
import { DEFAULT_DRAFTING, type Drafting } from '../engine/async-cascade.ts';
import { DEFAULT_VERIFICATION, type Verification } from '../kernels/noise.ts';
import type { KvLocation } from '../models/kv-placement.ts';
import type { BatchInvariance } from '../models/session.ts';
import { parseSelfDraft, SELF_DRAFTS, SELF_DRAFT_CACHE, SELF_DRAFT_CACHE_HELP, SELF_DRAFT_HELP, withSelfDraft, type SelfDraft } from './quantize.ts';
import { cliCommand } from '../checkout.ts';
import { ACTOR_SILENCE_MS, HEARTBEAT_MS } from '../cluster/liveness.ts';

/** `coordinator --actor-silence-ms`: 0 (off), or long enough that one late heartbeat is not taken for a dead actor. */
function parseActorSilence(raw: string): number {
  const ms = parseNumber('--actor-silence-ms', { min: 0, integer: true })(raw);
  if (ms > 0 && ms < 2 * HEARTBEAT_MS) throw new InvalidArgumentError(`--actor-silence-ms must be 0 (off) or at least ${2 * HEARTBEAT_MS}: actors send a heartbeat every ${HEARTBEAT_MS} ms, got "${raw}"`);
  return ms;
}

/**
 * A server URL with the credentials from `CASCADE_<NAME>_USER` / `CASCADE_<NAME>_PASSWORD` when it
 * carries none: Kubernetes hands secrets over as separate variables, and a password may hold
 * characters that would need escaping inside a URL.
 */
const withEnvCredentials = (url: string, name: 'NATS' | 'REDIS'): string => {
  const password = process.env[`CASCADE_${name}_PASSWORD`];
  if (!password) return url;
  if (isClusterUrl(url)) return withRedisCredentials(url, process.env[`CASCADE_${name}_USER`] ?? '', password);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError(`CASCADE_${name}_PASSWORD is set but "${redact(url)}" is not a URL to add it to`);
  }
  return parsed.password ? url : withCredentials(url, process.env[`CASCADE_${name}_USER`] ?? '', password);
};
const natsUrl = (flag: string | undefined) => withEnvCredentials(flag ?? process.env.CASCADE_NATS_URL ?? 'nats://127.0.0.1:4222', 'NATS');
const redisUrls = (flag: string[] | undefined) => (flag ?? parseUrls(process.env.CASCADE_REDIS_URL ?? 'redis://127.0.0.1:6379')).map((u) => withEnvCredentials(u, 'REDIS'));
const healthPort = (flag: number | undefined): number | undefined => {
  if (flag !== undefined) return flag;
  const env = process.env.CASCADE_HEALTH_PORT;
  if (!env) return undefined;
  return parsePort('CASCADE_HEALTH_PORT')(env);
};
/** `--redis`: one redis:// URL, or a Redis Cluster's seeds as redis+cluster://host:port,host:port (redis-connection.ts); refused with the fix named otherwise. */
const parseUrls = (v: string): string[] => {
  const urls = isClusterUrl(v) ? [v.trim()] : v.split(',').map((s) => s.trim()).filter(Boolean);
  parseRedis(urls);
  return urls;
};
const REDIS_HELP = 'Redis: redis://host:port, or a Redis Cluster\'s seed nodes as redis+cluster://host:port,host:port (rediss:// and rediss+cluster:// for TLS)';
/** The gateway's bearer keys from --api-key or CASCADE_API_KEYS: none when neither is set; one that is set but names no key is refused (an unset $KEY must not open the server). */
const apiKeys = (flag: string | undefined): string[] => {
  const raw = flag ?? process.env.CASCADE_API_KEYS;
  if (raw === undefined) return [];
  const keys = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!keys.length) throw new InvalidArgumentError(`${flag !== undefined ? '--api-key' : 'CASCADE_API_KEYS'} names no key (got "${raw}"): give one or more keys, comma-separated, or leave it out for no authentication`);
  // commander gives an option left without its value the next word: `--api-key $KEY --port 0` with KEY unset
  if (flag !== undefined && flag.startsWith('--')) throw new InvalidArgumentError(`--api-key needs a key, got the option "${flag}"`);
  return keys;
};

/** `cluster up`/`secrets --api-key`: one key, not blank (a blank one would leave the gateway open). */
const oneApiKey = (raw: string): string => {
  if (!raw.trim() || raw.includes(',') || raw.startsWith('--')) throw new InvalidArgumentError(`--api-key must be one non-blank key, got "${raw}"`);
  return raw.trim();
};

/** A second signal this long after the first forces the exit; sooner, it is the same signal relayed twice (npx, timeout and a shell's process group each pass one on). */
const FORCE_AFTER_MS = 2_000;

/**
 * Once a role has stopped, how long its process may still wait for the event loop to drain before it
 * exits anyway, ms. ioredis 5 leaves a connection's socketTimeout timer (15 s on the queue's
 * connections) running after the connection is closed (fixed in ioredis 6, redis/ioredis#2147; BullMQ
 * 6 uses 5), which held a stopped coordinator for 15 s.
 */
const EXIT_AFTER_STOP_MS = 500;

/**
 * Runs a role until SIGINT/SIGTERM, then stops it gracefully. Prints `ready: …` once serving. A
 * signal during the stop is ignored within FORCE_AFTER_MS of the first, and later exits at once with
 * status 130 (process.exit, so exit handlers still run). Once stopped, the process exits within
 * EXIT_AFTER_STOP_MS.
 */
async function runUntilSignalled(start: () => Promise<Role>): Promise<void> {
  const role = await start();
  process.stdout.write(`ready: ${role.describe}\n`);
  await new Promise<void>((done) => {
    let first: number | undefined;
    const stop = () => {
      if (first === undefined) {
        first = Date.now();
        void role.stop().catch((err: unknown) => {
          process.stderr.write(`error: the stop failed: ${err instanceof Error ? err.message : String(err)}\n`);
          process.exitCode = 1;
        }).finally(() => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          setTimeout(() => process.exit(), EXIT_AFTER_STOP_MS).unref();
          done();
        });
      } else if (Date.now() - first >= FORCE_AFTER_MS) {
        process.stderr.write('a second signal: exiting without waiting for the stop to finish\n');
        process.exit(130);
      }
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

interface ActorFlags {
  model?: string;
  modelFile?: string;
  tokenizer?: string;
  selfDraft?: SelfDraft;
  selfDraftCache: string;
  models: string;
  nats?: string;
  redis?: string[];
  instance?: string;
  idleMs: number;
  threads: number;
  executionProviders?: string[];
  kvLocation: KvLocation;
  batchInvariant: BatchInvariance;
  kvPolicy: string;
  kvBudget?: number;
  kvSinks: number;
  kvRecent: number;
  kvRebuild?: number;
  kvReleaseBatch?: number;
  kvPrefillChunk?: number;
  healthPort?: number;
  maxBatch: number;
  batchWindowMs: number;
  multiStepMs: number;
}

/** `--multi-step-ms` (BatchingOptions.multiStepMs), on `actor`, `coordinator --verifier` and `cluster up`. */
const MULTI_STEP_HELP = 'longest one call of a session alone on the model may decode several tokens (multi-step decoding, going by its measured step time; at least one step): a request arriving meanwhile waits up to this long, and a lone stream pays one round trip per call, not per token; 0 = one token a call';

interface ClusterState {
  readonly gateway: string;
  readonly nats: string;
  readonly redis: string;
  readonly secured: boolean;
  /** `started`: the process's start time (processStart), so that `down` never signals a pid the system gave to another process since. */
  readonly pids: { readonly role: string; readonly pid: number; readonly started?: string }[];
  readonly logs: string;
  /** Each actor's and coordinator's /live, /health and /metrics (their --health-port), on loopback. */
  readonly health?: Record<string, string>;
}

const stateFile = (dir: string) => join(dir, 'cluster.json');

async function waitForLine(path: string, pid: number, pattern: RegExp, timeoutMs: number, role: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
    if (pattern.test(text)) return;
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    // the log is removed with everything else a failed start wrote: its end goes into the error
    const tail = `its log ended:\n${text.trimEnd().split('\n').slice(-15).join('\n')}`;
    if (!alive) throw new CascadeError(`${role} exited during start-up; ${tail}`);
    if (Date.now() > until) throw new CascadeError(`${role} did not become ready within ${timeoutMs / 1000} s; ${tail}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A process's start time, in clock ticks after boot (field 22 of /proc/PID/stat); undefined where
 * there is no /proc or no such process, and `exited` for a zombie (dead, not yet reaped by its parent).
 */
function processStart(pid: number): string | undefined {
  try {
    // the command name (field 2) is in brackets and may hold spaces: count fields after its closing bracket
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' ? 'exited' : fields[19];
  } catch {
    return undefined;
  }
}

/** Whether `pid` is a running process: it answers signal 0 and is no zombie (exited, its parent gone without reaping it). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  return processStart(pid) !== 'exited';
}

/** The processes of `pids` still running as the ones started (same start time, where it was recorded). */
function stillOurs<P extends { pid: number; started?: string }>(pids: readonly P[]): P[] {
  return pids.filter((p) => running(p.pid) && (p.started === undefined || processStart(p.pid) === p.started));
}

function killAll(pids: readonly { pid: number }[], signal: NodeJS.Signals): void {
  for (const { pid } of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

async function waitGone(pids: readonly { pid: number }[], timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (!pids.some(({ pid }) => running(pid))) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

interface UpOptions {
  insecure?: boolean;
  models: string;
  model?: string;
  draftModel?: string[];
  modelFile?: string;
  tokenizer?: string;
  stateDir: string;
  port?: number;
  nats?: string;
  redis?: string;
  draftInstances: number;
  /** Verify actor processes (without --colocate); requests' sessions spread over them, and a lost one's sessions are placed again on another. */
  verifyInstances?: number;
  coordinators: number;
  apiKey?: string;
  threads: number;
  verification: Verification;
  drafting: Drafting;
  outcomeBranches?: boolean;
  colocate?: boolean;
  /** The verifier's execution providers (`actor verify --execution-providers`; with --colocate, each coordinator's); unset: its default, cpu. */
  executionProviders?: string[];
  /** Where the verifier's KV caches live (`actor verify --kv-location`; with --colocate, each coordinator's); unset: its default, auto. */
  kvLocation?: KvLocation;
  /** The verifier's batch invariance (`actor verify --batch-invariant`; with --colocate, each coordinator's); unset: its default, auto. */
  batchInvariant?: BatchInvariance;
  /** The verifier's multi-step bound (`actor verify --multi-step-ms`; with --colocate, each coordinator's); unset: its default. */
  multiStepMs?: number;
  /** The coordinators' `--actor-silence-ms`; unset: their default. */
  actorSilenceMs?: number;
  /** The target's own quantized copy as the first drafter, on draft actors of its own (`--self-draft`), made here before any role starts. */
  selfDraft?: SelfDraft;
  selfDraftCache: string;
}

/** The files `cluster up` writes in its state directory besides the role logs. */
const SERVER_FILES = ['secrets.json', 'nats.conf', 'redis.conf'];

/**
 * `cascade cluster up`: every role as its own OS process, servers spawned when not given. A start
 * that fails stops every process it started and removes every file it wrote (the state directory
 * too when it made it), then throws naming the role that failed, with the end of its log.
 */
async function clusterUp(o: UpOptions): Promise<void> {
  // on this terminal, not only in the gateway's log
  noteOutcomeBranches(o);
  if (o.colocate && o.verifyInstances !== undefined) throw new InvalidArgumentError('--verify-instances starts verify actor processes, which --colocate replaces by a verifier inside each coordinator: use --coordinators for more of those, or leave --colocate out');
  const dir = resolve(o.stateDir);
  if (existsSync(stateFile(dir))) throw new CascadeError(`a cluster is already up (state in ${stateFile(dir)}); run \`cascade cluster down --state-dir ${o.stateDir}\` first`);
  // the gateway starts last, after every model has loaded: a busy --port is refused before anything starts
  const busy = o.port !== undefined ? await portUnavailable(o.port) : undefined;
  if (busy) throw new InvalidArgumentError(`--port ${o.port} cannot be used on 127.0.0.1 (${busy}): choose another, or leave --port out for a free one; nothing was started`);
  const chosen = resolveModels({ models: o.models, model: o.model, draftModels: o.draftModel, modelFile: o.modelFile, tokenizer: o.tokenizer });
  // --self-draft: the copy is made (or found) once, before anything starts, and gets draft actors of
  // its own below; the coordinators and the gateway only name it (the same flag, nothing made there)
  const selfDraftCache = resolve(o.selfDraftCache);
  const family = o.selfDraft ? await withSelfDraft(chosen, o.selfDraft, selfDraftCache, (m) => process.stderr.write(`${m}\n`)) : chosen;
  const madeDir = !existsSync(dir);
  mkdirSync(dir, { recursive: true });
  const pids: { role: string; pid: number; started?: string }[] = [];
  const withStart = (role: string, pid: number) => {
    const started = processStart(pid);
    return { role, pid, ...(started !== undefined ? { started } : {}) };
  };
  const logs: string[] = [];
  /** Each actor's and coordinator's probes and metrics URL, read from its ready line. */
  const health: Record<string, string> = {};
  /** Starts a role with this process's environment plus `env` (a variable set to undefined is removed). */
  const started = async (role: string, args: string[], env: Record<string, string | undefined>, timeoutMs = 60_000) => {
    const log = join(dir, `${role}.log`);
    // actors and coordinators serve /live, /health and /metrics on a loopback port the system picks
    // (port 0: no race with other roles' ports), which their ready line names (the gateway has its own)
    const probes = role !== 'gateway';
    if (probes) env = { ...env, CASCADE_HEALTH_PORT: '0', CASCADE_HEALTH_HOST: '127.0.0.1' };
    logs.push(log);
    const fd = openSync(log, 'w');
    // credentials travel in the environment, never on the command line (visible in ps) or in logs
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete childEnv[k];
    const child = spawn(process.execPath, [...cliCommand(), ...args], { detached: true, stdio: ['ignore', fd, fd], env: childEnv });
    closeSync(fd);
    child.unref();
    pids.push(withStart(role, child.pid!));
    const wait = async () => {
      await waitForLine(log, child.pid!, /^ready: /m, timeoutMs, role);
      const url = probes ? /^ready: .*health on (http:\/\/[^\s,)]+)/m.exec(readFileSync(log, 'utf8'))?.[1] : undefined;
      if (url) health[role] = url;
    };
    return { log, pid: child.pid!, wait };
  };
  const secrets = o.insecure ? undefined : generateSecrets(o.apiKey);
  try {
    if (secrets) writeFileSync(join(dir, 'secrets.json'), JSON.stringify(secrets, null, 2), { mode: 0o600 });
    let nats = o.nats;
    let redis = o.redis;
    const natsFor = (role: SecurityRole) => (secrets && !o.nats ? withCredentials(nats!, role, secrets.nats[role]) : nats!);
    const redisEnv = () => (secrets && !o.redis ? withCredentials(redis!, secrets.redis.user, secrets.redis.password) : redis!);
    if (!nats) {
      const s = await startNats({ detached: true, users: secrets?.nats, configDir: dir });
      pids.push(withStart('nats-server', s.process.pid!));
      s.process.unref();
      nats = s.url;
    }
    if (!redis) {
      const s = await startRedis({ detached: true, acl: secrets?.redis, configDir: dir });
      pids.push(withStart('redis-server', s.process.pid!));
      s.process.unref();
      redis = s.url;
    }
    const env = (role: SecurityRole, withRedis = false) => ({ CASCADE_NATS_URL: natsFor(role), ...(withRedis ? { CASCADE_REDIS_URL: redisEnv() } : {}) });
    const tokenizer = o.tokenizer !== undefined ? ['--tokenizer', resolve(o.tokenizer)] : [];
    const target = [...(o.model !== undefined ? ['--model', o.model] : []), ...(o.modelFile !== undefined ? ['--model-file', o.modelFile] : [])];
    const common = ['--models', o.models, ...tokenizer];
    // coordinators and the gateway name the same models the actors host
    const named = [...common, ...target, ...(o.draftModel ?? []).flatMap((d) => ['--draft-model', d]), ...(o.selfDraft ? ['--self-draft', o.selfDraft] : [])];
    // --colocate: each coordinator hosts its own verifier (cascade coordinator --verifier) instead of a verify actor process
    const verifierFlags = [
      ...(o.executionProviders !== undefined ? ['--execution-providers', o.executionProviders.join(',')] : []),
      ...(o.kvLocation !== undefined ? ['--kv-location', o.kvLocation] : []),
      ...(o.batchInvariant !== undefined ? ['--batch-invariant', o.batchInvariant] : []),
      ...(o.multiStepMs !== undefined ? ['--multi-step-ms', String(o.multiStepMs)] : []),
    ];
    const waits: Promise<unknown>[] = [];
    for (let i = 0; !o.colocate && i < (o.verifyInstances ?? 1); i++) waits.push((await started(`verify-${i}`, ['actor', 'verify', ...common, ...target, '--threads', String(o.threads), ...verifierFlags], env('actor'))).wait());
    for (const d of family.drafters) {
      // a family member by name; an export by its folder (served under the folder's name, which is d)
      const model = isFamilyMember(o.models, d) ? d : (family.locations?.get(d) as { dir: string }).dir;
      for (let i = 0; i < o.draftInstances; i++) waits.push((await started(`draft-${d}-${i}`, ['actor', 'draft', '--model', model, ...common], env('actor'))).wait());
    }
    const verifier = o.colocate ? ['--verifier', '--threads', String(o.threads), ...verifierFlags] : [];
    const silence = o.actorSilenceMs !== undefined ? ['--actor-silence-ms', String(o.actorSilenceMs)] : [];
    for (let i = 0; i < o.coordinators; i++) waits.push((await started(`coordinator-${i}`, ['coordinator', ...named, ...verifier, ...silence], env('coordinator', true))).wait());
    await Promise.all(waits);
    const port = o.port ?? (await freePort());
    const keys = secrets?.apiKey ?? o.apiKey;
    const gw = await started('gateway', ['serve', ...named, '--port', String(port), '--verification', o.verification, '--drafting', o.drafting, ...(o.outcomeBranches ? ['--outcome-branches'] : [])], { ...env('gateway', true), CASCADE_API_KEYS: keys });
    await gw.wait();
    const gateway = `http://127.0.0.1:${port}`;
    const state: ClusterState = { gateway, nats: redact(nats), redis: redact(redis), secured: Boolean(secrets), pids, logs: dir, health };
    writeFileSync(stateFile(dir), JSON.stringify(state, null, 2));
    process.stdout.write(`cluster up: ${pids.length} processes, logs in ${dir}\n`);
    process.stdout.write(`gateway ${gateway}  (OpenAI API at ${gateway}/v1)\n`);
    process.stdout.write(`metrics: the gateway's at ${gateway}/metrics; ${Object.entries(health).filter(([r]) => r.startsWith('coordinator')).map(([r, u]) => `${r}'s at ${u}/metrics`).join(', ')} (every role's in ${stateFile(dir)})\n`);
    if (secrets) process.stdout.write(`authentication on: the API key and the NATS/Redis credentials are in ${join(dir, 'secrets.json')} (mode 0600)\n`);
  } catch (err) {
    killAll(pids, 'SIGTERM');
    if (!(await waitGone(pids, 5000))) {
      killAll(pids, 'SIGKILL');
      await waitGone(pids, 2000);
    }
    for (const file of [...logs, ...SERVER_FILES.map((f) => join(dir, f))]) rmSync(file, { force: true });
    if (madeDir) rmSync(dir, { recursive: true, force: true });
    const stopped = pids.length ? `stopped ${pids.map((p) => p.role).join(', ')}` : 'started nothing';
    throw new CascadeError(`cluster up failed; ${stopped} and removed the files it wrote in ${dir}`, { cause: err });
  }
}

/** `cascade cluster down`: stops every process `up` started, newest first; with none up, says so and succeeds. */
async function clusterDown(stateDir: string): Promise<void> {
  const dir = resolve(stateDir);
  // nothing to stop is not a failure (as `docker compose down`): scripts may run down twice
  if (!existsSync(stateFile(dir))) {
    process.stdout.write(`cluster down: no cluster is up (no ${stateFile(dir)}); nothing to stop\n`);
    return;
  }
  const state = JSON.parse(readFileSync(stateFile(dir), 'utf8')) as ClusterState;
  // only what still runs as started: a role that died may have left its pid to another process
  const roles = stillOurs([...state.pids].reverse());
  const servers = roles.filter((p) => p.role.endsWith('-server'));
  const workers = roles.filter((p) => !p.role.endsWith('-server'));
  killAll(workers, 'SIGTERM');
  const hung = !(await waitGone(workers, 10_000));
  if (hung) killAll(workers, 'SIGKILL');
  killAll(servers, 'SIGTERM');
  if (!(await waitGone(servers, 5000))) killAll(servers, 'SIGKILL');
  rmSync(stateFile(dir));
  for (const f of SERVER_FILES) rmSync(join(dir, f), { force: true });
  const gone = state.pids.length - roles.length;
  process.stdout.write(`cluster down: stopped ${roles.length} processes${gone ? ` (${gone} had already exited)` : ''}; their logs stay in ${dir}/<role>.log\n`);
  if (hung) process.stdout.write('cluster down: some roles did not stop within 10 s of SIGTERM and were killed (SIGKILL); their logs may say why\n');
}

const MODEL_HELP = 'the target: a model folder (a Hugging Face ONNX export, or a family folder with family.json) or a member of the --models family (default: the family target)';
const DRAFT_MODEL_HELP = 'a drafter, repeatable, largest first: a model folder or a member of the --models family (default: the family\'s drafters; none with an exported --model)';
const MODEL_FILE_HELP = 'the target\'s ONNX graph inside its folder when it holds several, e.g. onnx/model_fp16.onnx (default: found from the folder)';
const TOKENIZER_HELP = 'tokenizer.json for models whose folders carry none (a folder\'s own tokenizer.json wins)';
/** Commander's collector for a repeatable flag. */
const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

const HEALTH_HELP = 'serve GET /live, /health and /metrics on this port for probes and Prometheus (env CASCADE_HEALTH_PORT; default: none)';
const CREDENTIALS_HELP = 'credentials may also come from env CASCADE_NATS_USER/CASCADE_NATS_PASSWORD and CASCADE_REDIS_USER/CASCADE_REDIS_PASSWORD';

export function registerCluster(program: Command): void {
  program
    .command('actor')
    .description('run one draft or verifier actor: hosts a model and serves sessions over NATS')
    .addHelpText('after', `\n${CREDENTIALS_HELP}`)
    .argument('<kind>', 'draft | verify')
    .option('--model <dir|name>', 'the model hosted: a model folder (a Hugging Face ONNX export, served under the folder\'s name) or a member of the --models family (default: the target for verify, the largest drafter for draft)')
    .option('--models <dir>', 'model family directory', 'models')
    .option('--model-file <name>', MODEL_FILE_HELP)
    .option('--tokenizer <file>', TOKENIZER_HELP)
    .option('--self-draft <width>', `draft actors: host the own ${SELF_DRAFTS.join(' or ')} copy of --model (default: the family's target) instead of --model, served as <target>-<width>, the name that coordinators and gateways started with the same --self-draft give it; made once into --self-draft-cache with cascade quantize's defaults and the head quantized (needs Python 3 with onnx and numpy the first time)`, parseSelfDraft)
    .option('--self-draft-cache <dir>', SELF_DRAFT_CACHE_HELP, SELF_DRAFT_CACHE)
    .option('--nats <url>', 'NATS URL (credentials may be in it: nats://user:pass@host:port; better in env CASCADE_NATS_URL, default nats://127.0.0.1:4222)')
    .option('--redis <urls>', `${REDIS_HELP}, where a bounded cache spills released KV for rebuilds (default: in memory)`, parseUrls)
    .option('--kv-policy <policy>', 'bound each session\'s KV cache (draft actors only; exact): window | streaming | h2o | adore', 'full')
    .option('--kv-budget <m>', 'tokens a bounded cache keeps', parseNumber('--kv-budget', { min: 1, integer: true }))
    .option('--kv-sinks <n>', 'first tokens never released', parseNumber('--kv-sinks', { min: 0, integer: true }), 0)
    .option('--kv-recent <n>', 'newest tokens never released', parseNumber('--kv-recent', { min: 0, integer: true }), 0)
    .option('--kv-rebuild <r>', 'released tokens brought back per step (adore; default 2)', parseNumber('--kv-rebuild', { min: 0, integer: true }))
    .option('--kv-release-batch <s>', 'tokens released at once when a cache is full (default 1; larger compacts the cache once per s steps)', parseNumber('--kv-release-batch', { min: 1, integer: true }))
    .option('--kv-prefill-chunk <n>', 'prompt tokens per pass under a bounded cache (default: half of budget - sinks - recent)', parseNumber('--kv-prefill-chunk', { min: 1, integer: true }))
    .option('--instance <id>', 'this instance\'s id (letters, digits, - and _); random by default')
    .option('--idle-ms <ms>', 'free a session untouched this long', parseNumber('--idle-ms', { min: 100, integer: true }), 60_000)
    .option('--threads <n>', 'ONNX Runtime intra-op threads', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--execution-providers <list>', `the model's execution providers in order, e.g. webgpu,cpu (${EXECUTION_PROVIDERS.join(', ')}; falls back to the CPU with a warning), or auto: where its pass measures cheapest (webgpu, cpu; verify pass for the target, decode pass for a drafter)`, parseExecutionProviders('--execution-providers'))
    .option('--kv-location <where>', `where the sessions' KV caches live between passes: ${KV_LOCATIONS.join(' | ')} (auto: on the device when the model runs on a GPU EP)`, parseKvLocation, 'auto')
    .option('--batch-invariant <mode>', `whether a token's logits stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP}; a verify actor's keeps speculation over a quantized target exact (default: auto for verify, off for draft, whose drafts are reviewed)`, parseBatchInvariant)
    .option('--health-port <port>', HEALTH_HELP, parsePort('--health-port'))
    .option('--max-batch <n>', 'most sessions whose forwards run as one batched pass (1 = no batching)', parseNumber('--max-batch', { min: 1, integer: true }), DEFAULT_BATCHING.maxBatch)
    .option('--batch-window-ms <ms>', 'longest a forward waits for other active sessions to join its pass', parseNumber('--batch-window-ms', { min: 0 }), DEFAULT_BATCHING.windowMs)
    .option('--multi-step-ms <ms>', MULTI_STEP_HELP, parseNumber('--multi-step-ms', { min: 0 }), DEFAULT_BATCHING.multiStepMs)
    .action(async (kind: string, o: ActorFlags) => {
      if (kind !== 'draft' && kind !== 'verify') throw new InvalidArgumentError(`actor kind must be draft or verify, got "${kind}"`);
      if (!(KV_POLICIES as readonly string[]).includes(o.kvPolicy)) throw new InvalidArgumentError(`--kv-policy must be one of ${KV_POLICIES.join(', ')}, got "${o.kvPolicy}"`);
      if (o.kvPolicy !== 'full' && o.kvBudget === undefined) throw new InvalidArgumentError(`--kv-policy ${o.kvPolicy} needs --kv-budget`);
      const kv = o.kvPolicy === 'full' ? undefined : { policy: o.kvPolicy as KvPolicyName, budget: o.kvBudget!, sinks: o.kvSinks, recent: o.kvRecent, rebuild: o.kvRebuild, releaseBatch: o.kvReleaseBatch, prefillChunk: o.kvPrefillChunk };
      await runUntilSignalled(() => startActorRole({ kind, ...o, nats: natsUrl(o.nats), redis: o.redis?.map((u) => withEnvCredentials(u, 'REDIS')), kv, healthPort: healthPort(o.healthPort), batching: { maxBatch: o.maxBatch, windowMs: o.batchWindowMs, multiStepMs: o.multiStepMs } }));
    });

  program
    .command('coordinator')
    .description('run a coordinator: takes requests from the BullMQ queue and drives their cascades across actors')
    .addHelpText('after', `\n${CREDENTIALS_HELP}`)
    .option('--models <dir>', 'model family directory (names and MaG\'s table; no weights are loaded unless --verifier)', 'models')
    .option('--model <dir|name>', MODEL_HELP)
    .option('--draft-model <dir|name>', DRAFT_MODEL_HELP, collect)
    .option('--model-file <name>', MODEL_FILE_HELP)
    .option('--tokenizer <file>', TOKENIZER_HELP)
    .option('--self-draft <width>', `name the target's own ${SELF_DRAFTS.join(' or ')} copy, <target>-<width>, first among the drafters; a draft actor started with the same flag hosts it (cascade actor draft --self-draft). Nothing is made or loaded here`, parseSelfDraft)
    .option('--nats <url>', 'NATS URL (default: env CASCADE_NATS_URL, else nats://127.0.0.1:4222)')
    .option('--redis <urls>', `${REDIS_HELP}; holds the queue and the request logs (default: env CASCADE_REDIS_URL, else redis://127.0.0.1:6379)`, parseUrls)
    .option('--concurrency <n>', 'requests driven at once', parseNumber('--concurrency', { min: 1, integer: true }), 8)
    .option('--lock-ms <ms>', 'job lock; a dead coordinator\'s request is retried after it', parseNumber('--lock-ms', { min: 500, integer: true }), 10_000)
    .option('--call-timeout-ms <ms>', 'timeout of one actor call feeding up to 512 tokens, one more such timeout per 512 tokens a prefill feeds (the last resort for a call whose actor died mid-call: --actor-silence-ms notices sooner)', parseNumber('--call-timeout-ms', { min: 100, integer: true }), 10_000)
    .option('--actor-silence-ms <ms>', `give up a call to an actor instance that sent no heartbeat (one a second) for this long, and place its session again, before --call-timeout-ms passes: a verifier or drafter killed, frozen or cut off mid-call is noticed in seconds (0 = the timeout alone, sessions still opened on the instances heard; else at least ${2 * HEARTBEAT_MS})`, parseActorSilence, ACTOR_SILENCE_MS)
    .option('--health-port <port>', HEALTH_HELP, parsePort('--health-port'))
    .option('--verifier', 'also host the target\'s verify actor in this process, reachable only from it: the requests it drives verify without a network round trip, and only drafter calls cross NATS (one verifier per coordinator; no separate verify actor needed)')
    .option('--threads <n>', 'with --verifier: its ONNX Runtime intra-op threads (default 1)', parseNumber('--threads', { min: 1, integer: true }))
    .option('--execution-providers <list>', `with --verifier: its execution providers (${EXECUTION_PROVIDERS.join(', ')}, or auto), as cascade actor takes them`, parseExecutionProviders('--execution-providers'))
    .option('--kv-location <where>', `with --verifier: where its KV caches live between passes: ${KV_LOCATIONS.join(' | ')} (default auto)`, parseKvLocation)
    .option('--batch-invariant <mode>', `with --verifier: whether a token's logits stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP} (default auto)`, parseBatchInvariant)
    .option('--multi-step-ms <ms>', `with --verifier: ${MULTI_STEP_HELP} (default ${DEFAULT_BATCHING.multiStepMs})`, parseNumber('--multi-step-ms', { min: 0 }))
    .action(async (o: ModelFlags & { nats?: string; redis?: string[]; concurrency: number; lockMs: number; callTimeoutMs: number; actorSilenceMs: number; healthPort?: number; verifier?: boolean; threads?: number; executionProviders?: string[]; kvLocation?: KvLocation; batchInvariant?: BatchInvariance; multiStepMs?: number }) => {
      const stray = (['threads', 'executionProviders', 'kvLocation', 'batchInvariant', 'multiStepMs'] as const).filter((k) => o[k] !== undefined);
      if (!o.verifier && stray.length) throw new InvalidArgumentError(`${stray.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} set${stray.length === 1 ? 's' : ''} up the verifier that --verifier hosts: add --verifier, or leave ${stray.length === 1 ? 'it' : 'them'} out`);
      const verifier = o.verifier ? { threads: o.threads ?? 1, executionProviders: o.executionProviders, kvLocation: o.kvLocation ?? 'auto', batchInvariant: o.batchInvariant ?? 'auto', ...(o.multiStepMs !== undefined ? { batching: { multiStepMs: o.multiStepMs } } : {}) } : undefined;
      await runUntilSignalled(() => startCoordinatorRole({ ...o, nats: natsUrl(o.nats), redis: redisUrls(o.redis), healthPort: healthPort(o.healthPort), verifier }));
    });

  program
    .command('serve')
    .description('run the OpenAI-compatible HTTP gateway (/v1/completions, /v1/chat/completions, /v1/models, /health, /live, /metrics)')
    .addHelpText('after', `\n${CREDENTIALS_HELP}`)
    .option('--models <dir>', 'model family directory (tokenizer and names)', 'models')
    .option('--model <dir|name>', MODEL_HELP)
    .option('--draft-model <dir|name>', DRAFT_MODEL_HELP, collect)
    .option('--model-file <name>', MODEL_FILE_HELP)
    .option('--tokenizer <file>', TOKENIZER_HELP)
    .option('--nats <url>', 'NATS URL (default: env CASCADE_NATS_URL, else nats://127.0.0.1:4222)')
    .option('--redis <urls>', `${REDIS_HELP} (default: env CASCADE_REDIS_URL, else redis://127.0.0.1:6379)`, parseUrls)
    .option('--host <host>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port', parsePort('--port'), 8000)
    .option('--api-key <keys>', 'accepted bearer keys, comma-separated (env CASCADE_API_KEYS); none = no authentication')
    .option('--max-in-flight <n>', 'requests in flight before answering 503', parseNumber('--max-in-flight', { min: 1, integer: true }), 64)
    .option('--request-timeout-ms <ms>', 'longest a request may take', parseNumber('--request-timeout-ms', { min: 1000, integer: true }), 600_000)
    .option('--embedded', 'run the engine in this process instead of a cluster: the models load here, no NATS, Redis, coordinator or actors (one machine, as llama.cpp\'s llama-server)')
    .option('--threads <n>', 'with --embedded: ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }))
    .option('--execution-providers <list>', `with --embedded: the target's execution providers (${EXECUTION_PROVIDERS.join(', ')}, or auto; default cpu)`, parseExecutionProviders('--execution-providers'))
    .option('--draft-execution-providers <list>', 'with --embedded: every drafter\'s execution providers, or auto (default: auto beside a target off the CPU, else cpu)', parseExecutionProviders('--draft-execution-providers'))
    .option('--verification <rule>', `${VERIFICATION_HELP} (for requests whose cascade field names none)`, parseVerificationFlag, DEFAULT_VERIFICATION)
    .option('--drafting <mode>', `${DRAFTING_HELP} (for requests whose cascade field names none)`, parseDraftingFlag, DEFAULT_DRAFTING)
    .option('--outcome-branches', `${OUTCOME_BRANCHES_HELP} (for async requests whose cascade field does not say)`)
    .option('--kv-location <where>', `with --embedded: where the target's KV cache lives between passes: ${KV_LOCATIONS.join(' | ')} (auto: on the device on a GPU EP, a host buffer for a GroupQueryAttention graph on the CPU; drafters are always auto)`, parseKvLocation)
    .option('--batch-invariant <mode>', `with --embedded: whether a token's logits from the target stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP}; drafters never pad (off: their drafts are reviewed) (default auto)`, parseBatchInvariant)
    .option('--self-draft <width>', `with --embedded: ${SELF_DRAFT_HELP}; in a cluster the gateway only names it first among the drafters (<target>-<width>), and a draft actor started with the same flag hosts it (cascade actor draft --self-draft)`, parseSelfDraft)
    .option('--self-draft-cache <dir>', `with --embedded: ${SELF_DRAFT_CACHE_HELP} (default: ${SELF_DRAFT_CACHE})`)
    .action(async (o: ModelFlags & { nats?: string; redis?: string[]; host: string; port: number; apiKey?: string; maxInFlight: number; requestTimeoutMs: number; embedded?: boolean; outcomeBranches?: boolean; threads?: number; executionProviders?: string[]; draftExecutionProviders?: string[]; verification: Verification; drafting?: Drafting; kvLocation?: KvLocation; batchInvariant?: BatchInvariance; selfDraft?: SelfDraft; selfDraftCache?: string }) => {
      // the models load before the server listens: a port it cannot have is refused first
      noteOutcomeBranches(o);
      const busy = await portUnavailable(o.port, o.host);
      if (busy) throw new InvalidArgumentError(`--port ${o.port} cannot be used on ${o.host} (${busy}): choose another`);
      if (o.embedded) {
        if (o.nats !== undefined || o.redis !== undefined) throw new InvalidArgumentError('--nats and --redis are for a cluster: an --embedded server runs without them');
        await runUntilSignalled(() => startEmbeddedGatewayRole({ ...o, apiKeys: apiKeys(o.apiKey) }));
        return;
      }
      if (o.threads !== undefined || o.executionProviders !== undefined || o.draftExecutionProviders !== undefined || o.kvLocation !== undefined || o.batchInvariant !== undefined) {
        throw new InvalidArgumentError('--threads, --execution-providers, --kv-location and --batch-invariant are for --embedded: a cluster\'s models run on its actors (cascade actor --threads, --execution-providers, --kv-location, --batch-invariant)');
      }
      if (o.selfDraftCache !== undefined) {
        throw new InvalidArgumentError('--self-draft-cache is for --embedded: a cluster\'s gateway only names the --self-draft copy, which a draft actor makes (cascade actor draft --self-draft --self-draft-cache DIR)');
      }
      await runUntilSignalled(() => startGatewayRole({ ...o, nats: natsUrl(o.nats), redis: redisUrls(o.redis), apiKeys: apiKeys(o.apiKey) }));
    });

  program
    .command('chaos')
    .description('fault scenarios (normal -> fault -> recovery) against a local multi-process cluster, during concurrent streaming requests; prints a table')
    .option('--scenarios <list>', `comma-separated: ${SCENARIOS.join(', ')}`, (v: string) => {
      const list = v.split(',').map((s) => s.trim());
      for (const s of list) if (!(SCENARIOS as readonly string[]).includes(s)) throw new InvalidArgumentError(`unknown scenario "${s}": use ${SCENARIOS.join(', ')}`);
      return list;
    }, [...SCENARIOS])
    .option('--concurrency <n>', 'concurrent streaming requests per phase', parseNumber('--concurrency', { min: 1, integer: true }), 20)
    .option('--max-tokens <n>', 'tokens per request', parseNumber('--max-tokens', { min: 1, integer: true }), 32)
    .option('--models <dir>', 'model family directory', 'models')
    .option('--out <dir>', 'directory for chaos.json and chaos.md', parseOutDir('--out'), 'results')
    .option('--redis-cluster', 'keep the state in a Redis Cluster of 3 masters with a replica each (restart-redis becomes a failover of the queue\'s master) instead of one redis-server')
    .action(async (o: { scenarios: Scenario[]; concurrency: number; maxTokens: number; models: string; out: string; redisCluster?: boolean }) => {
      const ok = await chaosCommand({ ...o, redis: o.redisCluster ? 'cluster' : 'server' });
      if (!ok) process.exitCode = 1;
    });

  const cluster = program.command('cluster').description('a whole cluster on this machine, one OS process per role');
  cluster
    .command('up')
    .description('start nats-server and redis-server (unless given), a verifier actor (with --colocate: a verifier inside each coordinator), draft actors, coordinators and the gateway, with authentication on; print the gateway URL')
    .option('--models <dir>', 'model family directory', 'models')
    .option('--model <dir|name>', MODEL_HELP)
    .option('--draft-model <dir|name>', `${DRAFT_MODEL_HELP}; each gets its own draft actor(s)`, collect)
    .option('--model-file <name>', MODEL_FILE_HELP)
    .option('--tokenizer <file>', TOKENIZER_HELP)
    .option('--state-dir <dir>', 'where the process list and logs go', '.cascade-cluster')
    .option('--port <port>', 'gateway port (default: a free one)', parsePort('--port', 1))
    .option('--nats <url>', 'use this NATS instead of starting one')
    .option('--redis <url>', 'use this Redis instead of starting one')
    .option('--draft-instances <n>', 'actor processes per drafter', parseNumber('--draft-instances', { min: 1, integer: true }), 1)
    .option('--verify-instances <n>', 'verify actor processes, each loading the target (not with --colocate, where each coordinator hosts one): sessions spread over them, and one that is lost has its sessions placed again on another (default 1)', parseNumber('--verify-instances', { min: 1, integer: true }))
    .option('--coordinators <n>', 'coordinator processes', parseNumber('--coordinators', { min: 1, integer: true }), 1)
    .option('--api-key <key>', 'the gateway\'s bearer key (default: generated)', oneApiKey)
    .option('--insecure', 'no authentication anywhere (NATS, Redis, the API): for trying things on a laptop')
    .option('--threads <n>', 'ONNX Runtime threads of the verifier', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--colocate', 'each coordinator hosts its own verify actor (cascade coordinator --verifier) instead of one verify actor process: verification without a network round trip')
    .option('--execution-providers <list>', `the verifier's execution providers (cascade actor verify --execution-providers; with --colocate, each coordinator's): ${EXECUTION_PROVIDERS.join(', ')}, or auto (default cpu)`, parseExecutionProviders('--execution-providers'))
    .option('--kv-location <where>', `where the verifier's KV caches live between passes (cascade actor verify --kv-location; with --colocate, each coordinator's): ${KV_LOCATIONS.join(' | ')} (default auto)`, parseKvLocation)
    .option('--batch-invariant <mode>', `the verifier's (cascade actor verify --batch-invariant; with --colocate, each coordinator's): ${BATCH_INVARIANT_HELP} (default auto)`, parseBatchInvariant)
    .option('--multi-step-ms <ms>', `the verifier's (cascade actor verify --multi-step-ms; with --colocate, each coordinator's): ${MULTI_STEP_HELP} (default ${DEFAULT_BATCHING.multiStepMs})`, parseNumber('--multi-step-ms', { min: 0 }))
    .option('--actor-silence-ms <ms>', `the coordinators' (cascade coordinator --actor-silence-ms): give up a call to an actor that sent no heartbeat for this long, and place its session again (0 = the call timeout alone; default ${ACTOR_SILENCE_MS})`, parseActorSilence)
    .option('--verification <rule>', `${VERIFICATION_HELP} (the gateway's default for requests whose cascade field names none; actors follow each request's)`, parseVerificationFlag, DEFAULT_VERIFICATION)
    .option('--drafting <mode>', `${DRAFTING_HELP} (the gateway's default for requests whose cascade field names none; the coordinators follow each request's)`, parseDraftingFlag, DEFAULT_DRAFTING)
    .option('--outcome-branches', `${OUTCOME_BRANCHES_HELP} (the gateway's default for async requests whose cascade field does not say)`)
    .option('--self-draft <width>', `${SELF_DRAFT_HELP}; it gets --draft-instances draft actors of its own, and the coordinators and the gateway name it first`, parseSelfDraft)
    .option('--self-draft-cache <dir>', SELF_DRAFT_CACHE_HELP, SELF_DRAFT_CACHE)
    .action((o: UpOptions) => clusterUp(o));
  cluster
    .command('secrets')
    .description('print newly generated credentials as KEY=value lines: the .env file of deploy/compose.yaml')
    .option('--api-key <key>', 'the gateway\'s bearer key (default: generated)', oneApiKey)
    .action((o: { apiKey?: string }) => {
      const s = generateSecrets(o.apiKey);
      const lines = [`CASCADE_API_KEY=${s.apiKey}`, ...ROLES.map((role) => `${natsPasswordVar(role)}=${s.nats[role]}`), `CASCADE_REDIS_PASSWORD=${s.redis.password}`];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
  cluster
    .command('down')
    .description('stop the processes `cluster up` started')
    .option('--state-dir <dir>', 'the directory given to `cluster up`', '.cascade-cluster')
    .action((o: { stateDir: string }) => clusterDown(o.stateDir));
}
