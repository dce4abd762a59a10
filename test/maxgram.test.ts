import test from 'ava';
import fc from 'fast-check';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ModelLoadError } from '../src/errors.ts';
import { MaxGram, TrigramTable } from '../src/kernels/maxgram.ts';
import { loadFamily, loadMagTables } from '../src/models/family.ts';

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

/**
 * MaG by definition (SPEC §4.1), rescanning S ‖ proposal at every step; the fill takes `trigram`'s
 * successor of the last two tokens ([a, b, c] entries) where it has one, else the bigram's.
 */
function naivePropose(s: readonly number[], k: number, bigram: Uint32Array | undefined, minMatch = 1, recent = false, maxLen = Infinity, trigram: readonly (readonly [number, number, number])[] = []): number[] {
  const cur = [...s];
  const out: number[] = [];
  while (out.length < k) {
    const [len, end] = naiveMatch(cur, recent, maxLen);
    if (len < minMatch) break;
    const copied = cur.slice(end + 1, Math.min(cur.length, end + 1 + (k - out.length)));
    out.push(...copied);
    cur.push(...copied);
  }
  while (out.length < k && cur.length > 0) {
    const [a, b] = [cur[cur.length - 2], cur[cur.length - 1]!];
    const next = trigram.find((e) => e[0] === a && e[1] === b)?.[2] ?? (bigram ? bigram[b]! : b);
    out.push(next);
    cur.push(next);
  }
  return out;
}

/** A trigram table over the property test's alphabet (0-4) whose successors differ from the bigram's. */
const TRIGRAM_ENTRIES = [[0, 1, 3], [1, 2, 0], [2, 2, 4], [3, 0, 1], [4, 4, 2]] as const;

const bigram = Uint32Array.from({ length: 8 }, (_, i) => (i * 3 + 1) % 8);

type Op = { kind: 'append'; tokens: number[] } | { kind: 'truncate'; frac: number } | { kind: 'propose'; k: number };
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('append' as const), tokens: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 12 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('propose' as const), k: fc.integer({ min: 0, max: 10 }) }) },
);

