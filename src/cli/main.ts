import { Command, CommanderError } from 'commander';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { registerBench } from './bench.ts';
import { registerCluster } from './cluster.ts';
import { registerGenerate } from './generate.ts';
import { registerQuantize } from './quantize.ts';
import { registerRunBatch } from './run-batch.ts';
import { OutputError, ReaderGoneError, watchStdout } from './stdout.ts';

const program = new Command('cascade')
  .description('Cascade Speculative Drafting + ADORE inference: embedded or as a NATS/Redis cluster')
  .showHelpAfterError()
  .exitOverride();
registerGenerate(program);
registerBench(program);
registerCluster(program);
registerRunBatch(program);
registerQuantize(program);

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
    process.stderr.write(`error: ${e.message}${e.cause instanceof Error ? ` (${e.cause.message})` : ''}\n`);
    process.exit(e instanceof InvalidArgumentError ? 2 : 1);
  }
  // an operating-system error (ENOSPC writing the output, EACCES, …): one line, not a stack trace
  if (typeof e?.code === 'string' && /^E[A-Z]+$/.test(e.code)) {
    process.stderr.write(`error: ${e.message}\n`);
    process.exit(1);
  }
  throw err;
}
