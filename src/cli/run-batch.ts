import { randomUUID } from 'node:crypto';
import { accessSync, appendFileSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import writeFileAtomic from 'write-file-atomic';
import { z } from 'zod';
import { openEmbeddedGateway } from '../cluster/roles.ts';
import { InvalidArgumentError } from '../errors.ts';
import { BATCH_INVARIANT_HELP, EXECUTION_PROVIDERS, KV_LOCATIONS, parseBatchInvariant, parseExecutionProviders, parseKvLocation, parseNumber, parseVerificationFlag, VERIFICATION_HELP, parseDraftingFlag, DRAFTING_HELP, OUTCOME_BRANCHES_HELP, noteOutcomeBranches } from './options.ts';
import { parseSelfDraft, SELF_DRAFT_CACHE, SELF_DRAFT_CACHE_HELP, SELF_DRAFT_HELP, type SelfDraft } from './quantize.ts';
import type { KvLocation } from '../models/kv-placement.ts';
import type { BatchInvariance } from '../models/session.ts';
import { DEFAULT_DRAFTING, type Drafting } from '../engine/async-cascade.ts';
import { DEFAULT_VERIFICATION, type Verification } from '../kernels/noise.ts';

/**
 * `cascade run-batch`: OpenAI's batch file format (https://platform.openai.com/docs/guides/batch),
 * served from one warm process as vLLM's `run-batch` does. Each input line is
 * `{"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body"}`; each
 * output line `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error",
 * "seconds"}`: an HTTP answer of any status in `response` (an error's body holds its message), and
 * `error` `{code, message}` only for a failure that is no HTTP answer, as OpenAI's batches; `seconds`
 * is the request's own time. Under --resume a request that failed runs again, and its old line is
 * removed first (the output is rewritten without it, atomically), so each custom_id has one line. The
 * requests run through the embedded gateway's own handlers (Fastify's inject: the same validation,
 * templates and answers as `serve --embedded`), `--concurrency` at a time. The whole file is
 * validated first (a bad line is an error naming it, and nothing runs); results are appended as
 * each request finishes, so a crash loses none that finished, and `--resume` skips the custom_ids
 * the output already answered with a 200.
 */

const URLS = ['/v1/chat/completions', '/v1/completions'] as const;

const BatchLine = z
  .object({
    custom_id: z.string().min(1).max(512),
    method: z.literal('POST'),
    url: z.enum(URLS),
    body: z.record(z.string(), z.unknown()).refine((b) => b.stream !== true, 'a batch request cannot stream (send stream false or leave it out)'),
  })
  .strict();
type BatchLine = z.infer<typeof BatchLine>;

/** Reads and validates a batch file: every line, or an InvalidArgumentError naming the bad ones (up to 5). */
export function readBatchFile(path: string): BatchLine[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new InvalidArgumentError(`cannot read the batch file ${path}`, { cause });
  }
  const lines: BatchLine[] = [];
  const bad: string[] = [];
  const seen = new Set<string>();
  text.split('\n').forEach((raw, i) => {
    if (!raw.trim()) return;
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch {
      bad.push(`line ${i + 1}: not JSON`);
      return;
    }
    const r = BatchLine.safeParse(json);
    if (!r.success) {
      bad.push(`line ${i + 1}: ${r.error.issues.map((e) => `${e.path.join('.') || '(line)'}: ${e.message}`).join('; ')}`);
      return;
    }
    if (seen.has(r.data.custom_id)) bad.push(`line ${i + 1}: custom_id "${r.data.custom_id}" is used twice`);
    seen.add(r.data.custom_id);
    lines.push(r.data);
  });
  if (bad.length) throw new InvalidArgumentError(`${path} is not a valid batch file (OpenAI's format: one {"custom_id", "method": "POST", "url": ${URLS.map((u) => `"${u}"`).join(' | ')}, "body"} per line): ${bad.slice(0, 5).join('; ')}${bad.length > 5 ? `; and ${bad.length - 5} more` : ''}`);
  if (!lines.length) throw new InvalidArgumentError(`${path} holds no requests`);
  return lines;
}

