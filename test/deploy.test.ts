import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { Ajv } from 'ajv';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap, Pod, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { freePort } from '../src/cluster/local-servers.ts';
import { NatsTransport } from '../src/cluster/nats-transport.ts';
import { NATS_SERVER_PINGS, natsAuthorizationForHelm, natsConfig, natsPasswordVar, ROLES } from '../src/cluster/security.ts';
import { helmBinary } from './helpers/helm.ts';
import { CLI } from './helpers/cli.ts';

/**
 * The container image, the compose example and the Helm chart (deploy/, helm/). Verified here with
 * real tools: Helm 4 lints and renders the chart (with its NATS and Valkey dependency charts), ajv
 * checks values against values.schema.json, kubernetes-models checks every rendered object against
 * the Kubernetes API schemas, and nats-server runs the NATS configuration the chart renders. Not
 * verified here (no Docker engine, no Kubernetes cluster): building the image, scheduling pods.
 */
const run = promisify(execFile);
const ROOT = new URL('..', import.meta.url).pathname;
const CHART = join(ROOT, 'helm', 'cascade');
const EXAMPLES = readdirSync(join(ROOT, 'helm', 'examples')).filter((f) => f.endsWith('.yaml')).map((f) => join(ROOT, 'helm', 'examples', f));
const values = parse(readFileSync(join(CHART, 'values.yaml'), 'utf8'));
const schema = JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8'));
const validateValues = new Ajv({ allErrors: true, strict: false }).compile(schema);

type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; annotations?: Record<string, string> }; spec?: any; data?: Record<string, string> };

let helm: string;
test.before(async () => {
  helm = await helmBinary();
});

async function render(...args: string[]): Promise<K8sObject[]> {
  const { stdout } = await run(helm, ['template', 'rel', CHART, ...args], { maxBuffer: 16 << 20 });
  return parseAllDocuments(stdout)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => Boolean(o));
}

/** Helm's coalescing of an override file over values.yaml: maps merge, everything else replaces. */
function coalesce(base: any, over: any): any {
  if (over === null || typeof over !== 'object' || Array.isArray(over) || base === null || typeof base !== 'object' || Array.isArray(base)) return over;
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = k in base ? coalesce(base[k], v) : v;
  return out;
}

const MODELS = { ConfigMap, Pod, Secret, Service, ServiceAccount, Deployment, StatefulSet, PodDisruptionBudget } as const;

test('deploy - values.yaml and every example override satisfy values.schema.json; unknown keys and bad values are refused', (t) => {
  t.true(validateValues(values), JSON.stringify(validateValues.errors));
  for (const file of EXAMPLES) {
    const merged = coalesce(values, parse(readFileSync(file, 'utf8')));
    t.true(validateValues(merged), `${file}: ${JSON.stringify(validateValues.errors)}`);
  }
  const bad = (override: object) => !validateValues(coalesce(values, override));
  t.true(bad({ gateway: { replica: 2 } }), 'a misspelt key is refused: the schema covers every value');
  t.true(bad({ verifier: { gpus: -1 } }));
  t.true(bad({ image: { pullPolicy: 'Sometimes' } }));
  t.true(bad({ drafters: [{ ...values.drafters[0], kv: { ...values.drafters[0].kv, policy: 'lru' } }] }));
  t.true(bad({ coordinator: { resources: { requests: { cpu: 'lots' } } } }));
  t.true(bad({ external: { natsUrl: 'nats://user:secret@host:4222' } }), 'credentials never go into values');
});

