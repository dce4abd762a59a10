import { Command, CommanderError } from 'commander';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { OutputError, ReaderGoneError, watchStdout } from './stdout.ts';

const program = new Command('cascade')
  .description('Cascade Speculative Drafting + ADORE inference: embedded or as a NATS/Redis cluster')
  .showHelpAfterError()
  .exitOverride();

/**
 * The modules that register the top-level commands, in help order, each loaded only when needed:
 * the cluster and bench modules import NATS, Redis, BullMQ, fastify and OpenTelemetry, about 2 s of
 * startup that `cascade generate` (371 ms of imports on its own) does not need.
 */
const MODULES = {
  generate: async (p: Command) => (await import('./generate.ts')).registerGenerate(p),
  bench: async (p: Command) => (await import('./bench.ts')).registerBench(p),
  cluster: async (p: Command) => (await import('./cluster.ts')).registerCluster(p),
  'run-batch': async (p: Command) => (await import('./run-batch.ts')).registerRunBatch(p),
  quantize: async (p: Command) => (await import('./quantize.ts')).registerQuantize(p),
} as const;
/** Top-level command name to the module that registers it. */
const COMMANDS: Record<string, keyof typeof MODULES> = {
  generate: 'generate',
  bench: 'bench',
  actor: 'cluster',
  coordinator: 'cluster',
  serve: 'cluster',
  chaos: 'cluster',
  cluster: 'cluster',
  'run-batch': 'run-batch',
  quantize: 'quantize',
  fuse: 'quantize',
};
// a known command first loads its own module; anything else (help, a typo: commander suggests) loads them all
const only = COMMANDS[process.argv[2] ?? ''];
for (const name of only ? [only] : (Object.keys(MODULES) as (keyof typeof MODULES)[])) await MODULES[name](program);

/**
 * An option given no value takes the next word as its value (commander's rule for `<value>`
 * options): `--batch-invariant --max-tokens 8` reads "--max-tokens" as the mode. A refusal that
 * quotes an option as the value it got says so.
 */
function missingValueHint(message: string): string {
  const m = /^(--[a-z][\w-]*)\b.*got "(--?[a-z][\w-]*)"$/i.exec(message);
  return m ? `(${m[2]} is an option, not a value: ${m[1]} needs its value right after it)\n` : '';
}

// A reader that stops early (`cascade generate … | head`) ends the output quietly, with status 0.
watchStdout();

try {
  await program.parseAsync(process.argv);
} catch (err) {
  // commander has printed its message; a usage error (unknown option or command, bad argument) is bad input: 2
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
  if (err instanceof ReaderGoneError) process.exit(0);
  if (err instanceof OutputError) process.exit(1); // reported when it happened
  const e = err as Error & { code?: unknown };
  if (e instanceof CascadeError) {
    // the cause's message, unless the message already quotes it
    const cause = e.cause instanceof Error && !e.message.includes(e.cause.message) ? ` (${e.cause.message})` : '';
    process.stderr.write(`error: ${e.message}${cause}\n${missingValueHint(e.message)}`);
    process.exit(e instanceof InvalidArgumentError ? 2 : 1);
  }
  // an operating-system error (ENOSPC writing the output, EACCES, …): one line, not a stack trace
  if (typeof e?.code === 'string' && /^E[A-Z]+$/.test(e.code)) {
    process.stderr.write(`error: ${e.message}\n`);
    process.exit(1);
  }
  throw err;
}
