import type { KvLocation } from '../models/kv-placement.ts';
import type { Verification } from '../kernels/noise.ts';
import type { Drafting } from '../engine/async-cascade.ts';
import { smallestContext } from '../engine/cascade.ts';
import { BatchingSession, type BatchingOptions } from '../models/batching-session.ts';
import { ModelActor } from '../actors/model-actor.ts';
import { checkKvPolicy, type KvPolicyConfig } from '../engine/bounded-kv.ts';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { logLine } from './log.ts';
import { checkBudget, type KvPolicyName } from '../kernels/kv-policy.ts';
import { loadMagTables, loadController, loadFamily, memberDir, memberSource, type Family } from '../models/family.ts';
import { isFamilyMember, resolveModels } from '../models/model-choice.ts';
import { checkSharedVocabulary } from '../models/vocabulary.ts';
import { loadModelSpec, speculationCaveat, type ModelSpec } from '../models/config.ts';
import { checkFeatureDrafter } from '../engine/eagle-level.ts';
import type { BatchInvariance, SessionOptions } from '../models/session.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { describeTrial, draftProvidersBeside, isAuto, placeByCost } from '../models/placement.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { namingSelfDraft, SELF_DRAFT_CACHE, selfDraftCopy, withSelfDraft, type SelfDraft } from '../cli/quantize.ts';
import { Coordinator, openQueue, startCoordinatorWorker } from './coordinator.ts';
import { buildGateway } from './gateway/index.ts';
import { embeddedBackend } from './gateway/embedded.ts';
import { FamilySessions } from '../models/family-sessions.ts';
import type { ModelSession } from '../models/session.ts';
import type { FastifyInstance } from 'fastify';
import { processRegistry, startHealthServer, within, type HealthServer } from './health.ts';
import { ACTOR_SILENCE_MS, ActorLiveness } from './liveness.ts';
import { actorCallsFailedCounter, actorRoundTripHistogram, failedAttemptsCounter, GatewayMetrics, logAppendHistogram } from './metrics.ts';
import { NatsTransport } from './nats-transport.ts';
import { RedisConnection } from './redis-connection.ts';
import { RedisKvStore, TokenLog } from './redis-store.ts';
import { setupTracing, shutdownTracing } from './tracing.ts';
import { LocalServingTransport, type Transport } from './transport.ts';

/** A running role of the cluster; `stop` ends it gracefully. */
export interface Role {
  readonly describe: string;
  /** What the role's /health reports (an actor's: its model, provider, sessions and load), for a process that hosts it. */
  readonly status?: () => Record<string, unknown>;
  stop(): Promise<void>;
}

export interface ActorRoleOptions {
  readonly kind: 'draft' | 'verify';
  readonly models: string;
  /**
   * The model hosted: a family member (the target for verify, the largest drafter for draft, by
   * default) or a model folder (a user's export), served under the folder's name.
   */
  readonly model?: string;
  /** The graph inside the model's folder, when it holds several (`--model-file`). */
  readonly modelFile?: string;
  /** tokenizer.json for a folder that carries none (`--tokenizer`). */
  readonly tokenizer?: string;
  /**
   * Draft actors: host the own quantized copy of `model` (default: the family's target) instead
   * (`--self-draft`, cascade quantize's defaults with the head quantized, made once into
   * selfDraftCache, default SELF_DRAFT_CACHE), served as `<target>-<width>`.
   */
  readonly selfDraft?: SelfDraft;
  readonly selfDraftCache?: string;
  readonly nats: string;
  readonly instance?: string;
  readonly idleMs?: number;
  readonly threads?: number;
  readonly executionProviders?: readonly string[];
  /** Where the sessions' KV lives (kv-placement.ts; auto: on the device of a GPU EP). */
  readonly kvLocation?: KvLocation;
  /** Whether one-token passes run as two rows (SessionOptions.batchInvariant; default auto for a verify actor, off for a draft actor): a verify actor's keeps speculation over a quantized target exact. */
  readonly batchInvariant?: BatchInvariance;
  /** A bounded KV cache for every session (draft actors only: on the target it would be lossy). */
  readonly kv?: { readonly policy: KvPolicyName; readonly budget: number; readonly sinks: number; readonly recent: number; readonly rebuild?: number; readonly releaseBatch?: number; readonly prefillChunk?: number };
  /** Redis for released KV (with a bounded cache that rebuilds): one URL, or a Redis Cluster's `redis+cluster://` seeds; in memory without. */
  readonly redis?: readonly string[];
  /** Serve /live, /health and /metrics on this port (Kubernetes probes, Prometheus). */
  readonly healthPort?: number;
  /** Batched passes over the sessions' forwards (maxBatch 1 = off). */
  readonly batching?: BatchingOptions;
  /**
   * Serve over this transport instead of connecting to NATS: the process hosting the actor (a
   * coordinator with `--verifier`) owns it, and its tracing; the role neither flushes nor closes them.
   */
  readonly transport?: Transport;
}