test('deploy - helm lint passes, and helm refuses bad values with a clear message', async (t) => {
  await run(helm, ['lint', '--strict', CHART]);
  for (const file of EXAMPLES) await run(helm, ['lint', '--strict', CHART, '-f', file]);
  const refused = async (args: string[], message: RegExp) => {
    const err = await t.throwsAsync(run(helm, ['template', 'rel', CHART, ...args]));
    t.regex((err as Error & { stderr: string }).stderr, message);
  };
  await refused(['--set', 'verifier.gpus=-1'], /verifier/);
  await refused(['--set', 'auth.enabled=false'], /auth.enabled=false works only with external NATS and Redis/);
  await refused(['--set', 'nats.enabled=false'], /external.natsUrl is required/);
  await refused(['--set', 'valkey.enabled=false', '--set', 'external.natsUrl=nats://n:4222', '--set', 'external.redisUrls={redis://a:6379,redis://b:6379}'], /external.redisUrls holds 2 URLs: set external.redisCluster=true/);
  await refused(['--set', 'drafters[0].model=draft-l2,drafters[0].kv.policy=adore,drafters[0].kv.budget=0,drafters[0].kv.sinks=4,drafters[0].kv.recent=0,drafters[0].kv.rebuild=2,drafters[0].threads=1,drafters[0].gpus=0,drafters[0].executionProviders[0]=cpu,drafters[0].replicas=1,drafters[0].podDisruptionBudget.enabled=false,drafters[0].resources.requests.cpu=1'], /kv.policy adore needs kv.budget >= 1/);
});

test('deploy - every rendered object (default values and examples) is valid against the Kubernetes API schemas', async (t) => {
  for (const args of [[], ...EXAMPLES.map((f) => ['-f', f])]) {
    const objects = await render(...args);
    t.true(objects.length > 5);
    for (const o of objects) {
      const Model = MODELS[o.kind as keyof typeof MODELS];
      if (!Model) {
        t.fail(`${o.kind} ${o.metadata.name}: no schema checked (add its model to the test)`);
        continue;
      }
      t.notThrows(() => new (Model as any)(o).validate(), `${args.join(' ') || 'default values'}: ${o.kind} ${o.metadata.name}`);
    }
  }
});

/** `cascade <command> --help`, for checking that the flags the deployment passes exist. */
const helpOf = async (command: string[]) => (await run(process.execPath, [...CLI, ...command, '--help'], { cwd: ROOT })).stdout;

