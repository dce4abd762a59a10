import { z } from 'zod';

/** zod's own messages start so; a schema's custom messages (which name their field) do not. */
const ZOD_MESSAGE = /^(Invalid|Too (small|big)|Unrecognized)/;

/** Whether an issue says a value is absent: a wrong type of `undefined`, or a union every branch of which found nothing. */
function missing(issue: z.core.$ZodIssue): boolean {
  const absent = (i: z.core.$ZodIssue) => i.code === 'invalid_type' && / received undefined$/.test(i.message);
  if (absent(issue)) return true;
  return issue.code === 'invalid_union' && issue.errors.length > 0 && issue.errors.every((branch) => branch.some(absent));
}

/** One issue in a line, its field quoted in zod's dotted form (`messages[0].content`), as OpenAI's 400s name a parameter. */
function describeIssue(issue: z.core.$ZodIssue, noun: string, root: string): string {
  const path = z.core.toDotPath(issue.path);
  if (!ZOD_MESSAGE.test(issue.message)) {
    // a schema's own message: kept, led by its field's path unless it names the field already
    const key = [...issue.path].reverse().find((p): p is string => typeof p === 'string');
    return !path || (key !== undefined && new RegExp(`\\b${key.replace(/[^\w]/g, '\\$&')}\\b`).test(issue.message)) ? issue.message : `'${path}': ${issue.message}`;
  }
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => `'${path ? `${path}.` : ''}${k}'`);
    return `unrecognized ${noun}${keys.length > 1 ? 's' : ''} ${keys.join(', ')}`;
  }
  if (missing(issue)) return path ? `missing required ${noun} '${path}'` : `${root} is missing`;
  const what = issue.message.replace(/^Invalid (input|option): /, '');
  if (!path) return issue.code === 'invalid_type' ? `${root} must be ${/^[aeiou]/.test(issue.expected) ? 'an' : 'a'} ${issue.expected}${what.replace(/^expected \w+/, '')}` : `${root}: ${what[0]!.toLowerCase()}${what.slice(1)}`;
  return `invalid '${path}': ${what[0]!.toLowerCase()}${what.slice(1)}`;
}

/**
 * A zod error as one line for a person: its first `max` issues, each naming its field
 * (`missing required parameter 'messages[0].content'`, `invalid 'max_tokens': too small: expected
 * number to be >=1`, `unrecognized key 'drafter'`), joined by "; ", with how many more there were.
 * A schema's own messages are kept, led by their field's path unless they name the field. `noun` names a field: "parameter" for the HTTP API,
 * "key" (the default) for files; `root` names the whole value ("the request body"; default "the value").
 */
export function describeIssues(error: z.ZodError, options: { noun?: string; root?: string; max?: number } = {}): string {
  const { noun = 'key', root = 'the value', max = 3 } = options;
  const lines = error.issues.slice(0, max).map((i) => describeIssue(i, noun, root));
  const more = error.issues.length - max;
  return `${lines.join('; ')}${more > 0 ? ` (and ${more} more)` : ''}`;
}