/** Resolves when Redis (every master of a Redis Cluster) and NATS answer (within 1.5 s each); rejects naming the one that does not. */
async function pingServers(redis: RedisConnection, transport: NatsTransport): Promise<void> {
  await within(1500, 'Redis', redis.ping());
  await within(1500, 'NATS', transport.flush());
}

/** The probe endpoints on `port`, when one is given (metrics from `registry`, default the process's). */
async function probes(port: number | undefined, role: string, check: () => Promise<Record<string, unknown>>, registry = processRegistry(role)): Promise<HealthServer | undefined> {
  // CASCADE_HEALTH_HOST: the address it listens on (default every interface, as a pod's probes need; cluster up keeps it on loopback)
  return port === undefined ? undefined : startHealthServer({ port, check, registry, ...(process.env.CASCADE_HEALTH_HOST ? { host: process.env.CASCADE_HEALTH_HOST } : {}) });
}

/** What a cluster gateway says while no coordinator takes requests from its queue. */
const NO_COORDINATOR = 'no coordinator takes requests from the queue yet: requests wait there until one starts (cascade coordinator, or cluster up)';
/** What a cluster gateway says while it hears no verify actor of the target (ActorLiveness). */
const noVerifier = (target: string, silenceMs: number) =>
  `no verify actor of ${target} has sent a heartbeat in the last ${silenceMs / 1000} s: a request's attempts fail until one starts (cascade actor verify, or a coordinator's --verifier), and BullMQ retries them with backoff`;