/**
 * For --resume: the custom_ids the output file already answered with a 200, after rewriting the file
 * with those lines only, each ending in a newline, so that a request run again leaves one line, its
 * new answer. Lines of failed requests and a line cut by a crash go. The rewrite is write-file-atomic's
 * (a temporary file renamed over the real path, a symbolic link followed, the mode kept, synced);
 * two runs on one output at once are not supported.
 */
function keepAnswered(path: string): Set<string> {
  const done = new Set<string>();
  const kept: string[] = [];
  for (const raw of readFileSync(path, 'utf8').split('\n').filter((l) => l.trim())) {
    try {
      const r = JSON.parse(raw) as { custom_id?: string; response?: { status_code?: number } };
      if (r.custom_id && r.response?.status_code === 200 && !done.has(r.custom_id)) {
        done.add(r.custom_id);
        kept.push(raw);
      }
    } catch {
      // a line cut by a crash: that request runs again
    }
  }
  writeFileAtomic.sync(path, kept.map((l) => `${l}\n`).join(''));
  return done;
}

interface RunBatchOptions {
  input: string;
  output: string;
  resume?: boolean;
  concurrency: number;
  models: string;
  model?: string;
  draftModel?: string[];
  modelFile?: string;
  tokenizer?: string;
  threads?: number;
  executionProviders?: string[];
  draftExecutionProviders?: string[];
  verification: Verification;
  drafting: Drafting;
  outcomeBranches?: boolean;
  kvLocation?: KvLocation;
  batchInvariant?: BatchInvariance;
  selfDraft?: SelfDraft;
  selfDraftCache: string;
}

/** The output's folder exists and takes files, checked before any model loads (InvalidArgumentError otherwise: a usage error, exit 2). */
function checkOutputFolder(output: string): void {
  const folder = dirname(resolve(output));
  if (!existsSync(folder) || !statSync(folder).isDirectory()) throw new InvalidArgumentError(`--output ${output}: its folder ${folder} does not exist (create it first)`);
  try {
    accessSync(folder, constants.W_OK);
  } catch {
    throw new InvalidArgumentError(`--output ${output}: its folder ${folder} is not writable`);
  }
}

async function runBatch(o: RunBatchOptions): Promise<void> {
  noteOutcomeBranches(o);
  const lines = readBatchFile(o.input);
  checkOutputFolder(o.output);
  if (existsSync(o.output) && !o.resume) throw new InvalidArgumentError(`${o.output} exists: give --resume to skip the requests it answered, or another --output`);
  const skip = o.resume && existsSync(o.output) ? keepAnswered(o.output) : new Set<string>();
  const todo = lines.filter((l) => !skip.has(l.custom_id));
  const gateway = await openEmbeddedGateway({ ...o, requestTimeoutMs: 3_600_000, maxInFlight: Math.max(64, o.concurrency * 16) });
  const started = performance.now();
  let finished = 0;
  let failed = 0;
  let tokens = 0;
  let lastReport = 0;
  let reported = -1;
  const report = (force = false) => {
    const now = performance.now();
    if ((!force && now - lastReport < 1000) || reported === finished) return;
    lastReport = now;
    reported = finished;
    const seconds = (now - started) / 1000;
    process.stderr.write(`run-batch: ${finished}/${todo.length} done${failed ? `, ${failed} failed` : ''}${skip.size ? ` (${skip.size} answered before)` : ''}, ${tokens} tokens in ${seconds.toFixed(1)} s (${(tokens / Math.max(seconds, 1e-9)).toFixed(1)} tokens/s)\n`);
  };
  try {
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const line = todo[next++]!;
        const t0 = performance.now();
        let response: { status_code: number; request_id: string | null; body: unknown } | null = null;
        let error: { code: string; message: string } | null = null;
        try {
          const res = await gateway.app.inject({ method: 'POST', url: line.url, payload: line.body as object, headers: { 'content-type': 'application/json' } });
          let body: unknown;
          try {
            body = res.json();
          } catch {
            body = res.body;
          }
          response = { status_code: res.statusCode, request_id: (body as { id?: string } | undefined)?.id ?? null, body };
          tokens += (body as { usage?: { completion_tokens?: number } } | undefined)?.usage?.completion_tokens ?? 0;
        } catch (err) {
          // as OpenAI's batches: `error` is for a failure that is not an HTTP answer
          error = { code: 'internal_error', message: (err as Error).message };
        }
        finished++;
        if (response?.status_code !== 200) failed++;
        const out = { id: `batch_req_${randomUUID().replaceAll('-', '')}`, custom_id: line.custom_id, response, error, seconds: (performance.now() - t0) / 1000 };
        appendFileSync(o.output, JSON.stringify(out) + '\n');
        report();
      }
    };
    await Promise.all(Array.from({ length: Math.min(o.concurrency, todo.length) }, worker));
    report(true);
  } finally {
    await gateway.close();
  }
  if (failed) process.exitCode = 1;
}

