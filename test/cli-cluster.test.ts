import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { freePort } from '../src/cluster/local-servers.ts';
import { run } from './helpers/cli.ts';
import { MODELS_DIR } from './helpers/family.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { findPython } from '../src/cli/quantize.ts';

// `cascade cluster up` and `down` as `npx cascade` runs them.

/**
 * `cascade` as installed (bin/cascade.js under plain node, no tsx flag): how `npx cascade` runs,
 * roles included, so without the compiled build that `npm test` points CASCADE_CLI at.
 */
const BIN = new URL('../bin/cascade.js', import.meta.url).pathname;
const { CASCADE_CLI: _compiled, ...userEnv } = process.env;
const installed = (...args: string[]) => run(process.execPath, [BIN, ...args], { cwd: tmpdir(), env: userEnv });

/** --self-draft quantizes with Python 3, onnx and numpy: without them its test is skipped, as test/quantize.test.ts is. */
const withPython = (() => {
  try {
    findPython();
    return test.serial;
  } catch (err) {
    console.warn(`the --self-draft test of test/cli-cluster.test.ts is skipped: ${(err as Error).message}`);
    return test.skip;
  }
})();

/** Processes whose command line names `marker` (every role of a cluster started with it in a path). */
async function processesNaming(marker: string): Promise<string[]> {
  const { stdout } = await run('ps', ['-eo', 'pid=,args=']);
  return stdout.split('\n').filter((l) => l.includes(marker) && !l.includes(' ps '));
}

/** A models path unique to one test (a link to the family), so its roles can be found by their command lines. */
function uniqueModels(): { dir: string; models: string } {
  const dir = mkdtempSync(join(tmpdir(), 'cascade-up-'));
  const models = join(dir, 'family');
  symlinkSync(MODELS_DIR, models);
  return { dir, models };
}

