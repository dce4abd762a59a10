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

/** Answers `err` in OpenAI's shape: `{ error: { message, type, param, code } }`, code being the HTTP status. */
export function sendError(reply: FastifyReply, err: HttpError): FastifyReply {
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  return reply.code(err.status).send({ error: { message: err.message, type: err.type, param: err.param, code: err.status } });
}
