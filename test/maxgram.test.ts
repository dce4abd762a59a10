import test from 'ava';
import fc from 'fast-check';
import { MaxGram } from '../src/kernels/maxgram.ts';

/**
 * The longest suffix of s occurring earlier (at most maxLen tokens), by rescanning:
 * [length, end of its earliest occurrence] or, with recent, of its most recent one.
 */
function naiveMatch(s: readonly number[], recent = false, maxLen = Infinity): [number, number] {
  const n = s.length;
  for (let len = Math.min(n - 1, maxLen); len >= 1; len--) {
    const ends = Array.from({ length: Math.max(0, n - len) }, (_, i) => len - 1 + i);
    for (const end of recent ? ends.reverse() : ends) {
      let ok = true;
      for (let i = 0; i < len && ok; i++) ok = s[end - i] === s[n - 1 - i];
      if (ok) return [len, end];
    }
  }
  return [0, -1];
}

/** MaG by definition (SPEC §4.1), rescanning S ‖ proposal at every step. */
function naivePropose(s: readonly number[], k: number, bigram: Uint32Array | undefined, minMatch = 1, recent = false, maxLen = Infinity): number[] {
  const cur = [...s];
  const out: number[] = [];
  while (out.length < k) {
    const [len, end] = naiveMatch(cur, recent, maxLen);
    if (len < minMatch) break;
    const copied = cur.slice(end + 1, Math.min(cur.length, end + 1 + (k - out.length)));
    out.push(...copied);
    cur.push(...copied);
  }
  let prev = cur[cur.length - 1];
  while (out.length < k && prev !== undefined) {
    prev = bigram ? bigram[prev]! : prev;
    out.push(prev);
  }
  return out;
}

const bigram = Uint32Array.from({ length: 8 }, (_, i) => (i * 3 + 1) % 8);

type Op = { kind: 'append'; tokens: number[] } | { kind: 'truncate'; frac: number } | { kind: 'propose'; k: number };
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('append' as const), tokens: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 12 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('propose' as const), k: fc.integer({ min: 0, max: 10 }) }) },
);

test('maxgram - proposes exactly what a naive rescan proposes, through appends and truncations', (t) => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 40 }), fc.integer({ min: 1, max: 3 }), fc.boolean(), (ops, minMatch, recent) => {
      const maxLen = recent ? 4 : Infinity;
      const mag = new MaxGram({ bigram, minMatch, occurrence: recent ? 'recent' : 'earliest', maxRecentLength: 4 });
      const ref: number[] = [];
      for (const o of ops) {
        if (o.kind === 'append') {
          mag.append(o.tokens);
          ref.push(...o.tokens);
        } else if (o.kind === 'truncate') {
          const len = Math.floor(o.frac * ref.length);
          mag.truncate(len);
          ref.length = len;
        } else {
          const got = mag.propose(o.k);
          const want = naivePropose(ref, o.k, bigram, minMatch, recent, maxLen);
          if (JSON.stringify(got) !== JSON.stringify(want)) return false;
          const [len, end] = naiveMatch(ref, recent, maxLen);
          const m = mag.longestMatch();
          if (m.length !== len || (len > 0 && m.end !== end)) return false;
          if (JSON.stringify(mag.sequence()) !== JSON.stringify(ref)) return false;
        }
      }
      return true;
    }),
    { numRuns: 600, seed: 42 },
  );
  t.pass();
});

test('maxgram - copies the continuation of the earliest occurrence of the longest repeated suffix', (t) => {
  const mag = new MaxGram();
  mag.append([1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]);
  t.deepEqual(mag.longestMatch(), { length: 3, end: 2 });
  t.deepEqual(mag.propose(3), [4, 9, 1]);
});

test('maxgram - the recent variant copies from the most recent occurrence', (t) => {
  const mag = new MaxGram({ occurrence: 'recent' });
  mag.append([1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]);
  t.deepEqual(mag.longestMatch(), { length: 3, end: 7 });
  t.deepEqual(mag.propose(3), [5, 7, 1]);
});

test('maxgram - continues from its own proposal, then falls back to the bigram table', (t) => {
  const mag = new MaxGram({ bigram });
  mag.append([5, 6, 5]);
  // "5" occurred at 0, followed by 6, then 5 again: S' = 5 6 5 6 5 …, a periodic continuation.
  t.deepEqual(mag.propose(5), [6, 5, 6, 5, 6]);
  const fresh = new MaxGram({ bigram });
  fresh.append([1, 2]);
  t.deepEqual(fresh.propose(3), [bigram[2]!, bigram[bigram[2]!]!, bigram[bigram[bigram[2]!]!]!]);
  t.deepEqual(new MaxGram().propose(2), []);
  t.deepEqual(fresh.propose(3, false), [], 'without the bigram fill, nothing where nothing matches');
  const partial = new MaxGram({ bigram });
  partial.append([7, 8, 9, 4, 7]);
  t.deepEqual(partial.propose(6, false), [8, 9, 4, 7, 8, 9], 'without the fill, the copies alone');
  t.deepEqual(partial.propose(2), [8, 9], 'the sequence is unchanged after proposing');
});

test('maxgram - the index and the work of appending stay linear in the history (amortised O(1) per token)', (t) => {
  for (const alphabet of [2, 50, 5000]) {
    const mag = new MaxGram();
    const n = 50_000;
    let x = 1;
    for (let i = 0; i < n; i++) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      mag.append([i % 7 === 0 ? 0 : x % alphabet]);
    }
    const { states, undoEntries } = mag.indexSize();
    t.true(states <= 2 * n, `${states} states for ${n} tokens`);
    // A rescan per token would cost ~n²/2 = 1.25e9 steps here.
    t.true(undoEntries <= 6 * n, `${undoEntries} loop steps for ${n} tokens`);
  }
  const periodic = new MaxGram();
  for (let i = 0; i < 50_000; i++) periodic.append([i % 3]);
  t.true(periodic.indexSize().undoEntries <= 6 * 50_000);
});
