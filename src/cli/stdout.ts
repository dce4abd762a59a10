import { CascadeError } from '../errors.ts';

/**
 * Standard output for streamed text. When its reader goes away (`cascade generate … | head`: EPIPE),
 * the next write throws ReaderGoneError instead of writing, so generation unwinds through its
 * `finally` blocks and the model worker threads are closed before the process ends. Exiting from
 * the EPIPE handler instead killed the process while an ONNX Runtime worker still ran (a native
 * "terminate called after throwing an instance of 'Napi::Error'" abort).
 */
export class ReaderGoneError extends CascadeError {
  override readonly name = 'ReaderGoneError';
}

/** Standard output failed for another reason (ENOSPC, EIO): already reported on stderr, exit status 1. */
export class OutputError extends CascadeError {
  override readonly name = 'OutputError';
}

let readerGone = false;
let failure: Error | undefined;

/**
 * Installs the error handler on process.stdout (once, from the CLI's entry point): EPIPE ends the
 * output quietly; any other write error is reported in one line and sets the exit status to 1.
 */
export function watchStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') {
      readerGone = true;
      return;
    }
    if (!failure) process.stderr.write(`error: cannot write to standard output: ${err.message}\n`);
    failure = err;
    process.exitCode = 1;
  });
}

/** Writes `text` to stdout; throws ReaderGoneError once its reader has gone, OutputError once it failed. */
export function writeOut(text: string): void {
  if (readerGone) throw new ReaderGoneError('standard output was closed by its reader');
  if (failure) throw new OutputError(`cannot write to standard output: ${failure.message}`, { cause: failure });
  process.stdout.write(text);
}
