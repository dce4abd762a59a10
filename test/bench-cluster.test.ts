import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { CLI } from './helpers/cli.ts';

const run = promisify(execFile);

test('bench cluster - target-only, embedded and cluster under serial and async drafting side by side, every greedy output equal to target-only decoding, concurrency rows, a latency breakdown from spans, the timeline SVGs', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'bench-cluster-'));
  const timeline = join(out, 'timeline.svg');
  const { stdout } = await run(process.execPath, [...CLI, 'bench', 'cluster', '--workload', 'code', '--prompts', '2', '--max-tokens', '8', '--repeats', '1', '--concurrency', '2', '--timeline', timeline, '--out', out], {
    cwd: new URL('..', import.meta.url).pathname,
    timeout: 300_000,
  });
  for (const path of ['embedded/serial', 'embedded/async', 'cluster/serial', 'cluster/async']) t.regex(stdout, new RegExp(`^${path}\\s.*yes$`, 'm'), path);
  const record = JSON.parse(readFileSync(join(out, 'cluster.json'), 'utf8'));
  const [code] = record.singleStream;
  t.is(code.workload, 'code');
  t.deepEqual(code.equalsTargetOnly, { ar: true, 'embedded/serial': true, 'embedded/async': true, 'cluster/serial': true, 'cluster/async': true }, 'the oracle is target-only decoding, not one cascade against the other');
  for (const v of Object.values(code.tokensPerSecond) as number[]) t.true(v > 0);
  t.deepEqual(record.concurrency.map((c: { drafting: string; concurrency: number }) => `${c.drafting}@${c.concurrency}`), ['serial@2', 'async@2']);
  for (const mode of ['serial', 'async']) {
    const b = record.latencyBreakdownMs[mode];
    t.is(b.requests, 2, mode);
    for (const part of ['queue', 'verify', 'actor compute', 'network+serialisation', 'network per actor call p99', 'e2e']) t.true(part in b.medians, `${mode}: ${part}`);
  }
  for (const file of [timeline, join(out, 'timeline-async.svg')]) {
    const svg = readFileSync(file, 'utf8');
    t.regex(svg, /^<svg[\s\S]*<\/svg>\s*$/);
    t.regex(svg, /target\//, 'the verifier has a lane');
  }
  // serial rounds under the adaptive schedule may leave the neural drafters out of a short request; async always runs draft-l2
  t.regex(readFileSync(join(out, 'timeline-async.svg'), 'utf8'), /draft-l2\//, 'the async drafter has a lane');
});
