import type { FastifyReply } from 'fastify';

/** An error the gateway answers as it is: an HTTP status and OpenAI's error body (`type`, `param`), plus headers such as Retry-After. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = 'invalid_request_error',
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** OpenAI's error body for `err`: `{ error: { message, type, param, code } }`, code being the HTTP status; any other error is a 500. */
export function errorBody(err: Error): { error: { message: string; type: string; param: string | null; code: number } } {
  const e = err instanceof HttpError ? err : new HttpError(500, err.message, 'server_error');
  return { error: { message: e.message, type: e.type, param: e.param, code: e.status } };
}

/** Answers `err` in OpenAI's shape (errorBody), with its headers. */
export function sendError(reply: FastifyReply, err: HttpError): FastifyReply {
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  return reply.code(err.status).send(errorBody(err));
}