export function registerRunBatch(program: Command): void {
  program
    .command('run-batch')
    .description("serve a file of requests in OpenAI's batch format from one warm process (the embedded engine), writing one result line per request")
    .requiredOption('-i, --input <file>', 'JSONL of {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body"}')
    .requiredOption('-o, --output <file>', 'JSONL of {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error", "seconds"}, appended as requests finish')
    .option('--resume', 'the output exists: skip the custom_ids it answered with a 200, run the rest again (their old lines are removed) and append their answers')
    .option('--concurrency <n>', 'requests in flight (their forwards batch)', parseNumber('--concurrency', { min: 1, integer: true }), 4)
    .option('--models <dir>', 'model family directory', 'models')
    .option('--model <dir|name>', 'the target: a model folder or a member of the --models family')
    .option('--draft-model <dir|name>', 'a drafter, repeatable, largest first', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--model-file <name>', "the target's ONNX graph inside its folder when it holds several")
    .option('--tokenizer <file>', 'tokenizer.json for model folders that carry none')
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }))
    .option('--execution-providers <list>', `the target's execution providers (${EXECUTION_PROVIDERS.join(', ')}, or auto; default cpu)`, parseExecutionProviders('--execution-providers'))
    .option('--draft-execution-providers <list>', "every drafter's execution providers, or auto (default: auto beside a target off the CPU, else cpu)", parseExecutionProviders('--draft-execution-providers'))
    .option('--verification <rule>', `${VERIFICATION_HELP} (for requests whose cascade field names none)`, parseVerificationFlag, DEFAULT_VERIFICATION)
    .option('--drafting <mode>', `${DRAFTING_HELP} (for requests whose cascade field names none)`, parseDraftingFlag, DEFAULT_DRAFTING)
    .option('--outcome-branches', `${OUTCOME_BRANCHES_HELP} (for async requests whose cascade field does not say)`)
    .option('--kv-location <where>', `where the target's KV cache lives between passes: ${KV_LOCATIONS.join(' | ')} (auto: on the device on a GPU EP, a host buffer for a GroupQueryAttention graph on the CPU; drafters are always auto)`, parseKvLocation)
    .option('--batch-invariant <mode>', `whether a token's logits from the target stay the same however many tokens its pass scores: ${BATCH_INVARIANT_HELP}; drafters never pad (off: their drafts are reviewed) (default auto)`, parseBatchInvariant)
    .option('--self-draft <width>', SELF_DRAFT_HELP, parseSelfDraft)
    .option('--self-draft-cache <dir>', SELF_DRAFT_CACHE_HELP, SELF_DRAFT_CACHE)
    .action((o: RunBatchOptions) => runBatch(o));
}
