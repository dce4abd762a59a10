import { Command, CommanderError } from 'commander';
import { CascadeError, InvalidArgumentError } from '../errors.ts';
import { registerBench } from './bench.ts';
import { registerCluster } from './cluster.ts';
import { registerGenerate } from './generate.ts';

const program = new Command('cascade')
  .description('Cascade Speculative Drafting + ADORE inference: embedded or as a NATS/Redis cluster')
  .showHelpAfterError()
  .exitOverride();
registerGenerate(program);
registerBench(program);
registerCluster(program);

// A reader that stops early (`cascade generate … | head`) ends the output, not with a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  const e = err as Error;
  if (e instanceof CascadeError) {
    process.stderr.write(`error: ${e.message}${e.cause instanceof Error ? ` (${e.cause.message})` : ''}\n`);
    process.exit(e instanceof InvalidArgumentError ? 2 : 1);
  }
  throw err;
}
