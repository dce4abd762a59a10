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

let readerGone = false;

/** Installs the EPIPE handler on process.stdout (once, from the CLI's entry point). */
export function watchStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    readerGone = true;
  });
}

/** Writes `text` to stdout; throws ReaderGoneError once stdout's reader has gone. */
export function writeOut(text: string): void {
  if (readerGone) throw new ReaderGoneError('standard output was closed by its reader');
  process.stdout.write(text);
}