/** `cascade actor draft|verify`: one model, serving sessions over NATS. */
export async function startActorRole(o: ActorRoleOptions): Promise<Role> {
  if (o.selfDraft) {
    // the copy is a folder of its own, hosted as an export is: under its folder's name, <target>-<width>, which coordinators and gateways with the same --self-draft name first
    if (o.kind !== 'draft') throw new InvalidArgumentError('--self-draft is for a draft actor: the copy drafts and the target verifies');
    const target = resolveModels({ models: o.models, model: o.model, modelFile: o.modelFile, tokenizer: o.tokenizer });
    const { dir } = await selfDraftCopy(target, o.selfDraft, o.selfDraftCache ?? SELF_DRAFT_CACHE, quantizeLog);
    return startActorRole({ ...o, selfDraft: undefined, model: dir, modelFile: undefined });
  }
  const exported = o.model !== undefined && !isFamilyMember(o.models, o.model);
  // a user's export is hosted as it is named; a family member must play its part in the family
  const family: Family = exported ? resolveModels({ models: o.models, model: o.model, modelFile: o.modelFile, tokenizer: o.tokenizer }) : loadFamily(o.models);
  const name = exported ? family.target : (o.model ?? (o.kind === 'verify' ? family.target : family.drafters[0]));
  if (!name) throw new CascadeError(`the family in ${family.dir} has no drafter to serve`);
  const isTarget = exported ? o.kind === 'verify' : name === family.target;
  if (!exported && o.kind === 'verify' && !isTarget) throw new CascadeError(`a verify actor hosts the target (${family.target}), not ${name}`);
  if (!exported && o.kind === 'draft' && !family.drafters.includes(name)) throw new CascadeError(`${name} is not a drafter of this family (${family.drafters.join(', ')})`);
  let kv: KvPolicyConfig | undefined;
  let shards: RedisConnection | undefined;
  if (o.kv && o.kv.policy !== 'full') {
    if (o.kind === 'verify') throw new InvalidArgumentError('a bounded KV cache on the verifier would make the output lossy: bound the drafters (cascade actor draft --kv-policy …)');
    const rebuild = o.kv.rebuild ?? (o.kv.policy === 'adore' ? 2 : 0);
    shards = o.redis?.length && rebuild > 0 ? new RedisConnection(o.redis, { name: `actor-${name}` }) : undefined;
    kv = {
      policy: o.kv.policy,
      budget: { budget: o.kv.budget, sinks: o.kv.sinks, recent: o.kv.recent, rebuild },
      controller: o.kv.policy === 'adore' ? loadController(family) : undefined,
      store: shards ? new RedisKvStore(shards) : undefined,
      releaseBatch: o.kv.releaseBatch,
      prefillChunk: o.kv.prefillChunk,
    };
    checkKvPolicy(kv);
    checkBudget(kv.budget);
  }
  const hosted = o.transport !== undefined;
  if (!hosted) setupTracing(`cascade-actor-${name}`);
  const source = exported ? memberSource(family, name) : { dir: memberDir(family, name), ...(o.modelFile !== undefined ? { modelFile: o.modelFile } : {}), ...(o.tokenizer !== undefined ? { tokenizer: o.tokenizer } : {}) };
  // a draft actor's drafts are reviewed, so it never pads its passes unless asked
  const options = { intraOpThreads: o.threads ?? 1, kvLocation: o.kvLocation, batchInvariant: o.batchInvariant ?? (isTarget ? 'auto' : 'off') };
  // auto: the actor measures its model's pass (verify for the target, decode for a drafter) on each placement and keeps the cheapest
  const model = isAuto(o.executionProviders)
    ? (await placeByCost((executionProviders) => OrtModelSession.open(source, { ...options, executionProviders, cpuFallback: false }, () => undefined), isTarget ? 'target' : 'draft', undefined, (t) =>
        process.stderr.write(`${describeTrial(name, t)}\n`),
      )).session
    : await OrtModelSession.open(source, { ...options, executionProviders: o.executionProviders, cpuFallback: true });
  const caveat = isTarget ? speculationCaveat(model.spec, model) : undefined;
  if (caveat) process.stderr.write(`warning: ${caveat}\n`);
  // a graph without position_ids cannot run several sequences in one pass (ort-worker.ts)
  const session = new BatchingSession(model, model.positionIds ? o.batching : { ...o.batching, maxBatch: 1 });
  let transport: Transport;
  let featureDrafter: OrtModelSession | undefined;
  try {
    // the family's feature drafter runs beside its target, where the target's hidden_states are (docs/eagle.md)
    if (!exported && isTarget && family.eagle) featureDrafter = await openFeatureDrafter(family, model.spec, { intraOpThreads: o.threads ?? 1, executionProviders: isAuto(o.executionProviders) ? undefined : o.executionProviders, cpuFallback: true });
    transport = o.transport ?? (await NatsTransport.connect({ servers: o.nats, name: `actor-${name}` }));
  } catch (err) {
    await session.close();
    await featureDrafter?.close();
    throw err;
  }
  const actor = new ModelActor(transport, session, { instance: o.instance, idleMs: o.idleMs, kv, target: isTarget, featureDrafter, local: hosted }).start();
  if (!hosted) await (transport as NatsTransport).flush();
  const status = () => ({ model: actor.model, instance: actor.instance, provider: session.provider, kvLocation: model.kvLocation, batchInvariant: model.batchInvariant, ...(model.paddedAttention ? { paddedAttention: true } : {}), sessions: actor.activeSessions, load: session.load(), batching: session.counters });
  const health = await probes(o.healthPort, `${o.kind}-actor`, async () => {
    await within(1500, 'NATS', (transport as NatsTransport).flush());
    return status();
  });
  return {
    status,
    describe: `${o.kind} actor ${actor.model}/${actor.instance}${featureDrafter ? ` with feature drafter ${featureDrafter.spec.name}` : ''} (${session.provider}, KV ${model.kvLocation === 'host-buffer' ? 'in a host buffer' : `on the ${model.kvLocation}`}${model.batchInvariant ? ', batch-invariant' : ''}${kv ? `, KV ${kv.policy} ${kv.budget.budget}${shards ? ' spilling to Redis' : ''}` : ''})${health ? `, health on ${health.url}` : ''}`,
    stop: async () => {
      await health?.close();
      await actor.stop();
      if (!hosted) await transport.close();
      await session.close();
      await featureDrafter?.close();
      await shards?.close();
      if (!hosted) await shutdownTracing();
    },
  };
}

