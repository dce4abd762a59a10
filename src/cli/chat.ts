import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { InvalidArgumentError } from '../errors.ts';
import { CHAT_ROLES, templateRole, type ChatMessage } from '../models/chat-template.ts';
import { describeIssues } from '../issues.ts';

/** `--message ROLE=TEXT`, repeatable: each adds one message, in order (TEXT may hold `=` and newlines). */
export function collectMessage(raw: string, previous: ChatMessage[] | undefined): ChatMessage[] {
  const at = raw.indexOf('=');
  if (at <= 0) throw new InvalidArgumentError(`--message must be ROLE=TEXT, e.g. --message user=hello; got "${raw}"`);
  const role = raw.slice(0, at);
  if (!(CHAT_ROLES as readonly string[]).includes(role)) throw new InvalidArgumentError(`--message role "${role}" is not one of ${CHAT_ROLES.join(', ')} (the gateway's chat roles)`);
  return [...(previous ?? []), { role: templateRole(role), content: raw.slice(at + 1) }];
}

const ChatFile = z.array(z.object({ role: z.enum(CHAT_ROLES), content: z.string() }).strict()).min(1);

/** `--chat-file F`: a JSON array of `{role, content}` messages, as an OpenAI request's `messages`. */
export function readChatFile(path: string): ChatMessage[] {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (cause) {
    throw new InvalidArgumentError(`cannot read --chat-file ${path}: ${(cause as Error).message}`, { cause });
  }
  const parsed = ChatFile.safeParse(raw);
  if (!parsed.success) throw new InvalidArgumentError(`--chat-file ${path} must be a JSON array of {role, content} messages: ${describeIssues(parsed.error)}`);
  return parsed.data.map((m) => ({ ...m, role: templateRole(m.role) }));
}