test('maxgram - proposes exactly what a naive rescan proposes, through appends and truncations', (t) => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 40 }), fc.integer({ min: 1, max: 3 }), fc.boolean(), fc.boolean(), (ops, minMatch, recent, withTrigram) => {
      const maxLen = recent ? 4 : Infinity;
      const trigram = withTrigram ? TrigramTable.read(trigramBytes(8, TRIGRAM_ENTRIES), 'test table') : undefined;
      const mag = new MaxGram({ bigram, trigram, minMatch, occurrence: recent ? 'recent' : 'earliest', maxRecentLength: 4 });
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
          const want = naivePropose(ref, o.k, bigram, minMatch, recent, maxLen, withTrigram ? TRIGRAM_ENTRIES : []);
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

/** A trigram table file's bytes (maxgram.ts, TrigramTable) from [a, b, c] entries. */
function trigramBytes(vocab: number, entries: readonly (readonly [number, number, number])[]): Uint8Array {
  const sorted = [...entries].sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  const offsets = new Array<number>(vocab + 1).fill(0);
  for (const [a] of sorted) offsets[a + 1]!++;
  for (let i = 1; i <= vocab; i++) offsets[i]! += offsets[i - 1]!;
  const words = [0x3347414d, vocab, sorted.length, ...offsets, ...sorted.map((e) => e[1]), ...sorted.map((e) => e[2])];
  return new Uint8Array(Uint32Array.from(words).buffer);
}

test('maxgram - fills from the trigram table where it has the pair, else the bigram table; with it, a one-token match is not copied', (t) => {
  // bigram: i -> (3i + 1) mod 8; the trigram table says 2 after (1, 2) and 5 after (2, 7)
  const trigram = TrigramTable.read(trigramBytes(8, [[2, 7, 5], [1, 2, 2]]), 'test table');
  t.is(trigram.size, 2);
  t.is(trigram.next(1, 2), 2);
  t.is(trigram.next(1, 3), undefined);
  t.is(trigram.next(99, 2), undefined, 'an id past its vocabulary has no entry');
  const mag = new MaxGram({ bigram, trigram });
  mag.append([1, 2]);
  // (1,2) -> 2 by the trigram; (2,2) -> bigram[2] = 7; (2,7) -> 5 by the trigram; (7,5) -> bigram[5] = 0
  t.deepEqual(mag.propose(4), [2, 7, 5, 0]);
  const oneToken = new MaxGram({ bigram, trigram });
  oneToken.append([6, 1, 4, 6]);
  t.deepEqual(oneToken.longestMatch(), { length: 1, end: 0 });
  t.deepEqual(oneToken.propose(1), [bigram[6]!], 'a match of one token is not copied (minMatch 2 with a trigram table)');
  t.deepEqual(oneToken.propose(1, false), []);
  const copies = new MaxGram({ bigram, trigram, minMatch: 1 });
  copies.append([6, 1, 4, 6]);
  t.deepEqual(copies.propose(1), [1], 'unless minMatch says otherwise');
  const two = new MaxGram({ bigram, trigram });
  two.append([6, 1, 4, 6, 1]);
  t.deepEqual(two.propose(2), [4, 6], 'a two-token match is copied');
});

test('maxgram - a trigram table file that is not one is refused, naming what is wrong', (t) => {
  const good = trigramBytes(8, [[1, 2, 3]]);
  const unsorted = new Uint32Array(trigramBytes(8, [[1, 2, 3], [1, 5, 3]]).buffer.slice(0));
  [unsorted[12], unsorted[13]] = [5, 2]; // the seconds of token 1's two pairs, swapped
  t.throws(() => TrigramTable.read(new Uint8Array(unsorted.buffer), 'f'), { message: /f has the pairs of token 1 out of order/ });
  t.notThrows(() => TrigramTable.read(good, 'f'));
  t.throws(() => TrigramTable.read(good.subarray(0, good.length - 4), 'f'), { instanceOf: RangeError, message: /f is truncated or padded: its header says 8 tokens and 1 entries/ });
  t.throws(() => TrigramTable.read(new Uint8Array(Uint32Array.from([1, 2, 3]).buffer), 'f'), { message: /f is not a trigram table \(it does not start with "MAG3"\)/ });
  t.throws(() => TrigramTable.read(new Uint8Array(7), 'f'), { message: /f is not a trigram table: 7 bytes/ });
  t.throws(() => TrigramTable.read(trigramBytes(8, [[1, 9, 3]]), 'f'), { message: /names a token id at or past its vocabulary of 8/ });
  const swapped = new Uint32Array(trigramBytes(8, [[1, 2, 3], [5, 2, 3]]).buffer.slice(0));
  [swapped[5], swapped[9]] = [2, 0];
  t.throws(() => TrigramTable.read(new Uint8Array(swapped.buffer), 'f'), { message: /row offsets that do not ascend/ });
});

test('maxgram - a family\'s trigram table that is missing or not one is a ModelLoadError naming the file and how to rebuild it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'trigram-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'family.json'), JSON.stringify({ target: 'target', drafters: [], bigram: 'bigram.bin', trigram: 'trigram.bin' }));
  writeFileSync(join(dir, 'bigram.bin'), new Uint8Array(Uint32Array.from(bigram).buffer));
  t.throws(() => loadMagTables(loadFamily(dir)), { instanceOf: ModelLoadError, message: /family\.json names trigram table .*trigram\.bin, which does not exist: rebuild the tables with python3 tools\/train\/bigram\.py .* or remove "trigram" from family\.json/ });
  mkdirSync(join(dir, 'trigram.bin'));
  t.throws(() => loadMagTables(loadFamily(dir)), { instanceOf: ModelLoadError, message: /trigram table .*trigram\.bin, which is not a file/ });
  rmSync(join(dir, 'trigram.bin'), { recursive: true });
  writeFileSync(join(dir, 'trigram.bin'), 'not a table');
  t.throws(() => loadMagTables(loadFamily(dir)), { instanceOf: ModelLoadError, message: /trigram table .*trigram\.bin is not a trigram table: 11 bytes: rebuild the tables/ });
  writeFileSync(join(dir, 'trigram.bin'), trigramBytes(8, [[1, 2, 3]]));
  t.throws(() => loadMagTables(loadFamily(dir), 6), { instanceOf: ModelLoadError, message: /bigram table .*bigram\.bin covers 8 tokens, more than the target's vocabulary of 6: it was built for another tokenizer/ });
  writeFileSync(join(dir, 'bigram.bin'), new Uint8Array(Uint32Array.from(bigram.slice(0, 6).map((x) => x % 6)).buffer));
  t.throws(() => loadMagTables(loadFamily(dir), 6), { instanceOf: ModelLoadError, message: /trigram table .*trigram\.bin covers 8 tokens, more than the target's vocabulary of 6/ });
  writeFileSync(join(dir, 'bigram.bin'), new Uint8Array(Uint32Array.from(bigram).buffer));
  const tables = loadMagTables(loadFamily(dir), 8);
  t.is(tables.trigram?.next(1, 2), 3);
  t.deepEqual([...tables.bigram!], [...bigram]);
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