/**
 * The family's feature drafter (family.json `eagle`), opened beside `target`, or undefined with a
 * warning when it does not fit that target (a graph without hidden_states, another width or
 * vocabulary: checkFeatureDrafter): the server then serves without it, and requests naming it are
 * refused (embedded) or drop it (a cluster).
 */
async function openFeatureDrafter(family: Family, target: ModelSpec, options: SessionOptions): Promise<OrtModelSession | undefined> {
  const session = await OrtModelSession.open(memberDir(family, family.eagle!), { ...options, batchInvariant: 'off' });
  try {
    checkFeatureDrafter(target, session.spec);
    return session;
  } catch (err) {
    await session.close();
    if (!(err instanceof InvalidArgumentError)) throw err;
    process.stderr.write(`warning: the family's feature drafter ${family.eagle} is not served: ${err.message}\n`);
    return undefined;
  }
}

/** The models a coordinator or gateway drives: `--model` / `--draft-model` as `cascade generate` takes them (model-choice.ts). */
export interface ModelFlags {
  readonly models: string;
  readonly model?: string;
  readonly draftModel?: readonly string[];
  readonly modelFile?: string;
  readonly tokenizer?: string;
  /**
   * The target's own quantized copy as the first drafter (`--self-draft`): made once into
   * selfDraftCache (default SELF_DRAFT_CACHE) by a role that loads the models (the embedded gateway),
   * only named by the others (a draft actor started with the same flag hosts it).
   */
  readonly selfDraft?: SelfDraft;
  readonly selfDraftCache?: string;
}

/** Progress of a --self-draft copy being made (cascade quantize's lines), on stderr: stdout carries `ready: …`. */
const quantizeLog = (m: string) => process.stderr.write(`${m}\n`);

/**
 * The family `o` names, with the target's own copy first among the drafters under --self-draft:
 * made (when not cached yet) where the models load (`load`, the embedded gateway), only named where
 * they run on actors (namingSelfDraft: a coordinator, a cluster's gateway).
 */
async function chosenModels(o: ModelFlags, load = false): Promise<Family> {
  const family = resolveModels({ models: o.models, model: o.model, draftModels: o.draftModel, modelFile: o.modelFile, tokenizer: o.tokenizer });
  if (!o.selfDraft) return family;
  return load ? withSelfDraft(family, o.selfDraft, o.selfDraftCache ?? SELF_DRAFT_CACHE, quantizeLog) : namingSelfDraft(family, o.selfDraft);
}

export interface CoordinatorRoleOptions extends ModelFlags {
  readonly models: string;
  readonly nats: string;
  /** Redis: one URL, or a Redis Cluster's `redis+cluster://host:port,…` seeds (redis-connection.ts); holds the queue and the request logs. */
  readonly redis: readonly string[];
  readonly concurrency?: number;
  readonly lockMs?: number;
  readonly callTimeoutMs?: number;
  /** Give up a call to an actor instance that sent no heartbeat for this long, ms, before `callTimeoutMs` (ActorLiveness); 0 = the timeout alone. Default ACTOR_SILENCE_MS. */
  readonly actorSilenceMs?: number;
  readonly healthPort?: number;
  /**
   * Host the target's verify actor in this process (`--verifier`): the requests this coordinator
   * drives verify there without a network round trip; the drafters stay remote. Its ONNX Runtime
   * settings as an actor's.
   */
  readonly verifier?: Pick<ActorRoleOptions, 'threads' | 'executionProviders' | 'kvLocation' | 'batchInvariant' | 'batching'>;
}

