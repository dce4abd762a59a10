/**
 * IEEE 754 binary16 ("half", float16) <-> binary32 conversion on bit patterns. Node 20 has no
 * Float16Array, so float16 data (an ONNX export's KV and logits) lives in a Uint16Array of bit
 * patterns, as onnxruntime hands it out. Exact: every half is a float32, subnormals, infinities and
 * NaN payloads included; float32 -> half rounds to nearest, ties to even, overflowing to infinity.
 */

/** The float32 bit pattern (uint32) of the half with bit pattern `h`. */
export function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // subnormal: mant × 2^-24, renormalised
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** The half bit pattern nearest the float32 with bit pattern `x` (ties to even; NaN stays NaN, payload kept where it fits). */
export function floatBitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant === 0 ? 0 : mant >>> 13 || 0x200);
  const e = exp - 112; // the half's biased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // below 2^-25 even rounding up cannot reach the smallest subnormal, 2^-24
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    let m = full >>> shift;
    const rest = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rest > half || (rest === half && (m & 1) === 1)) m++;
    return sign | m; // m = 0x400 is the smallest normal, which is right
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // a carry into the exponent is right too (up to infinity)
  return h;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The value of the half with bit pattern `h`. */
export function halfToFloat(h: number): number {
  u32[0] = halfToFloatBits(h);
  return f32[0]!;
}

/** The bit pattern of the half nearest `value` (first rounded to float32, as a Float32Array store would). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  return floatBitsToHalf(u32[0]!);
}

let table: Uint32Array | undefined;

/** Halves as float32s (bit-exact, NaN payloads included), into `dst` when given (same length). */
export function halvesToFloats(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length !== src.length) throw new RangeError(`cannot convert ${src.length} halves into ${dst.length} floats`);
  if (!table) {
    table = new Uint32Array(0x10000);
    for (let h = 0; h < 0x10000; h++) table[h] = halfToFloatBits(h);
  }
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = table[src[i]!]!;
  return dst;
}

/** Float32s as the nearest halves (ties to even). */
export function floatsToHalves(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const dst = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) dst[i] = floatBitsToHalf(bits[i]!);
  return dst;
}