test('deploy - each role is its own Deployment, secured, probed, scraped and budgeted, and wired to the bundled NATS and Valkey', async (t) => {
  const objects = await render('-f', join(ROOT, 'helm', 'examples', 'values-gpu.yaml'));
  const deployments = objects.filter((o) => o.kind === 'Deployment' && o.metadata.name.startsWith('rel-cascade-'));
  t.deepEqual(deployments.map((d) => d.metadata.name).sort(), ['rel-cascade-coordinator', 'rel-cascade-draft-l1', 'rel-cascade-draft-l2', 'rel-cascade-gateway', 'rel-cascade-verifier']);
  const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === 'cascade-auth')!;
  t.truthy(secret, 'the chart generates the credentials');
  t.deepEqual(Object.keys(secret.data!).sort(), ['api-keys', 'nats-actor-password', 'nats-coordinator-password', 'nats-gateway-password', 'redis-password']);
  const services = new Set(objects.filter((o) => o.kind === 'Service').map((o) => o.metadata.name));
  const pdbs = objects.filter((o) => o.kind === 'PodDisruptionBudget');
  const help = new Map<string, string>();
  for (const d of deployments) {
    const pod = d.spec.template.spec;
    const [c] = pod.containers;
    const what = d.metadata.name;
    t.is(pod.securityContext.runAsNonRoot, true, what);
    t.is(pod.securityContext.runAsUser, 10001, `${what}: the image's user`);
    t.is(pod.automountServiceAccountToken, false, what);
    t.like(c.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } }, what);
    t.truthy(pod.volumes.find((v: any) => v.name === 'tmp' && v.emptyDir), `${what}: a writable /tmp beside the read-only root`);
    t.is(c.readinessProbe.httpGet.path, '/health', what);
    t.is(c.startupProbe.httpGet.path, '/health', what);
    t.is(c.livenessProbe.httpGet.path, '/live', what);
    const port = c.ports[0].containerPort;
    t.is(d.spec.template.metadata.annotations['prometheus.io/scrape'], 'true', what);
    t.is(d.spec.template.metadata.annotations['prometheus.io/port'], String(port), what);
    t.truthy(c.resources.requests.cpu && c.resources.requests.memory, `${what}: resource requests`);
    t.truthy(pdbs.find((p) => p.metadata.name === what && JSON.stringify(p.spec.selector.matchLabels) === JSON.stringify(d.spec.selector.matchLabels)), `${what}: a PodDisruptionBudget selecting its pods`);
    const env = new Map<string, any>(c.env.map((e: any) => [e.name, e]));
    t.regex(env.get('CASCADE_NATS_URL').value, /^nats:\/\/[^@]+$/, `${what}: no credentials in URLs`);
    t.true(services.has(new URL(env.get('CASCADE_NATS_URL').value).hostname), `${what}: NATS URL names the NATS Service`);
    for (const e of env.values()) {
      const ref = e.valueFrom?.secretKeyRef;
      if (ref) t.true(ref.name === 'cascade-auth' && ref.key in secret.data!, `${what}: ${e.name} comes from a key of the Secret`);
    }
    t.truthy(env.get('CASCADE_NATS_PASSWORD')?.valueFrom, `${what}: NATS password from the Secret`);
    if (env.has('CASCADE_REDIS_URL')) t.true(services.has(new URL(env.get('CASCADE_REDIS_URL').value.split(',')[0]).hostname), `${what}: Redis URL names the Valkey Service`);
    t.is(env.get('OTEL_EXPORTER_OTLP_ENDPOINT')?.value, 'http://otel-collector.observability:4318', what);
    // the flags the chart passes are flags of that command
    const command = c.args.slice(0, 1);
    const key = command.join(' ');
    if (!help.has(key)) help.set(key, await helpOf(command));
    for (const flag of c.args.filter((a: string) => a.startsWith('--'))) t.true(help.get(key)!.includes(flag), `${what}: cascade ${key} has ${flag}`);
  }
  const byName = new Map(deployments.map((d) => [d.metadata.name, d.spec.template.spec]));
  const verifier = byName.get('rel-cascade-verifier')!;
  t.is(verifier.containers[0].resources.limits['nvidia.com/gpu'], 1, 'the verifier asks for a GPU in its limits');
  t.deepEqual(verifier.nodeSelector, { 'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3' });
  t.is(verifier.tolerations.length, 2);
  t.deepEqual(verifier.containers[0].args.slice(0, 2), ['actor', 'verify']);
  const l2 = byName.get('rel-cascade-draft-l2')!.containers[0];
  t.is(l2.resources.limits['nvidia.com/gpu'], 1);
  t.true(l2.args.includes('--kv-policy') && l2.args.includes('adore') && l2.args.includes('--redis'), 'ADORE drafters spill released KV to Valkey');
  t.is(l2.args[l2.args.indexOf('--kv-release-batch') + 1], '16', 'the example releases 16 tokens at once');
  t.false(l2.args.includes('--kv-prefill-chunk'), 'an unset prefill chunk is left to the actor');
  const l1 = byName.get('rel-cascade-draft-l1')!;
  t.is(l1.containers[0].resources.limits['nvidia.com/gpu'], undefined, 'a CPU drafter asks for no GPU');
  t.deepEqual(l1.nodeSelector, { 'node-pool': 'cpu' });
  const gateway = byName.get('rel-cascade-gateway')!.containers[0];
  t.truthy(gateway.env.find((e: any) => e.name === 'CASCADE_API_KEYS' && e.valueFrom.secretKeyRef.key === 'api-keys'), 'the gateway checks API keys');
  t.true(services.has('rel-cascade'), 'the gateway Service');
});

test('deploy - external NATS and Redis with a referenced Secret: no bundled servers, no generated Secret, models from a claim', async (t) => {
  const objects = await render('-f', join(ROOT, 'helm', 'examples', 'values-external.yaml'));
  t.false(objects.some((o) => o.kind === 'StatefulSet' || o.metadata.name.includes('nats') || o.metadata.name.includes('valkey')));
  t.false(objects.some((o) => o.kind === 'Secret'), 'the Secret is referenced, not generated');
  const coordinator = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'rel-cascade-coordinator')!.spec.template.spec;
  const env = new Map<string, any>(coordinator.containers[0].env.map((e: any) => [e.name, e]));
  t.is(env.get('CASCADE_NATS_URL').value, 'nats://nats.messaging.svc:4222');
  t.is(env.get('CASCADE_REDIS_URL').value, 'redis://redis.data.svc:6379');
  t.is(env.get('CASCADE_REDIS_USER').value, 'cascade');
  t.is(env.get('CASCADE_REDIS_PASSWORD').valueFrom.secretKeyRef.name, 'cascade-prod-auth');
  t.like(coordinator.volumes.find((v: any) => v.name === 'models'), { persistentVolumeClaim: { claimName: 'cascade-models', readOnly: true } });
});