/** `cascade coordinator`: a BullMQ worker driving requests across actors (and, with `verifier`, verifying them itself). */
export async function startCoordinatorRole(o: CoordinatorRoleOptions): Promise<Role> {
  const family = await chosenModels(o);
  const spec = loadModelSpec(memberSource(family, family.target));
  const drafterSpecs = family.drafters.map((d) => loadModelSpec(memberSource(family, d)));
  checkSharedVocabulary(spec, drafterSpecs);
  // the feature drafter's context bounds a request that drafts with it (its vocabulary is the target's, through draft_vocab)
  const eagleSpec = family.eagle ? loadModelSpec(memberSource(family, family.eagle)) : undefined;
  setupTracing('cascade-coordinator');
  const nats = await NatsTransport.connect({ servers: o.nats, name: 'coordinator' });
  const shards = await RedisConnection.open(o.redis, { name: 'coordinator' }).catch(async (err: unknown) => {
    await nats.close();
    throw err;
  });
  const local = o.verifier ? new LocalServingTransport(nats) : undefined;
  const transport: Transport = local ?? nats;
  const verifier = o.verifier
    ? await startActorRole({ kind: 'verify', models: o.models, model: o.model, modelFile: o.modelFile, tokenizer: o.tokenizer, nats: o.nats, ...o.verifier, transport }).catch(async (err: unknown) => {
        await nats.close();
        await shards.close();
        throw err;
      })
    : undefined;
  const silenceMs = o.actorSilenceMs ?? ACTOR_SILENCE_MS;
  // heard even with --actor-silence-ms 0: sessions are placed on the instances heard (RemoteLevel.pick)
  const liveness = new ActorLiveness(transport, silenceMs);
  let worker: ReturnType<typeof startCoordinatorWorker> | undefined;
  let health: HealthServer | undefined;
  const stop = async () => {
    await health?.close();
    await worker?.close();
    await liveness.close();
    await verifier?.stop();
    await local?.close();
    await nats.close();
    await shards.close();
    await shutdownTracing();
  };
  try {
    const registry = processRegistry('coordinator');
    const roundTrip = actorRoundTripHistogram(registry);
    const logAppend = logAppendHistogram(registry);
    const failedAttempts = failedAttemptsCounter(registry);
    const failedCalls = actorCallsFailedCounter(registry);
    const coordinator = new Coordinator({
      transport,
      log: new TokenLog(shards),
      family: { target: family.target, eosIds: spec.eosIds, magTables: loadMagTables(family, spec.vocabSize), maxPositions: smallestContext([spec, ...drafterSpecs, ...(eagleSpec ? [eagleSpec] : [])]), ...(family.eagle ? { eagle: family.eagle } : {}) },
      callTimeoutMs: o.callTimeoutMs,
      liveness,
      onRoundTrip: (kind, ms) => roundTrip.observe({ kind }, ms / 1000),
      onCallFailed: (kind, reason) => failedCalls.inc({ kind, reason }),
      onLogAppend: (ms) => logAppend.observe(ms / 1000),
      onEvent: logLine,
    });
    const started = startCoordinatorWorker(coordinator, { redis: shards.deployment, concurrency: o.concurrency, lockDurationMs: o.lockMs, onAttemptFailed: (error, final) => failedAttempts.inc({ error, final: String(final) }) });
    worker = started;
    await started.waitUntilReady();
    health = await probes(o.healthPort, 'coordinator', async () => {
      await pingServers(shards, nats);
      return { concurrency: o.concurrency ?? 8, running: started.isRunning(), ...(verifier?.status ? { verifier: verifier.status() } : {}) };
    }, registry);
  } catch (err) {
    // a coordinator that cannot start leaves nothing open: its verifier's model, the connections
    await stop().catch(() => undefined);
    throw err;
  }
  return { describe: `coordinator (concurrency ${o.concurrency ?? 8})${verifier ? ` with its own ${verifier.describe}` : ''}${health ? `, health on ${health.url}` : ''}`, stop };
}

export interface GatewayRoleOptions extends ModelFlags {
  readonly models: string;
  readonly nats: string;
  readonly redis: readonly string[];
  readonly host?: string;
  readonly port?: number;
  readonly apiKeys?: readonly string[];
  readonly maxInFlight?: number;
  readonly requestTimeoutMs?: number;
  /** Verification of requests whose `cascade` field names none (`--verification`). */
  readonly verification?: Verification;
  /** Drafting of requests whose `cascade` field names none (`--drafting`). */
  readonly drafting?: Drafting;
  /** Outcome branches for async requests whose `cascade` field does not say (`--outcome-branches`). */
  readonly outcomeBranches?: boolean;
}