test.serial('cli - bin/cascade.js cluster up starts every role (two verify actors), serves a completion, another after a verify actor dies, and cluster down stops the ones still running', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  try {
    const { stdout } = await installed('cluster', 'up', '--state-dir', state, '--models', models, '--verify-instances', '2');
    t.regex(stdout, /cluster up: 8 processes/);
    const gateway = (JSON.parse(readFileSync(join(state, 'cluster.json'), 'utf8')) as { gateway: string }).gateway;
    const { apiKey } = JSON.parse(readFileSync(join(state, 'secrets.json'), 'utf8')) as { apiKey: string };
    const complete = async () => {
      const res = await fetch(`${gateway}/v1/completions`, { method: 'POST', headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'def add(a, b):', max_tokens: 4, temperature: 0 }) });
      t.is(res.status, 200);
      return (await res.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
    };
    const first = await complete();
    t.is(first.usage.completion_tokens, 4);
    // a role that died before down: not counted, and its pid (which the system may give to another process) not signalled
    const roles = (JSON.parse(readFileSync(join(state, 'cluster.json'), 'utf8')) as { pids: { role: string; pid: number; started?: string }[] }).pids;
    t.true(roles.every((r) => r.started !== undefined), 'each role\'s start time is recorded');
    t.deepEqual(roles.filter((r) => r.role.startsWith('verify-')).map((r) => r.role), ['verify-0', 'verify-1']);
    // every actor and coordinator serves its probes and metrics on loopback, named in cluster.json and (the coordinators') on stdout
    const health = (JSON.parse(readFileSync(join(state, 'cluster.json'), 'utf8')) as { health: Record<string, string> }).health;
    t.deepEqual(Object.keys(health).sort(), roles.map((r) => r.role).filter((r) => /^(verify|draft|coordinator)-/.test(r)).sort());
    t.regex(stdout, new RegExp(`coordinator-0's at ${health['coordinator-0']!.replace(/\./g, '\\.')}/metrics`));
    const metrics = await (await fetch(`${health['coordinator-0']}/metrics`)).text();
    t.regex(metrics, /^# TYPE cascade_actor_calls_failed_total counter$/m);
    t.is((await fetch(`${health['verify-1']}/health`)).status, 200);
    process.kill(roles.find((r) => r.role === 'verify-0')!.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    t.is((await complete()).choices[0]!.text, first.choices[0]!.text, 'the other verify actor serves it');
    process.kill(roles.find((r) => r.role.startsWith('draft-'))!.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const down = (await installed('cluster', 'down', '--state-dir', state)).stdout;
    t.regex(down, /cluster down: stopped 6 processes \(2 had already exited\)/);
    // a role's process that lingers after its stop (ioredis 5's socketTimeout timer held a coordinator 15 s) is killed
    t.notRegex(down, /were killed/, 'every role stopped on SIGTERM');
    t.deepEqual(readdirSync(state).filter((f) => !f.endsWith('.log')), [], 'state, secrets and server configs are gone');
    t.deepEqual(await processesNaming(dir), []);
  } finally {
    await installed('cluster', 'down', '--state-dir', state).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('cli - a cluster up that fails late stops what it started and leaves no files behind', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  const closed = await freePort(); // nothing listens there: the actors find out once their models are loaded
  try {
    const err = await t.throwsAsync(installed('cluster', 'up', '--state-dir', state, '--models', models, '--nats', `nats://127.0.0.1:${closed}`));
    const { code, stderr } = err as unknown as { code: number; stderr: string };
    t.is(code, 1);
    t.regex(stderr, /cluster up failed; stopped redis-server, verify-0, .*coordinator-0 and removed the files it wrote/);
    t.regex(stderr, /exited during start-up; its log ended:[^]*cannot connect to NATS/);
    t.false(existsSync(state), 'no secrets, configs, logs or state directory left');
    t.deepEqual(await processesNaming(dir), [], 'no process left running');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('cli - cluster up refuses a --port something listens on before starting anything; cluster down with no cluster up says so and succeeds', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const port = (server.address() as AddressInfo).port;
    const err = await t.throwsAsync(installed('cluster', 'up', '--state-dir', state, '--models', models, '--port', String(port), '--outcome-branches'));
    const { code, stderr } = err as unknown as { code: number; stderr: string };
    t.is(code, 2, 'bad input');
    t.regex(stderr, new RegExp(`--port ${port} cannot be used on 127.0.0.1 \\(another process listens there\\).*nothing was started`));
    t.regex(stderr, /note: --outcome-branches applies to requests that ask for async drafting/, 'the note reaches the terminal, not only the gateway\'s log');
    t.false(existsSync(state), 'no state directory made');
    t.deepEqual(await processesNaming(dir), [], 'no process started');
    const down = await installed('cluster', 'down', '--state-dir', state);
    t.regex(down.stdout, /cluster down: no cluster is up \(no .*cluster\.json\); nothing to stop/);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('cli - cluster up --colocate hands --kv-location to each coordinator\'s verifier (the unfused target refuses host-buffer, naming it); a bad --execution-providers is refused before anything starts', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  try {
    const err = await t.throwsAsync(installed('cluster', 'up', '--state-dir', state, '--models', models, '--colocate', '--execution-providers', 'cpu', '--kv-location', 'host-buffer'));
    const { code, stderr } = err as unknown as { code: number; stderr: string };
    t.is(code, 1);
    t.regex(stderr, /coordinator-0 exited during start-up; its log ended:[^]*--kv-location host-buffer needs a graph/);
    t.false(existsSync(state));
    t.deepEqual(await processesNaming(dir), [], 'no process left running');
    const bad = await t.throwsAsync(installed('cluster', 'up', '--state-dir', state, '--models', models, '--execution-providers', 'gpu'));
    t.is((bad as unknown as { code: number }).code, 2);
    t.regex((bad as unknown as { stderr: string }).stderr, /--execution-providers takes auto or a comma-separated list/);
    t.false(existsSync(state), 'nothing started');
    const twice = await t.throwsAsync(installed('cluster', 'up', '--state-dir', state, '--models', models, '--colocate', '--verify-instances', '2'));
    t.is((twice as unknown as { code: number }).code, 2);
    t.regex((twice as unknown as { stderr: string }).stderr, /--verify-instances starts verify actor processes, which --colocate replaces/);
    t.false(existsSync(state), 'nothing started');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

withPython('cli - cluster up --self-draft makes the target\'s int4 copy once, gives it a draft actor, and the gateway names it first; its drafts give target-only decoding\'s greedy text', async (t) => {
  const { dir, models } = uniqueModels();
  const state = join(dir, 'state');
  const cache = join(dir, 'cache');
  try {
    const { stdout, stderr } = await installed('cluster', 'up', '--state-dir', state, '--models', models, '--self-draft', 'int4', '--self-draft-cache', cache, '--insecure');
    t.regex(stdout, /cluster up: 8 processes/);
    t.regex(stderr, /quantized \d+ MatMul\/Gemm products to 4 bits/, 'made here, before the roles start');
    t.true(readdirSync(state).includes('draft-target-int4-0.log'));
    const gateway = (JSON.parse(readFileSync(join(state, 'cluster.json'), 'utf8')) as { gateway: string }).gateway;
    const listed = (await (await fetch(`${gateway}/v1/models`)).json()) as { data: { drafters: string[] }[] };
    t.deepEqual(listed.data[0]!.drafters, ['target-int4', 'draft-l2', 'draft-l1']);
    const prompt = 'def fibonacci(n):';
    const res = await fetch(`${gateway}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, max_tokens: 24, temperature: 0, cascade: { drafters: ['target-int4'], k_matrix: [[4]] } }) });
    t.is(res.status, 200);
    const body = (await res.json()) as { choices: { text: string }[]; usage: { cascade: { accepted_tokens: number } } };
    t.true(body.usage.cascade.accepted_tokens > 0, 'the copy drafted');
    const target = await OrtModelSession.open(join(MODELS_DIR, 'target'));
    try {
      const tokenizer = TextTokenizer.forModel(target.spec);
      const oracle = await generateAutoregressive(target, { promptIds: tokenizer.encodePrompt(prompt), maxTokens: 24, sampling: GREEDY, seed: 0 });
      t.is(body.choices[0]!.text, tokenizer.decode(oracle.tokenIds));
    } finally {
      await target.close();
    }
    t.regex((await installed('cluster', 'down', '--state-dir', state)).stdout, /cluster down: stopped 8 processes/);
    t.deepEqual(await processesNaming(dir), []);
  } finally {
    await installed('cluster', 'down', '--state-dir', state).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});
