import test from 'ava';
import fc from 'fast-check';
import { decode, encode, FrameError, FRAME_MAGIC, FRAME_VERSION, type Message } from '../src/cluster/messages.ts';

const messages: Message[] = [
  { type: 'open', session: 'req-1-0-t', sampling: { temperature: 0.5, topK: 40, topP: 0.875 }, seed: 0xfffffffffffffff9n, target: true, promptLength: 7, verification: 'invariant' },
  {
    type: 'open',
    session: 'req-2-0-d0',
    sampling: { temperature: 0.7, topK: 0, topP: 1, minP: 0.05, repetitionPenalty: 1.1, presencePenalty: 0.1, frequencyPenalty: -0.3, logitBias: { 7: -100, 8192: 2.5 } },
    seed: 3n,
    target: false,
    promptLength: 12,
    verification: 'rejection',
  },
  { type: 'propose', session: 's', base: 12, suffix: [1, 2, 4294967295], want: 4 },
  { type: 'review', session: 's', base: 0, suffix: [5, 6, 7], start: 1, lenience: 1, passUp: true, q: [undefined, new Float32Array([0.25, 0.75])] },
  { type: 'close', session: 's' },
  { type: 'opened', instance: 'ab12', model: 'draft-l2', vocabSize: 8192 },
  { type: 'proposed', tokens: [3, 4], q: [new Float32Array([1, 0]), undefined] },
  { type: 'reviewed', accepted: 2, token: 9, p: [] },
  { type: 'reviewed', accepted: 1, token: 3, p: [], load: { occupancy: 3.5, fixedMs: 6.25, tokenMs: 0.375 } },
  { type: 'proposed', tokens: [5], q: [undefined], load: { occupancy: 1, fixedMs: 0.5, tokenMs: 0 } },
  { type: 'proposed', tokens: [5], q: [undefined], load: { occupancy: 1, fixedMs: 0.5, tokenMs: 0 }, serveMs: 1.5 },
  { type: 'reviewed', accepted: 0, token: 8, p: [], serveMs: 0.25 },
  { type: 'closed' },
  { type: 'error', code: 'unknown-session', message: 'gone — ümlaut' },
  { type: 'tokens', offset: 17, tokens: [1, 2, 3] },
  // log probabilities (frames v5): float64 values travel bit for bit
  { type: 'open', session: 'req-3-0-t', sampling: { temperature: 0, topK: 0, topP: 1 }, seed: 1n, target: true, promptLength: 3, logprobs: 0, verification: 'rejection' },
  { type: 'open', session: 'req-4-0-t', sampling: { temperature: 0, topK: 0, topP: 1 }, seed: 1n, target: true, promptLength: 3, logprobs: 20, verification: 'invariant' },
  { type: 'reviewed', accepted: 1, token: 4, p: [], logprobs: [{ token: 9, logprob: -0.1, top: [] }, { token: 4, logprob: Math.log(0.3), top: [{ token: 5, logprob: Math.log(0.6) }, { token: 4, logprob: Math.log(0.3) }] }] },
  { type: 'proposed', tokens: [6], q: [undefined], logprobs: [{ token: 6, logprob: -9999, top: [{ token: 1, logprob: -1e-9 }] }] },
  { type: 'tokens', offset: 2, tokens: [6, 7], logprobs: [{ token: 6, logprob: -2, top: [] }, { token: 7, logprob: 0, top: [] }] },
  { type: 'done', finishReason: 'stop', stats: JSON.stringify({ a: 1 }) },
  { type: 'failed', message: 'boom' },
  { type: 'stats' },
  { type: 'statsReply', instance: 'v0', sessions: 3 },
  { type: 'alive', model: 'draft-l1', instance: 'a1', sessions: 2 },
  { type: 'alive', model: 'target', instance: 'v0', sessions: 0, local: true, leaving: true },
  // the feature drafter beside a verify actor's target (frames v8)
  { type: 'open', session: 'req-5-0-t', sampling: { temperature: 0, topK: 0, topP: 1 }, seed: 1n, target: true, promptLength: 3, verification: 'invariant', eagle: true },
  { type: 'propose', session: 'req-5-0-t', base: 4, suffix: [7], want: 3, feature: true },
  // a drafter's runner-up, for async drafting's outcome branches (frames v9)
  { type: 'propose', session: 's', base: 2, suffix: [5], want: 1, runnerUp: true },
  { type: 'proposed', tokens: [5], q: [undefined], serveMs: 0.5, runnerUp: 4294967295 },
  { type: 'proposed', tokens: [5], q: [undefined], runnerUp: 0 },
];

