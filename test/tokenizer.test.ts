import test from 'ava';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { OFF_THREAD_CHARS, TokenizerThread } from '../src/models/tokenizer-thread.ts';
import { dirOf, family, members, reference } from './helpers/family.ts';
import { loadModelSpec } from '../src/models/config.ts';

const tok = TextTokenizer.load(loadModelSpec(dirOf(family.target)).tokenizerPath);

test('tokenizer - round trip is lossless on arbitrary unicode text', (t) => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 200 }), (s) => tok.decode(tok.encode(s)) === s),
    { numRuns: 500, seed: 7 },
  );
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 100 }).filter((s) => s.isWellFormed()), (s) => tok.decode(tok.encode(s)) === s), {
    numRuns: 500,
    seed: 8,
  });
  t.pass();
});

test('tokenizer - code, whitespace runs, control characters and emoji survive exactly', (t) => {
  for (const s of ['def f(x):\n\treturn  x != 1\n', ' a  b   c\r\n', '\u0000\u0001\u007f', '😀 中文 ß', "it's ' s", '  ,  .  ', '']) {
    t.is(tok.decode(tok.encode(s)), s);
  }
});

test('tokenizer - every member shares the target tokenizer and matches the training encoder', (t) => {
  const targetSpec = loadModelSpec(dirOf(family.target));
  for (const name of members) {
    const spec = loadModelSpec(dirOf(name));
    t.is(spec.vocabSize, targetSpec.vocabSize, name);
    const ref = reference(name);
    t.deepEqual(TextTokenizer.load(spec.tokenizerPath).encode(ref.text).slice(0, ref.inputIds.length), ref.inputIds, name);
  }
});

test('tokenizer - streaming decode releases only complete characters', (t) => {
  const text = 'naïve 😀 text';
  const ids = tok.encode(text);
  const stream = tok.stream();
  let out = '';
  for (const id of ids) {
    const piece = stream.push([id]);
    t.false(piece.includes('\ufffd'));
    out += piece;
  }
  t.is(out + stream.flush(), text);
});

test('tokenizer - the streaming decoder releases exactly the whole text, chunk by chunk, with no replacement character for CJK or emoji split across byte tokens', (t) => {
  const unit = fc.constantFrom('a', ' ', '\n', 'def', 'é', '你', '好', '世界', '😀', '🛑', '한', 'ü', '→');
  fc.assert(
    fc.property(fc.array(unit, { minLength: 1, maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 20 }), (parts, sizes) => {
      const text = parts.join('');
      const ids = tok.encode(text);
      const stream = tok.stream();
      const deltas: string[] = [];
      for (let at = 0, k = 0; at < ids.length; k++) {
        const n = sizes[k % sizes.length]!;
        deltas.push(stream.push(ids.slice(at, at + n)));
        at += n;
      }
      deltas.push(stream.flush());
      return deltas.join('') === tok.decode(ids) && deltas.every((d) => !d.includes('\uFFFD'));
    }),
    { numRuns: 300, seed: 2 },
  );
  const cjk = tok.encode('你好😀');
  t.true(cjk.length > 3, `multi-byte characters span several byte tokens here (${cjk.length} ids)`);
});

test('tokenizer - each token\'s bytes concatenate to the text\'s UTF-8; a token inside a character is named by its bytes', (t) => {
  const text = 'héllo 世界 🎉 naïve';
  const ids = tok.encode(text);
  const bytes = Buffer.concat(ids.map((id) => tok.tokenBytes(id)));
  t.true(bytes.equals(Buffer.from(text, 'utf8')));
  const partial = ids.filter((id) => tok.tokenText(id).startsWith('bytes:'));
  t.true(partial.length > 0, 'the emoji is split across byte tokens in this vocabulary');
  for (const id of partial) t.is(tok.tokenText(id), 'bytes:' + [...tok.tokenBytes(id)].map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join(''));
  t.is(tok.tokenText(tok.encode(' the')[0]!), ' the');
});

