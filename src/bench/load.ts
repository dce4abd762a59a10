import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { ChaosCluster } from './chaos.ts';
import { formatTable, quantile, writeJson } from './report.ts';
import { loadWorkload } from './workloads.ts';
import { Rng } from '../kernels/rng.ts';

export interface LoadOptions {
  readonly models: string;
  readonly requests: number;
  readonly concurrency: number;
  /** Shortest and longest max_tokens; each request draws one (seeded). */
  readonly minTokens: number;
  readonly maxTokens: number;
  readonly out: string;
}

/** Resident memory of a process in MiB (Linux /proc). */
function rssMiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

interface Timing {
  ttft: number;
  gaps: number[];
  e2e: number;
  ok: boolean;
}

/**
 * `cascade bench load`: many streaming requests of mixed lengths at a fixed concurrency against a
 * local multi-process cluster; P50/P90/P99 of time to first token, inter-chunk latency and
 * end-to-end latency, errors, and every process's resident memory at each tenth of the run (a
 * growth trend would show as a rising column).
 */
export async function benchLoad(o: LoadOptions): Promise<void> {
  const prompts = loadWorkload('code').map((p) => p.prompt);
  const rng = new Rng(7);
  const lengths = Array.from({ length: o.requests }, () => o.minTokens + Math.floor(rng.uniform() * (o.maxTokens - o.minTokens + 1)));
  const cluster = new ChaosCluster(o.models);
  try {
    process.stderr.write('starting the cluster …\n');
    await cluster.start();
    const pids = (): [string, number][] => [['gateway (this process)', process.pid], ...[...cluster.roles.entries()].map(([name, r]): [string, number] => [name, r.proc.child.pid!])];
    const memory: { done: number; rss: Record<string, number> }[] = [];
    const sample = (done: number) => memory.push({ done, rss: Object.fromEntries(pids().map(([n, p]) => [n, rssMiB(p)])) });
    // the official openai client reads the stream (its SSE parser; an error event throws)
    const client = new OpenAI({ baseURL: `${cluster.gateway.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const one = async (i: number): Promise<Timing> => {
      const t0 = performance.now();
      let last = t0;
      let ttft = NaN;
      const gaps: number[] = [];
      try {
        let done = false;
        for await (const chunk of await client.completions.create({ model: '', prompt: prompts[i % prompts.length]!, max_tokens: lengths[i], temperature: 0, stream: true })) {
          const choice = chunk.choices[0];
          if (choice?.finish_reason) done = true;
          if (!choice?.text) continue;
          const now = performance.now();
          if (Number.isNaN(ttft)) ttft = now - t0;
          else gaps.push(now - last);
          last = now;
        }
        return { ttft, gaps, e2e: performance.now() - t0, ok: done };
      } catch {
        return { ttft, gaps, e2e: performance.now() - t0, ok: false };
      }
    };
    // warm-up, then the measured run
    await Promise.all(Array.from({ length: Math.min(o.concurrency, 8) }, (_, i) => one(i)));
    sample(0);
    const timings: Timing[] = [];
    let next = 0;
    const step = Math.max(1, Math.floor(o.requests / 10));
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: o.concurrency }, async () => {
        while (next < o.requests) {
          const i = next++;
          timings.push(await one(i));
          if (timings.length % step === 0) sample(timings.length);
          if (timings.length % 50 === 0) process.stderr.write(`${timings.length}/${o.requests} requests done\n`);
        }
      }),
    );
    const wall = (performance.now() - t0) / 1000;
    const ok = timings.filter((t) => t.ok);
    const ms = (xs: number[]) => [quantile(xs, 0.5), quantile(xs, 0.9), quantile(xs, 0.99)];
    const rows: [string, ...number[]][] = [
      ['time to first token (ms)', ...ms(ok.map((t) => t.ttft))],
      ['inter-chunk latency (ms)', ...ms(ok.flatMap((t) => t.gaps))],
      ['end-to-end latency (ms)', ...ms(ok.map((t) => t.e2e))],
    ];
    const latency = formatTable(['', 'P50', 'P90', 'P99'], rows);
    const names = pids().map(([n]) => n);
    const mem = formatTable(['requests done', ...names], memory.map((m) => [String(m.done), ...names.map((n) => m.rss[n]!)]));
    const summary = `${o.requests} streaming greedy requests, max_tokens ${o.minTokens}..${o.maxTokens} (seeded), concurrency ${o.concurrency}: ${ok.length} completed, ${o.requests - ok.length} errors, ${wall.toFixed(1)} s`;
    writeJson(o.out, 'load', { summary, requests: o.requests, concurrency: o.concurrency, errors: o.requests - ok.length, wallSeconds: wall, latencyMs: Object.fromEntries(rows.map(([k, ...v]) => [k, { p50: v[0], p90: v[1], p99: v[2] }])), memoryMiB: memory });
    const md = `# Load\n\n${summary}.\n\n\`\`\`\n${latency}\n\`\`\`\n\nResident memory (MiB) of every process as the run progressed:\n\n\`\`\`\n${mem}\n\`\`\`\n`;
    writeFileSync(join(o.out, 'load.md'), md);
    process.stdout.write(`${summary}\n\n${latency}\n\nresident memory (MiB):\n${mem}\n\nwrote ${join(o.out, 'load.json')} and load.md\n`);
  } finally {
    await cluster.stop();
  }
}
