import test from 'ava';
import fc from 'fast-check';
import { decode, encode, FrameError, FRAME_MAGIC, FRAME_VERSION, type Message } from '../src/cluster/messages.ts';

const messages: Message[] = [
  { type: 'open', session: 'req-1-0-t', sampling: { temperature: 0.5, topK: 40, topP: 0.875 }, seed: 0xfffffffffffffff9n },
  { type: 'propose', session: 's', base: 12, suffix: [1, 2, 4294967295], want: 4 },
  { type: 'review', session: 's', base: 0, suffix: [5, 6, 7], start: 1, lenience: 1, passUp: true, q: [undefined, new Float32Array([0.25, 0.75])] },
  { type: 'close', session: 's' },
  { type: 'opened', instance: 'ab12', model: 'draft-l2', vocabSize: 8192 },
  { type: 'proposed', tokens: [3, 4], q: [new Float32Array([1, 0]), undefined] },
  { type: 'reviewed', accepted: 2, token: 9, p: [] },
  { type: 'reviewed', accepted: 1, token: 3, p: [], load: { occupancy: 3.5, fixedMs: 6.25, tokenMs: 0.375 } },
  { type: 'proposed', tokens: [5], q: [undefined], load: { occupancy: 1, fixedMs: 0.5, tokenMs: 0 } },
  { type: 'closed' },
  { type: 'error', code: 'unknown-session', message: 'gone — ümlaut' },
  { type: 'tokens', offset: 17, tokens: [1, 2, 3] },
  { type: 'done', finishReason: 'stop', stats: JSON.stringify({ a: 1 }) },
  { type: 'failed', message: 'boom' },
  { type: 'stats' },
  { type: 'statsReply', instance: 'v0', sessions: 3 },
];

test('messages - every message type survives a round trip through its binary frame', (t) => {
  for (const m of messages) t.deepEqual(decode(encode(m)), m, m.type);
});

test('messages - rows decode from a Node Buffer view at any offset (NATS hands frames over as pool slices)', (t) => {
  const frame = encode({ type: 'reviewed', accepted: 1, token: 2, p: [new Float32Array([0.5, 0.25, 0.25])] });
  const pool = Buffer.alloc(frame.length + 7);
  pool.set(frame, 3);
  const view = pool.subarray(3, 3 + frame.length);
  const m = decode(view);
  t.deepEqual(m.type === 'reviewed' ? [...m.p[0]!] : [], [0.5, 0.25, 0.25]);
});

test('messages - token ids are little-endian uint32 after the header', (t) => {
  const frame = encode({ type: 'tokens', offset: 1, tokens: [0x01020304] });
  t.is(frame[0], FRAME_MAGIC);
  t.deepEqual([...frame.subarray(frame.length - 4)], [4, 3, 2, 1]);
});

test('messages - malformed frames are rejected with a FrameError naming the problem', (t) => {
  t.throws(() => decode(new Uint8Array([])), { instanceOf: FrameError, message: /truncated/ });
  t.throws(() => decode(new Uint8Array([0x00, 1, 0])), { instanceOf: FrameError, message: /magic/ });
  t.throws(() => decode(new Uint8Array([FRAME_MAGIC, 99, 0])), { instanceOf: FrameError, message: /version 99/ });
  t.throws(() => decode(new Uint8Array([FRAME_MAGIC, FRAME_VERSION, 200])), { instanceOf: FrameError, message: /unknown message type/ });
  const good = encode({ type: 'propose', session: 's', base: 0, suffix: [1, 2], want: 1 });
  t.throws(() => decode(good.subarray(0, good.length - 2)), { instanceOf: FrameError });
  t.throws(() => decode(new Uint8Array([...good, 0])), { instanceOf: FrameError, message: /unexpected bytes/ });
  // a hostile length field cannot make the decoder allocate gigabytes
  const hostile = new Uint8Array([FRAME_MAGIC, FRAME_VERSION, 9, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
  t.throws(() => decode(hostile), { instanceOf: FrameError, message: /more than a frame may carry/ });
  // a string field whose bytes are not UTF-8 (found by the random-bytes property below)
  t.throws(() => decode(new Uint8Array([FRAME_MAGIC, FRAME_VERSION, 0, 1, 0, 128])), { instanceOf: FrameError, message: /not valid UTF-8/ });
});

test('messages - random bytes never crash the decoder with anything but a FrameError', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.boolean(), (bytes, withHeader) => {
      const frame = withHeader ? new Uint8Array([FRAME_MAGIC, FRAME_VERSION, ...bytes]) : bytes;
      try {
        decode(frame);
      } catch (err) {
        if (!(err instanceof FrameError)) throw err;
      }
    }),
    { numRuns: 2000 },
  );
  t.pass();
});
