/**
 * Error classes with stable `name`s. Code inside the project throws these; edges (CLI, HTTP, NATS)
 * map them to exit codes, status codes or error replies. `isRetryable` says whether the same request
 * may succeed if tried again (a dead worker, a lost connection) or never will (bad input).
 */
export class CascadeError extends Error {
  override readonly name: string = 'CascadeError';
  readonly isRetryable: boolean = false;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Input that will never succeed as given: a bad flag, prompt, sampling parameter or config value. */
export class InvalidArgumentError extends CascadeError {
  override readonly name = 'InvalidArgumentError';
  /**
   * The API's field of a request's `cascade` object that the error concerns (`k_matrix`, `lenience`,
   * `mag_first`, `drafters`), where one does: the gateway answers it as OpenAI's `param`, `cascade.<field>`.
   */
  readonly field?: string;
  constructor(message: string, options?: { cause?: unknown; field?: string }) {
    super(message, options);
    if (options?.field) this.field = options.field;
  }
}

/** A model directory that is missing, incomplete or does not follow the ONNX contract (SPEC §3). */
export class ModelLoadError extends CascadeError {
  override readonly name = 'ModelLoadError';
}

/** A model worker failed while running; the session's state in that worker is gone. */
export class ModelRuntimeError extends CascadeError {
  override readonly name = 'ModelRuntimeError';
  override readonly isRetryable = true;
}

/** An operation on a session or sequence that is not (or no longer) known. */
export class SequenceError extends CascadeError {
  override readonly name = 'SequenceError';
}

/** A cascade level (a drafter or verifier actor) cannot be reached: no instance answers, or it timed out. */
export class LevelUnavailableError extends CascadeError {
  override readonly name = 'LevelUnavailableError';
  override readonly isRetryable = true;
  constructor(
    /** The level's name in the cascade (its model). */
    readonly level: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export const isRetryable = (err: unknown): boolean => err instanceof CascadeError && err.isRetryable;