test('deploy - verifier.colocated: no verifier Deployment or PDB; each coordinator pod runs the target with the verifier\'s flags, GPU, resources, placement and models', async (t) => {
  const objects = await render('-f', join(ROOT, 'helm', 'examples', 'values-colocated.yaml'), '--set', 'verifier.extraEnv[0].name=CUDA_MODULE_LOADING', '--set', 'verifier.extraEnv[0].value=LAZY', '--set', 'coordinator.tolerations[0].key=dedicated', '--set', 'coordinator.tolerations[0].operator=Exists');
  t.false(objects.some((o) => o.metadata.name === 'rel-cascade-verifier'), 'no verifier Deployment and no verifier PodDisruptionBudget');
  t.truthy(objects.find((o) => o.kind === 'PodDisruptionBudget' && o.metadata.name === 'rel-cascade-coordinator'));
  const pod = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'rel-cascade-coordinator')!.spec.template.spec;
  const [c] = pod.containers;
  t.deepEqual(c.args.slice(0, 1), ['coordinator']);
  t.deepEqual(c.args.slice(c.args.indexOf('--verifier')), ['--verifier', '--threads', '8', '--execution-providers', 'cuda,cpu']);
  const help = await helpOf(['coordinator']);
  for (const flag of c.args.filter((a: string) => a.startsWith('--'))) t.true(help.includes(flag), `cascade coordinator has ${flag}`);
  t.is(c.resources.limits['nvidia.com/gpu'], 1, 'the coordinator asks for the verifier\'s GPU');
  t.like(c.resources, { requests: { cpu: '4', memory: '16Gi' }, limits: { memory: '32Gi' } }, 'and takes the verifier\'s resources');
  t.deepEqual(pod.nodeSelector, { 'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3' }, 'the verifier\'s placement');
  t.deepEqual(pod.tolerations.map((x: any) => x.key), ['dedicated', 'nvidia.com/gpu'], 'tolerations of both');
  t.like(c.volumeMounts.find((m: any) => m.name === 'models'), { mountPath: '/app/models', readOnly: true, subPath: 'family-v1' });
  t.like(pod.volumes.find((v: any) => v.name === 'models'), { persistentVolumeClaim: { claimName: 'cascade-models', readOnly: true } });
  const env = new Map<string, any>(c.env.map((e: any) => [e.name, e]));
  t.is(env.get('CASCADE_NATS_USER').value, 'coordinator', 'the colocated verifier serves in-process: the coordinator keeps its NATS user');
  t.is(env.get('CUDA_MODULE_LOADING').value, 'LAZY', 'the verifier\'s extraEnv');
  t.true(env.has('CASCADE_REDIS_URL'));
  const drafter = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'rel-cascade-draft-l1')!.spec.template.spec.containers[0];
  t.deepEqual(drafter.args.slice(0, 2), ['actor', 'draft'], 'the drafters are unchanged');
});

test('deploy - a Redis Cluster beside the release: its seed nodes become one redis+cluster:// URL for every role that uses Redis', async (t) => {
  const objects = await render('-f', join(ROOT, 'helm', 'examples', 'values-redis-cluster.yaml'));
  t.false(objects.some((o) => o.metadata.name.includes('valkey')), 'no bundled Valkey');
  const seeds = [0, 1, 2].map((i) => `valkey-cluster-${i}.valkey-cluster-headless.data.svc:6379`).join(',');
  for (const name of ['rel-cascade-coordinator', 'rel-cascade-gateway']) {
    const env = new Map<string, any>(objects.find((o) => o.kind === 'Deployment' && o.metadata.name === name)!.spec.template.spec.containers[0].env.map((e: any) => [e.name, e]));
    t.is(env.get('CASCADE_REDIS_URL').value, `redis+cluster://${seeds}`, name);
    t.is(env.get('CASCADE_REDIS_USER').value, 'cascade');
    t.is(env.get('CASCADE_REDIS_PASSWORD').valueFrom.secretKeyRef.key, 'redis-password');
  }
  const tls = await render('-f', join(ROOT, 'helm', 'examples', 'values-redis-cluster.yaml'), '--set', 'external.redisTls=true');
  const gateway = tls.find((o) => o.kind === 'Deployment' && o.metadata.name === 'rel-cascade-gateway')!.spec.template.spec.containers[0];
  t.is(gateway.env.find((e: any) => e.name === 'CASCADE_REDIS_URL').value, `rediss+cluster://${seeds}`);
});