test('messages - every message type survives a round trip through its binary frame', (t) => {
  for (const m of messages) t.deepEqual(decode(encode(m)), m, m.type);
});

test('messages - log probabilities must be one per token, finite and at most 0, with at most 20 alternatives', (t) => {
  const lp = (token: number, logprob = -1) => ({ token, logprob, top: [] });
  t.throws(() => decode(encode({ type: 'tokens', offset: 0, tokens: [1, 2], logprobs: [lp(1)] })), { instanceOf: FrameError, message: /1 log probabilities for 2 tokens/ });
  t.throws(() => decode(encode({ type: 'reviewed', accepted: 1, token: 2, p: [], logprobs: [lp(2)] })), { instanceOf: FrameError, message: /for 2 emitted tokens/ });
  t.throws(() => decode(encode({ type: 'tokens', offset: 0, tokens: [1], logprobs: [lp(1, 0.5)] })), { instanceOf: FrameError, message: /not a finite number <= 0/ });
  t.throws(() => decode(encode({ type: 'tokens', offset: 0, tokens: [1], logprobs: [lp(1, Number.NaN)] })), { instanceOf: FrameError });
  const many = { token: 1, logprob: -1, top: Array.from({ length: 21 }, (_, i) => ({ token: i, logprob: -1 })) };
  t.throws(() => decode(encode({ type: 'tokens', offset: 0, tokens: [1], logprobs: [many] })), { instanceOf: FrameError, message: /21 alternatives/ });
  t.throws(() => decode(encode({ type: 'open', session: 's', sampling: { temperature: 0, topK: 0, topP: 1 }, seed: 1n, target: true, promptLength: 0, logprobs: 21, verification: 'rejection' })), { instanceOf: FrameError, message: /21 alternatives/ });
  const open = encode({ type: 'open', session: 's', sampling: { temperature: 1, topK: 0, topP: 1 }, seed: 1n, target: true, promptLength: 0, verification: 'invariant' });
  open[open.length - 2] = 7; // the rule's byte, before `eagle`'s
  t.throws(() => decode(open), { instanceOf: FrameError, message: /unknown verification rule 7/ });
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
  t.deepEqual([...frame.subarray(frame.length - 8, frame.length - 4)], [4, 3, 2, 1], 'the id, then a count of 0 log probabilities');
});