test('tokenizer - a SentencePiece token keeps its leading space in its own text; byte-fallback pieces are their bytes', async (t) => {
  const sp = TextTokenizer.load(new URL('./fixtures/sentencepiece/tokenizer.json', import.meta.url).pathname);
  const ids = sp.encode('hello world€');
  t.is(sp.decode(ids), 'hello world€');
  t.true(ids.map((id) => sp.tokenText(id)).includes(' world'), 'not "world": decoding the token alone would strip the space');
  t.deepEqual(ids.slice(-3).map((id) => [...sp.tokenBytes(id)]), [[0xe2], [0x82], [0xac]]);
  const { TextOffsets } = await import('../src/cluster/gateway/logprobs.ts');
  const offsets = new TextOffsets(3);
  t.deepEqual(['ab', '€'].flatMap((s) => [...Buffer.from(s)].map((b) => offsets.next(Uint8Array.of(b)))), [3, 4, 5, 5, 5], 'the bytes of one character all begin where it does');
});

test('tokenizer - minTokens never exceeds the tokens of a text, its longest pieces run together included; a tokenizer that may drop or fuse text has no bound', (t) => {
  const vocab = [...(tok as unknown as { tok: { get_vocab(added: boolean): Map<string, number> } }).tok.get_vocab(true).keys()].sort((a, b) => b.length - a.length);
  const longest = vocab.slice(0, 20).map((p) => p.replaceAll('Ġ', ' ').replaceAll('Ċ', '\n'));
  fc.assert(
    fc.property(fc.array(fc.oneof(fc.constantFrom(...longest), fc.string({ unit: 'grapheme', maxLength: 50 })), { maxLength: 40 }), (parts) => {
      const text = parts.join('');
      return tok.minTokens(text) <= tok.encode(text).length;
    }),
    { numRuns: 300, seed: 9 },
  );
  t.true(tok.minTokens('x'.repeat(1_000_000)) > 2048, 'a megabyte of text is known too long for a 2048-token context');
  const dir = mkdtempSync(join(tmpdir(), 'cascade-tok-'));
  try {
    const json = JSON.parse(readFileSync(loadModelSpec(dirOf(family.target)).tokenizerPath, 'utf8'));
    const variants: [object, boolean][] = [
      [{ normalizer: { type: 'NFKC' } }, true],
      [{ normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] } }, true],
      [{ normalizer: { type: 'StripAccents' } }, false],
      [{ normalizer: { type: 'Replace', pattern: { String: 'x' }, content: '' } }, false],
      [{ normalizer: { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' } }, false],
      [{ pre_tokenizer: { type: 'Whitespace' } }, false],
      [{ added_tokens: [...json.added_tokens, { id: 8191, content: '<x>', single_word: false, lstrip: true, rstrip: false, normalized: false, special: true }] }, false],
    ];
    for (const [change, bounded] of variants) {
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ ...json, ...change }));
      t.is(TextTokenizer.load(join(dir, 'tokenizer.json')).minTokens('x'.repeat(10_000)) > 0, bounded, JSON.stringify(change));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('tokenizer - a TokenizerThread gives the same ids off the event loop, and a worker that dies fails its call and is started again', async (t) => {
  const thread = new TokenizerThread(tok);
  try {
    for (const text of [' '.repeat(OFF_THREAD_CHARS), `${'const x = "é😀";\n'.repeat(2000)}`, 'short']) t.deepEqual(await thread.encode(text), tok.encode(text));
    const call = thread.encode('ab '.repeat(200_000));
    await thread.close();
    await t.throwsAsync(call, { message: /worker thread exited/ });
    t.deepEqual(await thread.encode(' '.repeat(OFF_THREAD_CHARS + 1)), tok.encode(' '.repeat(OFF_THREAD_CHARS + 1)), 'a new worker serves the next');
  } finally {
    await thread.close();
  }
});
