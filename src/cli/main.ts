import { Command, CommanderError } from 'commander';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { registerBench } from './bench.ts';
import { registerCluster } from './cluster.ts';
import { registerGenerate } from './generate.ts';
import { ReaderGoneError, watchStdout } from './stdout.ts';

const program = new Command('cascade')
  .description('Cascade Speculative Drafting + ADORE inference: embedded or as a NATS/Redis cluster')
  .showHelpAfterError()
  .exitOverride();
registerGenerate(program);
registerBench(program);
registerCluster(program);

// A reader that stops early (`cascade generate … | head`) ends the output quietly, with status 0.
watchStdout();

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  if (err instanceof ReaderGoneError) process.exit(0);
  const e = err as Error;
  if (e instanceof CascadeError) {
    process.stderr.write(`error: ${e.message}${e.cause instanceof Error ? ` (${e.cause.message})` : ''}\n`);
    process.exit(e instanceof InvalidArgumentError ? 2 : 1);
  }
  throw err;
}
