import test from 'ava';
import { LogWriter } from '../src/cluster/log-writer.ts';
import { MemoryRequestLog, RequestSupersededError, type RequestLog } from '../src/cluster/redis-store.ts';
import type { TokenLogprob } from '../src/kernels/sampling.ts';

/** A MemoryRequestLog whose appends wait until released, one by one, as a slow Redis would answer. */
class GatedLog extends MemoryRequestLog {
  readonly appends: number[][] = [];
  private readonly gates: (() => void)[] = [];
  override async append(request: string, fence: number, offset: number, tokens: readonly number[], logprobs?: { readonly top: number; readonly list: readonly TokenLogprob[] }): Promise<void> {
    this.appends.push([...tokens]);
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return super.append(request, fence, offset, tokens, logprobs);
  }
  /** Lets the oldest waiting append through and lets its continuation run. */
  async release(): Promise<void> {
    this.gates.shift()?.();
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }
}

const recorder = () => {
  const streamed: { offset: number; tokens: number[] }[] = [];
  return { streamed, onRecorded: (offset: number, tokens: number[]) => void streamed.push({ offset, tokens }) };
};

test('log writer - rounds pushed while an append is in flight go in the next one; the stream follows the log', async (t) => {
  const log = new GatedLog();
  const fence = await log.claim('r');
  const { streamed, onRecorded } = recorder();
  const writer = new LogWriter(log, 'r', fence, 0, undefined, onRecorded);
  writer.push([1, 2]);
  writer.push([3]);
  writer.push([4, 5]);
  t.deepEqual(log.appends, [[1, 2]], 'one append in flight; push never waits for it');
  t.deepEqual(streamed, [], 'nothing streamed before the log holds it');
  await log.release();
  t.deepEqual(log.appends, [[1, 2], [3, 4, 5]], 'what was queued meanwhile goes in one batch');
  t.deepEqual(streamed, [{ offset: 0, tokens: [1, 2] }]);
  writer.push([6]);
  const settled = writer.settle();
  await log.release();
  await log.release();
  await settled;
  t.deepEqual(log.appends, [[1, 2], [3, 4, 5], [6]]);
  t.deepEqual(await log.read('r'), [1, 2, 3, 4, 5, 6]);
  t.deepEqual(streamed.map((s) => s.offset), [0, 2, 5]);
  t.is(writer.appendMs.length, 3);
});

test('log writer - a resumed attempt appends after the recorded tokens, logprobs batched with their tokens', async (t) => {
  const log: RequestLog = new MemoryRequestLog();
  const first = await log.claim('r');
  await log.append('r', first, 0, [7, 8]);
  const fence = await log.claim('r');
  const lp = (token: number): TokenLogprob => ({ token, logprob: -token / 10, top: [] });
  const { streamed, onRecorded } = recorder();
  const writer = new LogWriter(log, 'r', fence, 2, 0, onRecorded);
  writer.push([9], [lp(9)]);
  writer.push([10, 11], [lp(10), lp(11)]);
  await writer.settle();
  t.deepEqual(await log.read('r'), [7, 8, 9, 10, 11]);
  t.deepEqual((await log.readLogprobs('r', 0)).map((l) => l.token), [9, 10, 11]);
  t.deepEqual(streamed[0]!.offset, 2);
});

test('log writer - a newer claim stops it: nothing more is written or streamed, and push and settle throw', async (t) => {
  const log = new GatedLog();
  const fence = await log.claim('r');
  const { streamed, onRecorded } = recorder();
  const writer = new LogWriter(log, 'r', fence, 0, undefined, onRecorded);
  writer.push([1]);
  await log.release();
  await log.claim('r'); // a stall hand-over: another attempt takes the request
  writer.push([2]);
  await log.release();
  t.throws(() => writer.push([3]), { instanceOf: RequestSupersededError });
  await t.throwsAsync(writer.settle(), { instanceOf: RequestSupersededError });
  t.deepEqual(await log.read('r'), [1]);
  t.deepEqual(streamed, [{ offset: 0, tokens: [1] }]);
  t.deepEqual(log.appends, [[1], [2]], 'the refused batch is the last append');
});