test('deploy - the NATS users of the chart and of deploy/nats.conf are the roles and permissions of src/cluster/security.ts', (t) => {
  t.deepEqual(values.nats.config.merge.authorization, natsAuthorizationForHelm());
  t.like(values.nats.config.merge, NATS_SERVER_PINGS, 'the chart\'s NATS pings its peers as src/cluster/security.ts says');
  for (const role of ROLES) t.deepEqual(values.nats.container.env[natsPasswordVar(role)], { valueFrom: { secretKeyRef: { name: 'cascade-auth', key: `nats-${role}-password` } } });
  const conf = readFileSync(join(ROOT, 'deploy', 'nats.conf'), 'utf8');
  t.is(conf.replace(/^#.*\n/gm, ''), natsConfig('0.0.0.0:4222', 'env'));
});

test('deploy - nats-server runs the configuration the chart renders: role users with passwords from the environment', async (t) => {
  const objects = await render();
  const conf = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'rel-nats-config')!.data!['nats.conf']!;
  const [port, http] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'cascade-helm-nats-'));
  const file = join(dir, 'nats.conf');
  writeFileSync(file, conf.replace('"port": 4222', `"port": ${port}, "host": "127.0.0.1"`).replace('"http_port": 8222', `"http_port": ${http}`).replace('/var/run/nats/nats.pid', join(dir, 'nats.pid')));
  const passwords = Object.fromEntries(ROLES.map((r) => [r, `pw-${r}-${Math.random().toString(36).slice(2)}`]));
  const server = spawn('nats-server', ['-c', file], { env: { ...process.env, SERVER_NAME: 'test', ...Object.fromEntries(ROLES.map((r) => [natsPasswordVar(r), passwords[r]])) }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  server.stderr.on('data', (d) => (log += d));
  try {
    for (let i = 0; i < 100 && !/Server is ready/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
    t.regex(log, /Server is ready/);
    const url = (role: string, password: string) => `nats://${role}:${password}@127.0.0.1:${port}`;
    const [coordinator, actor] = await Promise.all([NatsTransport.connect({ servers: url('coordinator', passwords.coordinator!) }), NatsTransport.connect({ servers: url('actor', passwords.actor!) })]);
    actor.serve('cascade.actor.m.open', async () => new Uint8Array([7]), { queue: 'm' });
    await actor.flush();
    t.deepEqual([...(await coordinator.request('cascade.actor.m.open', new Uint8Array([1]), { timeoutMs: 2000 }))], [7], 'a coordinator calls an actor');
    await t.throwsAsync(actor.request('cascade.actor.m.open', new Uint8Array([1]), { timeoutMs: 500 }), undefined, 'an actor may not call actors');
    await Promise.all([coordinator.close(), actor.close()]);
    await t.throwsAsync(NatsTransport.connect({ servers: url('gateway', 'wrong') }), { message: /cannot connect/ });
  } finally {
    server.kill();
  }
});

test('deploy - the Dockerfile builds a non-root image with production packages, ORT CUDA as an option, models baked in or mounted', (t) => {
  const dockerfile = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
  const stages = [...dockerfile.matchAll(/^FROM\s+(\S+)\s+AS\s+(\S+)/gm)].map((m) => m[2]);
  t.true(stages.length >= 3 && stages.includes('packages') && stages.at(-1) === 'runtime', 'multi-stage');
  t.regex(dockerfile, /npm ci --omit=dev/);
  t.regex(dockerfile, /ONNXRUNTIME_NODE_INSTALL="\$ORT_INSTALL"/);
  t.regex(dockerfile, /^ARG ORT_INSTALL=skip$/m);
  t.regex(dockerfile, /^FROM models-\$\{MODELS\} AS models$/m);
  const users = [...dockerfile.matchAll(/^USER\s+(\S+)/gm)].map((m) => m[1]);
  t.deepEqual(users, ['10001:10001'], 'runs as the numeric non-root user the chart expects');
  t.is(values.podSecurityContext.runAsUser, 10001);
  const copied = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.split(/\s+/));
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
  for (const path of [...copied, 'models']) t.true(ignore.includes(`!${path.replace(/\/$/, '')}`), `.dockerignore lets ${path} into the build context`);
  // every package the sources import is a production dependency (the image has no devDependencies)
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  const files = readdirSync(join(ROOT, 'src'), { recursive: true }).map(String).filter((f) => f.endsWith('.ts') || f.endsWith('.mjs'));
  const imported = new Set<string>();
  for (const f of files) {
    for (const m of readFileSync(join(ROOT, 'src', f), 'utf8').matchAll(/^\s*(?:import|export)\b[^'\n]*?from\s+'([^'.][^']*)'|^\s*import\s+'([^'.][^']*)'|\bimport\(\s*'([^'.][^']*)'\s*\)/gm)) {
      const spec = (m[1] ?? m[2] ?? m[3])!;
      if (spec.startsWith('node:')) continue;
      imported.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
    }
  }
  t.true(imported.has('onnxruntime-node') && imported.has('fastify') && imported.size > 10, [...imported].join(', '));
  for (const name of imported) t.truthy(pkg.dependencies[name], `src imports ${name}: it must be in dependencies`);
});

test('deploy - the compose example runs every role from one image with credentials from the environment', async (t) => {
  const compose = parse(readFileSync(join(ROOT, 'deploy', 'compose.yaml'), 'utf8'), { merge: true });
  const services = compose.services;
  t.deepEqual(Object.keys(services).sort(), ['coordinator', 'draft-l1', 'draft-l2', 'gateway', 'nats', 'redis', 'verifier']);
  t.deepEqual(services.nats.volumes, ['./nats.conf:/etc/nats/nats.conf:ro']);
  for (const role of ROLES) t.truthy(services.nats.environment[natsPasswordVar(role)], `nats-server gets ${natsPasswordVar(role)}`);
  for (const name of ['verifier', 'draft-l2', 'draft-l1', 'coordinator', 'gateway']) {
    const s = services[name];
    t.is(s.image, '${CASCADE_IMAGE:-cascade-cluster:cpu}');
    t.true(s.read_only && s.cap_drop.includes('ALL'), `${name}: read-only, no capabilities`);
    t.truthy(s.healthcheck, `${name}: health-checked`);
    t.false(JSON.stringify(s.environment).includes('@'), `${name}: no credentials in URLs`);
    const help = await helpOf(s.command.slice(0, 1));
    for (const flag of s.command.filter((a: string) => a.startsWith('--'))) t.true(help.includes(flag), `${name}: cascade ${s.command[0]} has ${flag}`);
  }
  t.regex(services.gateway.environment.CASCADE_API_KEYS, /CASCADE_API_KEY/);
  // `cascade cluster secrets` writes the .env file the compose file asks for, with fresh values each time
  const env = async () => (await run(process.execPath, [...CLI, 'cluster', 'secrets'], { cwd: ROOT })).stdout;
  const [a, b] = [await env(), await env()];
  const needed = [...readFileSync(join(ROOT, 'deploy', 'compose.yaml'), 'utf8').matchAll(/\$\{(CASCADE_[A-Z_]+?)(?::[?-][^}]*)?\}/g)].map((m) => m[1]).filter((v) => v !== 'CASCADE_IMAGE');
  for (const name of new Set(needed)) t.regex(a, new RegExp(`^${name}=[A-Za-z0-9_-]{24,}$`, 'm'), `cluster secrets provides ${name}`);
  t.not(a, b);
});
