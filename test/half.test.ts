import test from 'ava';
import { floatsToHalves, floatToHalf, halfToFloat, halvesToFloats } from '../src/kernels/half.ts';

test('half - every one of the 65536 half patterns round-trips f16 -> f32 -> f16 bit for bit', (t) => {
  const all = Uint16Array.from({ length: 0x10000 }, (_, h) => h);
  const back = floatsToHalves(halvesToFloats(all));
  const wrong = all.filter((h, i) => back[i] !== h);
  t.is(wrong.length, 0, `first wrong: ${wrong[0]?.toString(16)}`);
});

test('half - values of the special patterns: zeros, subnormals, the largest finite, infinities, NaN', (t) => {
  t.is(halfToFloat(0x0000), 0);
  t.true(Object.is(halfToFloat(0x8000), -0));
  t.is(halfToFloat(0x0001), 2 ** -24);
  t.is(halfToFloat(0x03ff), 1023 * 2 ** -24);
  t.is(halfToFloat(0x0400), 2 ** -14);
  t.is(halfToFloat(0x3c00), 1);
  t.is(halfToFloat(0xc000), -2);
  t.is(halfToFloat(0x7bff), 65504);
  t.is(halfToFloat(0x7c00), Infinity);
  t.is(halfToFloat(0xfc00), -Infinity);
  t.true(Number.isNaN(halfToFloat(0x7e00)));
  t.true(Number.isNaN(halfToFloat(0x7c01)));
});

test('half - float32 -> half rounds to nearest, ties to even, overflowing to infinity and underflowing to zero', (t) => {
  t.is(floatToHalf(1 + 2 ** -11), 0x3c00, 'a tie between 1 and its successor goes to the even 1');
  t.is(floatToHalf(1 + 3 * 2 ** -11), 0x3c02, 'a tie between odd and even goes to the even');
  t.is(floatToHalf(1 + 2 ** -11 + 2 ** -20), 0x3c01, 'just above the tie rounds up');
  t.is(floatToHalf(65504), 0x7bff);
  t.is(floatToHalf(65519), 0x7bff, 'below the midpoint to the next binade stays finite');
  t.is(floatToHalf(65520), 0x7c00, 'the midpoint rounds to even: infinity');
  t.is(floatToHalf(-1e9), 0xfc00);
  t.is(floatToHalf(2 ** -25), 0x0000, 'half the smallest subnormal is a tie: to even, zero');
  t.is(floatToHalf(-(2 ** -25)), 0x8000);
  t.is(floatToHalf(1.5 * 2 ** -25), 0x0001);
  t.is(floatToHalf(2.5 * 2 ** -24), 0x0002, 'a subnormal tie goes to even');
  t.is(floatToHalf(3.5 * 2 ** -24), 0x0004);
  t.is(floatToHalf(2 ** -14 - 2 ** -26), 0x0400, 'the largest subnormal rounds up into the smallest normal');
  t.is(floatToHalf(1e-10), 0x0000);
  t.is(floatToHalf(Infinity), 0x7c00);
  t.true((floatToHalf(NaN) & 0x7c00) === 0x7c00 && (floatToHalf(NaN) & 0x3ff) !== 0, 'NaN stays NaN');
});

test('half - float32 -> half gives the nearest half for random floats over the whole range', (t) => {
  let seed = 12345;
  const next = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0), seed / 2 ** 32);
  const finite = (h: number) => (h & 0x7c00) !== 0x7c00;
  for (let i = 0; i < 20000; i++) {
    const v = Math.fround((next() < 0.5 ? -1 : 1) * 2 ** (next() * 44 - 28) * (1 + next()));
    const h = floatToHalf(v);
    if (!finite(h)) {
      t.true(Math.abs(v) >= 65520, `${v} overflowed`);
      continue;
    }
    const err = Math.abs(halfToFloat(h) - v);
    // both neighbours (one step up and down in magnitude) are no nearer
    for (const n of [h + 1, h - 1]) {
      if ((n & 0x7fff) === 0x7fff || (h & 0x7fff) === 0 || !finite(n)) continue;
      const other = Math.abs(halfToFloat(n) - v);
      if (other < err || (other === err && (h & 1) === 1)) t.fail(`${v}: ${h.toString(16)} is not the nearest (even) half; ${n.toString(16)} is`);
    }
  }
  t.pass();
});
