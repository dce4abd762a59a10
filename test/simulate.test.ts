import test from 'ava';
import { simulate, type SimulationParams } from '../src/bench/simulate.ts';

const base: SimulationParams = {
  sessions: 1,
  verifiers: 1,
  drafters: 1,
  latencyMs: 0,
  verify: { fixedMs: 10, sequenceMs: 0, tokenMs: 0 },
  draft: { fixedMs: 0, sequenceMs: 0, tokenMs: 0 },
  roundOverheadMs: 0,
  draftedPerRound: 0,
  tokensPerRound: 1,
  maxBatch: 16,
  windowMs: 1,
  horizonMs: 10_000,
};

const near = (x: number, y: number) => Math.abs(x - y) / y < 0.01;

test('simulator - one session decoding alone: one token per verifier pass, plus the network both ways and its own work', (t) => {
  t.true(near(simulate(base).tokensPerSecond, 100));
  t.true(near(simulate({ ...base, latencyMs: 1 }).tokensPerSecond, 1000 / 12));
  t.true(near(simulate({ ...base, latencyMs: 1, roundOverheadMs: 3 }).tokensPerSecond, 1000 / 15));
});

test('simulator - sessions batched on one verifier share its fixed cost; a per-token cost does not amortise', (t) => {
  const four = simulate({ ...base, sessions: 4 });
  t.true(near(four.tokensPerSecond, 400));
  t.true(near(four.meanVerifyBatch, 4));
  // fixed 2 ms + 2 ms per sequence: 1 session 250 tok/s, 4 sessions 4 tokens per 10 ms
  t.true(near(simulate({ ...base, verify: { fixedMs: 2, sequenceMs: 2, tokenMs: 0 } }).tokensPerSecond, 250));
  t.true(near(simulate({ ...base, sessions: 4, verify: { fixedMs: 2, sequenceMs: 2, tokenMs: 0 } }).tokensPerSecond, 400));
  // without a window, sessions that arrive a moment apart fall into alternating passes of 1 and 3
  t.true(near(simulate({ ...base, sessions: 4, windowMs: 0 }).tokensPerSecond, 200));
  // two verifier nodes serve two pinned halves
  t.true(near(simulate({ ...base, sessions: 4, verifiers: 2 }).tokensPerSecond, 400));
  t.true(near(simulate({ ...base, sessions: 4, verifiers: 2, maxBatch: 1 }).tokensPerSecond, 200));
});

test('simulator - a speculative round: drafting, then one review that scores the drafts and emits tokensPerRound', (t) => {
  // draft 2 ms + review 10 ms + 3 × 1 ms per scored token = 15 ms per round of 2.5 tokens
  const r = simulate({ ...base, verify: { fixedMs: 10, sequenceMs: 0, tokenMs: 1 }, draft: { fixedMs: 2, sequenceMs: 0, tokenMs: 0 }, draftedPerRound: 2, tokensPerRound: 2.5 });
  t.true(near(r.tokensPerSecond, 2500 / 15));
  t.true(r.drafterUtilisation > 0.1 && r.drafterUtilisation < 0.2);
});

// Fault: a calibration that fitted every pass cost to 0 (a loaded machine) made a round take no time,
// and the simulation of `bench scale` ran without end (a CLI test's child process spun for 35 minutes).
test('simulator - costs that let no time pass are refused with the reason, never run without end', (t) => {
  const free = { fixedMs: 0, sequenceMs: 0, tokenMs: 0 };
  t.throws(() => simulate({ ...base, verify: free }), { instanceOf: RangeError, message: /would take 0 ms/ });
  t.throws(() => simulate({ ...base, verify: { ...free, fixedMs: NaN } }), { instanceOf: RangeError });
  t.throws(() => simulate({ ...base, verify: { ...free, fixedMs: 0.002 }, horizonMs: 1e9 }), { instanceOf: RangeError, message: /events/ });
  t.notThrows(() => simulate({ ...base, verify: { ...free, fixedMs: 0.002 } }));
});

// Fault (CI, a busy machine): a calibration fitted a negative per-sequence cost, so a pass of 16
// sequences cost nothing and the simulation stalled at 9.4 ms until MAX_EVENTS.
test('simulator - a negative fitted slope never makes a larger batch cheaper than a smaller one', (t) => {
  const r = simulate({ ...base, sessions: 16, verify: { fixedMs: 1, sequenceMs: -0.2, tokenMs: -0.01 } });
  t.true(Number.isFinite(r.tokensPerSecond) && r.tokensPerSecond > 0);
  t.true(r.meanVerifyBatch > 1);
});