test('messages - malformed frames are rejected with a FrameError naming the problem', (t) => {
  t.throws(() => decode(new Uint8Array([])), { instanceOf: FrameError, message: /truncated/ });
  t.throws(() => decode(new Uint8Array([0x00, 1, 0])), { instanceOf: FrameError, message: /magic/ });
  t.throws(() => decode(new Uint8Array([FRAME_MAGIC, 99, 0])), { instanceOf: FrameError, message: /version 99/ });
  t.throws(() => decode(new Uint8Array([FRAME_MAGIC, FRAME_VERSION, 200])), { instanceOf: FrameError, message: /unknown message type/ });
  const good = encode({ type: 'propose', session: 's', base: 0, suffix: [1, 2], want: 1 });
  t.throws(() => decode(good.subarray(0, good.length - 2)), { instanceOf: FrameError });
  t.throws(() => decode(new Uint8Array([...good, 0])), { instanceOf: FrameError, message: /unexpected bytes/ });
  const flags = new Uint8Array(good);
  flags[flags.length - 1] = 4;
  t.throws(() => decode(flags), { instanceOf: FrameError, message: /propose flags 4 name unknown options/ });
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

test('messages - a row with few non-zero entries travels sparse, bit for bit, and expands to its full width', (t) => {
  // a drafter's top-256 q over a 152k vocabulary: 608 KB dense, about 2 KB sparse
  const width = 152_064;
  const row = new Float32Array(width);
  for (let i = 0; i < 256; i++) row[(i * 593 + 7) % width] = Math.fround(1 / 3 + i * 1e-7); // values with every mantissa bit in use
  row[width - 1] = 5e-45; // a subnormal survives too
  const m: Message = { type: 'proposed', tokens: [7], q: [row, undefined] };
  const frame = encode(m);
  t.true(frame.length < 3_000, `${frame.length} bytes`);
  const back = decode(frame);
  if (back.type !== 'proposed') return t.fail();
  t.is(back.q[0]!.length, width);
  t.true(Buffer.from(back.q[0]!.buffer).equals(Buffer.from(row.buffer)), 'every entry, zeros included, is bit-identical');
  t.is(back.q[1], undefined);
  // a dense row stays dense (the smaller encoding wins)
  const dense = Float32Array.from({ length: 9 }, (_, i) => i + 1);
  t.is(encode({ type: 'proposed', tokens: [1], q: [dense] }).length, encode({ type: 'proposed', tokens: [1], q: [undefined] }).length + 4 + 36);
});

test('messages - a malformed sparse row is a FrameError: ids out of order, past the width, more entries than the width', (t) => {
  // a 'proposed' frame: tokens [1], then one sparse row (marker 2) of width w with n ids and n values, then no log probabilities, no load, no handler time, no runner-up
  const frame = (w: number, ids: number[]) => {
    const b = Buffer.alloc(3 + 8 + 4 + 1 + 8 + 8 * ids.length + 4 + 1 + 1 + 1);
    let at = b.writeUInt8(FRAME_MAGIC, 0);
    at = b.writeUInt8(FRAME_VERSION, at);
    at = b.writeUInt8(5, at); // 'proposed'
    at = b.writeUInt32LE(1, at);
    at = b.writeUInt32LE(1, at);
    at = b.writeUInt32LE(1, at); // one row
    at = b.writeUInt8(2, at);
    at = b.writeUInt32LE(w, at);
    at = b.writeUInt32LE(ids.length, at);
    for (const id of ids) at = b.writeUInt32LE(id, at);
    for (const _ of ids) at = b.writeFloatLE(0.5, at);
    at = b.writeUInt32LE(0, at); // no log probabilities
    at = b.writeUInt8(0, at); // no load
    at = b.writeUInt8(0, at); // no handler time
    b.writeUInt8(0, at); // no runner-up
    return new Uint8Array(b);
  };
  const ok = decode(frame(4, [1, 3]));
  t.deepEqual(ok.type === 'proposed' ? [...ok.q[0]!] : [], [0, 0.5, 0, 0.5]);
  t.throws(() => decode(frame(4, [3, 1])), { instanceOf: FrameError, message: /ascend/ });
  t.throws(() => decode(frame(4, [1, 1])), { instanceOf: FrameError, message: /ascend/ });
  t.throws(() => decode(frame(4, [4])), { instanceOf: FrameError, message: /ascend below 4/ });
  t.throws(() => decode(frame(1, [0, 1])), { instanceOf: FrameError, message: /claims 2 entries/ });
  // 9 bytes claim a row of 2^20 entries: 40 such rows (360 bytes) may not expand to 160 MB
  const rows = 40;
  const hostile = Buffer.alloc(3 + 8 + 4 + rows * 9 + 1);
  let at = hostile.writeUInt8(FRAME_MAGIC, 0);
  at = hostile.writeUInt8(FRAME_VERSION, at);
  at = hostile.writeUInt8(5, at);
  at = hostile.writeUInt32LE(1, at);
  at = hostile.writeUInt32LE(1, at);
  at = hostile.writeUInt32LE(rows, at);
  for (let i = 0; i < rows; i++) {
    at = hostile.writeUInt8(2, at);
    at = hostile.writeUInt32LE(1 << 20, at);
    at = hostile.writeUInt32LE(0, at);
  }
  t.throws(() => decode(new Uint8Array(hostile)), { instanceOf: FrameError, message: /expand to more than/ });
});
