import type { ServerResponse } from 'node:http';
import test from 'ava';
import { EventStream } from '../src/cluster/gateway/sse.ts';

// A stream's events written before its headers (a choice's tokens can arrive while the other
// choices are still being submitted) wait, and go out after the role and echo chunks.
test('sse - events written before open go out after the headers and the first events, in order; none after close', (t) => {
  const out: string[] = [];
  let head: number | undefined;
  const raw = { writeHead: (status: number) => ((head = status), raw), write: (s: string) => (t.truthy(head, 'nothing before the headers'), out.push(s)), end: (s?: string) => (s && out.push(s), raw) };
  const events = new EventStream(raw as unknown as ServerResponse);
  events.write({ text: 'early' });
  t.deepEqual(out, []);
  events.open([{ role: 'assistant' }, { text: 'echo' }]);
  events.write({ text: 'late' });
  events.done();
  t.is(head, 200);
  t.deepEqual(out, ['data: {"role":"assistant"}\n\n', 'data: {"text":"echo"}\n\n', 'data: {"text":"early"}\n\n', 'data: {"text":"late"}\n\n', 'data: [DONE]\n\n']);
  events.closed = true;
  events.write({ text: 'gone' });
  t.is(out.length, 5);
});
