import { timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { HttpError, sendError } from './errors.ts';

/**
 * The gateway's onRequest hook: `Authorization: Bearer <key>` must name one of `apiKeys` (compared in
 * constant time), or the request gets a 401. /health, /live and /metrics stay open; no keys = no
 * authentication (local use only).
 */
export function bearerAuth(apiKeys: readonly string[]): (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined> {
  const keys = apiKeys.map((k) => Buffer.from(k));
  return async (req, reply) => {
    if (!keys.length || req.url === '/health' || req.url === '/live' || req.url === '/metrics') return;
    const header = req.headers.authorization ?? '';
    const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '');
    if (!keys.some((k) => k.length === given.length && timingSafeEqual(k, given))) {
      return sendError(reply, new HttpError(401, 'missing or invalid API key (send Authorization: Bearer <key>)', 'authentication_error'));
    }
  };
}
