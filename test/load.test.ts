import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { CLI } from './helpers/cli.ts';

const run = promisify(execFile);

/** The load test's shortened CI profile (the full one: `cascade bench load`, 500 requests at concurrency 32). */
test('bench load - mixed-length streams at concurrency 8 all complete; latency quantiles and memory are reported', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'bench-load-'));
  const { stdout } = await run(process.execPath, [...CLI, 'bench', 'load', '--requests', '24', '--concurrency', '8', '--min-tokens', '2', '--max-tokens', '16', '--out', out], {
    cwd: new URL('..', import.meta.url).pathname,
    timeout: 240_000,
  });
  t.regex(stdout, /24 completed, 0 errors/);
  const record = JSON.parse(readFileSync(join(out, 'load.json'), 'utf8'));
  t.is(record.errors, 0);
  for (const k of ['time to first token (ms)', 'inter-chunk latency (ms)', 'end-to-end latency (ms)']) {
    const q = record.latencyMs[k];
    t.true(q.p50 > 0 && q.p50 <= q.p90 && q.p90 <= q.p99, `${k}: ${JSON.stringify(q)}`);
  }
  t.true(record.memoryMiB.length >= 2, 'memory sampled as the run progressed');
});
