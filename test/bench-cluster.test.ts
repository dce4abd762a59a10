import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';

const run = promisify(execFile);
const CLI = ['--import', 'tsx', new URL('../src/cli/main.ts', import.meta.url).pathname];

test('bench cluster - embedded and cluster side by side, both greedy outputs equal to target-only decoding, concurrency rows, a latency breakdown from spans', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'bench-cluster-'));
  const { stdout } = await run(process.execPath, [...CLI, 'bench', 'cluster', '--prompts', '2', '--max-tokens', '8', '--repeats', '1', '--concurrency', '1,2', '--out', out], {
    cwd: new URL('..', import.meta.url).pathname,
    timeout: 240_000,
  });
  t.regex(stdout, /^embedded\s+1\s.*yes$/m);
  t.regex(stdout, /^cluster\s+1\s.*yes$/m);
  t.regex(stdout, /^cluster \(aggregate\)\s+2\s/m);
  const record = JSON.parse(readFileSync(join(out, 'cluster.json'), 'utf8'));
  t.deepEqual(record.singleStream.equalsTargetOnly, { embedded: true, cluster: true }, 'the oracle is target-only decoding, not one cascade against the other');
  t.true(record.singleStream.embeddedTokensPerSecond > 0 && record.singleStream.clusterTokensPerSecond > 0);
  t.deepEqual(record.concurrency.map((c: { concurrency: number }) => c.concurrency), [1, 2]);
  t.is(record.latencyBreakdownMs.requests, 2);
  for (const part of ['queue', 'verify', 'actor compute', 'network+serialisation', 'e2e']) t.true(part in record.latencyBreakdownMs.medians, part);
});
