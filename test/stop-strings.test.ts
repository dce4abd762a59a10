import test from 'ava';
import fc from 'fast-check';
import { StopMatcher } from '../src/models/stop-strings.ts';

test('stop strings - the text before the first stop string, however the text is split; held back only while it could start one', (t) => {
  const m = new StopMatcher(['\n\n', 'END']);
  t.is(m.push('def f():\n'), 'def f():', 'a newline could begin "\\n\\n": held');
  t.is(m.push('    return 1\nE'), '\n    return 1\n', '"E" could begin "END"');
  t.is(m.push('NDING'), '');
  t.true(m.stopped);
  t.is(m.push('more'), '', 'nothing after a stop');
  t.is(m.flush(), '');
  const n = new StopMatcher(['。', '🛑']);
  t.is(n.push('你好'), '你好');
  t.is(n.push('世界。再见'), '世界');
  const o = new StopMatcher(['🛑']);
  t.is(o.push('go 🛑 stop'), 'go ');
  const p = new StopMatcher(['xyz']);
  t.is(p.push('abcx'), 'abc');
  t.is(p.flush(), 'x', 'held text comes out when generation ends without a stop');
  t.throws(() => new StopMatcher(['']), { instanceOf: RangeError });
});

test('stop strings - any split of a text gives the same output as the whole text at once (property)', (t) => {
  fc.assert(
    fc.property(fc.string({ unit: fc.constantFrom('a', 'b', '\n', 'é', '😀') , maxLength: 40 }), fc.array(fc.string({ unit: fc.constantFrom('a', 'b', '\n', 'é', '😀'), minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 4 }), fc.array(fc.nat(40), { maxLength: 6 }), (text, stops, cuts) => {
      const whole = new StopMatcher(stops);
      const expected = whole.push(text) + whole.flush();
      const split = new StopMatcher(stops);
      const points = [...new Set(cuts.map((c) => Math.min(c, text.length)))].sort((a, b) => a - b);
      let out = '';
      let from = 0;
      for (const p of [...points, text.length]) {
        out += split.push(text.slice(from, p));
        from = p;
      }
      out += split.flush();
      const first = Math.min(...stops.map((s) => (text.indexOf(s) < 0 ? Infinity : text.indexOf(s))));
      return out === expected && out === (Number.isFinite(first) ? text.slice(0, first) : text);
    }),
    { numRuns: 2000, seed: 1 },
  );
  t.pass();
});