export interface EmbeddedGatewayOptions extends ModelFlags {
  readonly host?: string;
  readonly port?: number;
  readonly apiKeys?: readonly string[];
  readonly maxInFlight?: number;
  readonly requestTimeoutMs?: number;
  /** Verification of requests whose `cascade` field names none (`--verification`). */
  readonly verification?: Verification;
  /** Drafting of requests whose `cascade` field names none (`--drafting`). */
  readonly drafting?: Drafting;
  /** Outcome branches for async requests whose `cascade` field does not say (`--outcome-branches`). */
  readonly outcomeBranches?: boolean;
  readonly threads?: number;
  /** The target's execution providers (default cpu; `auto` places it by measured cost). */
  readonly executionProviders?: readonly string[];
  /** The drafters' (default: auto beside a target off the CPU, else cpu). */
  readonly draftExecutionProviders?: readonly string[];
  /** Where the target's KV cache lives between passes (`--kv-location`; drafters are always auto). */
  readonly kvLocation?: KvLocation;
  /** The target's batch invariance (`--batch-invariant`, SessionOptions.batchInvariant; drafters: off). */
  readonly batchInvariant?: BatchInvariance;
}

/**
 * The OpenAI gateway over the engine in this process (the models load here; no NATS, Redis,
 * coordinator or actors), not listening yet: `cascade serve --embedded` listens on it, `cascade
 * run-batch` injects requests into it. Concurrent requests' forwards batch (BatchingSession) as on
 * an actor.
 */
export async function openEmbeddedGateway(o: EmbeddedGatewayOptions): Promise<{ app: FastifyInstance; describe: string; close(): Promise<void> }> {
  const family = await chosenModels(o, true);
  setupTracing('cascade-gateway');
  const target = family.target;
  const targetEps = o.executionProviders ?? ['cpu'];
  const draftEps = o.draftExecutionProviders ?? draftProvidersBeside(targetEps);
  const sessions = new FamilySessions(family, (name) => ({ intraOpThreads: o.threads ?? 1, executionProviders: name === target ? targetEps : draftEps, kvLocation: name === target ? (o.kvLocation ?? 'auto') : 'auto', batchInvariant: name === target ? (o.batchInvariant ?? 'auto') : undefined }), (name, t) =>
    process.stderr.write(`${describeTrial(name, t)}\n`),
  );
  try {
    const models = await sessions.cascadeModels();
    const eagleSession = family.eagle ? await openFeatureDrafter(family, models.target.spec, { intraOpThreads: o.threads ?? 1, executionProviders: draftEps }) : undefined;
    const eagle = eagleSession ? { name: family.eagle!, session: eagleSession } : undefined;
    const caveat = speculationCaveat(models.target.spec, models.target);
    if (caveat) process.stderr.write(`warning: ${caveat}\n`);
    // a graph without position_ids cannot run several sequences in one pass (ort-worker.ts)
    const batched = (m: ModelSession) => new BatchingSession(m, (m as OrtModelSession).positionIds === false ? { maxBatch: 1 } : {});
    const spec = models.target.spec;
    const app = buildGateway({
      backend: embeddedBackend({ target: batched(models.target), drafters: new Map([...models.drafters].map(([n, m]) => [n, batched(m)])), eagle, magTables: models.magTables }, { timeoutMs: o.requestTimeoutMs ?? 600_000 }),
      tokenizer: TextTokenizer.forModel(spec),
      metrics: new GatewayMetrics(),
      model: {
        target,
        drafters: family.drafters,
        ...(eagle ? { eagle: eagle.name } : {}),
        maxPositions: smallestContext([spec, ...[...models.drafters.values(), ...(eagle ? [eagle.session] : [])].map((d) => d.spec)]),
        generation: spec.generation,
        vocabSize: spec.vocabSize,
        vocabSizes: Object.fromEntries([[target, spec.vocabSize], ...[...models.drafters].map(([n, m]) => [n, m.spec.vocabSize])]),
      },
      apiKeys: o.apiKeys,
      maxInFlight: o.maxInFlight,
      requestTimeoutMs: o.requestTimeoutMs,
      defaultVerification: o.verification,
      defaultDrafting: o.drafting,
      defaultOutcomeBranches: o.outcomeBranches,
      // the target's KV location and batch invariance, as a verify actor's /health reports them
      health: async () => ({ engine: 'embedded', placement: Object.fromEntries(sessions.placements), kvLocation: (models.target as OrtModelSession).kvLocation, batchInvariant: models.target.batchInvariant ?? false, ...(models.target.paddedAttention ? { paddedAttention: true } : {}) }),
    });
    return {
      app,
      describe: `${target}${family.drafters.length ? ` <- ${family.drafters.join(', ')}, mag` : ''}${eagle ? `; feature drafter ${eagle.name}` : ''}`,
      close: async () => {
        await app.close();
        await sessions.close();
        await eagleSession?.close();
        await shutdownTracing();
      },
    };
  } catch (err) {
    await sessions.close();
    throw err;
  }
}

