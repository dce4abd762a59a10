import { z } from 'zod';

/** zod's own messages start so; a schema's custom messages (which name their field) do not. */
const ZOD_MESSAGE = /^(Invalid|Too (small|big)|Unrecognized)/;

/** Whether an issue says a value is absent: a wrong type of `undefined`, or a union every branch of which found nothing. */
function missing(issue: z.core.$ZodIssue): boolean {
  const absent = (i: z.core.$ZodIssue) => i.code === 'invalid_type' && / received undefined$/.test(i.message);
  if (absent(issue)) return true;
  return issue.code === 'invalid_union' && issue.errors.length > 0 && issue.errors.every((branch) => branch.some(absent));
}

/** Edit distance between `a` and `b` (Levenshtein), for a misspelt key's suggestion. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next.push(Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)));
    row = next;
  }
  return row[b.length]!;
}

/** The key of `known` a misspelt `key` most likely meant: the same but for case, `_` and `-` (max_tokens, maxTokens), or within 2 edits. */
function meant(key: string, known: readonly string[]): string | undefined {
  const plain = (k: string) => k.toLowerCase().replace(/[_-]/g, '');
  const same = known.find((k) => plain(k) === plain(key));
  if (same) return same;
  const [best] = known.map((k) => [k, distance(key, k)] as const).sort((x, y) => x[1] - y[1]);
  return best && best[1] <= Math.min(2, Math.floor(key.length / 3)) ? best[0] : undefined;
}

/** One issue in a line, its field quoted in zod's dotted form (`messages[0].content`), as OpenAI's 400s name a parameter. */
function describeIssue(issue: z.core.$ZodIssue, noun: string, root: string, known: readonly string[]): string {
  const path = z.core.toDotPath(issue.path);
  if (!ZOD_MESSAGE.test(issue.message)) {
    // a schema's own message: kept, led by its field's path unless it names the field already
    const key = [...issue.path].reverse().find((p): p is string => typeof p === 'string');
    return !path || (key !== undefined && new RegExp(`\\b${key.replace(/[^\w]/g, '\\$&')}\\b`).test(issue.message)) ? issue.message : `'${path}': ${issue.message}`;
  }
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => {
      const hint = path ? undefined : meant(k, known);
      return `'${path ? `${path}.` : ''}${k}'${hint ? ` (did you mean '${hint}'?)` : ''}`;
    });
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
 * A schema's own messages are kept, led by their field's path unless they name the field. `noun`
 * names a field: "parameter" for the HTTP API, "key" (the default) for files; `root` names the
 * whole value ("the request body"; default "the value"); `known` lists the top level's keys, so a
 * misspelt one is answered with the key it likely meant.
 */
export function describeIssues(error: z.ZodError, options: { noun?: string; root?: string; max?: number; known?: readonly string[] } = {}): string {
  const { noun = 'key', root = 'the value', max = 3, known = [] } = options;
  const lines = error.issues.slice(0, max).map((i) => describeIssue(i, noun, root, known));
  const more = error.issues.length - max;
  return `${lines.join('; ')}${more > 0 ? ` (and ${more} more)` : ''}`;
}