/** `cascade serve --embedded`: openEmbeddedGateway, listening. Resolves once listening. */
export async function startEmbeddedGatewayRole(o: EmbeddedGatewayOptions): Promise<Role & { url: string }> {
  const gateway = await openEmbeddedGateway(o);
  try {
    const address = await gateway.app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 8000 });
    return { url: address, describe: `embedded gateway on ${address}, OpenAI base URL ${address}/v1 (${gateway.describe})`, stop: () => gateway.close() };
  } catch (err) {
    await gateway.close();
    throw err;
  }
}

/** `cascade serve`: the OpenAI-compatible gateway. Resolves once listening. */
export async function startGatewayRole(o: GatewayRoleOptions): Promise<Role & { url: string }> {
  const family = await chosenModels(o);
  const spec = loadModelSpec(memberSource(family, family.target));
  setupTracing('cascade-gateway');
  const tokenizer = TextTokenizer.forModel(spec);
  const transport = await NatsTransport.connect({ servers: o.nats, name: 'gateway' });
  const shards = await RedisConnection.open(o.redis, { name: 'gateway' }).catch(async (err: unknown) => {
    await transport.close();
    throw err;
  });
  const queue = openQueue(shards.deployment);
  const liveness = new ActorLiveness(transport);
  const app = buildGateway({
    transport,
    queue,
    log: new TokenLog(shards),
    tokenizer,
    metrics: new GatewayMetrics(),
    model: {
      target: family.target,
      drafters: family.drafters,
      ...(family.eagle ? { eagle: family.eagle } : {}),
      maxPositions: spec.maxPositions,
      generation: spec.generation,
      vocabSize: spec.vocabSize,
      vocabSizes: Object.fromEntries([family.target, ...family.drafters].map((name) => [name, name === family.target ? spec.vocabSize : loadModelSpec(memberSource(family, name)).vocabSize])),
    },
    apiKeys: o.apiKeys,
    maxInFlight: o.maxInFlight,
    requestTimeoutMs: o.requestTimeoutMs,
    defaultVerification: o.verification,
    defaultDrafting: o.drafting,
    defaultOutcomeBranches: o.outcomeBranches,
    health: async () => {
      await pingServers(shards, transport);
      const workers = (await queue.getWorkers()).length;
      const actors = liveness.live();
      // still ready without a coordinator or a verify actor (200): requests wait in the queue for a coordinator, as they do
      // through its restart, and a probe that failed here would take every gateway out of service while the others start
      const warnings = [...(workers ? [] : [NO_COORDINATOR]), ...(actors[family.target] ? [] : [noVerifier(family.target, liveness.silenceMs)])];
      return { nats: 'ok', redis: 'ok', workers, actors, ...(warnings.length ? { warning: warnings.join('; ') } : {}) };
    },
  });
  const address = await app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 8000 });
  const workers = (await queue.getWorkers()).length;
  return {
    url: address,
    describe: `gateway on ${address}, OpenAI base URL ${address}/v1${workers ? '' : ` (warning: ${NO_COORDINATOR})`}`,
    stop: async () => {
      await app.close();
      await liveness.close();
      await queue.close();
      await transport.close();
      await shards.close();
      await shutdownTracing();
    },
  };
}
