import { uniformFloat64 } from 'pure-rand/distribution/uniformFloat64';
import { xoroshiro128plusFromState } from 'pure-rand/generator/xoroshiro128plus';

/**
 * A sampling seed: any integer a JSON number holds exactly (|seed| <= 2^53 - 1), or a 64-bit value
 * as a bigint (what the cluster's frames carry). Seeds are read modulo 2^64, so -1 and 2^64 - 1 are
 * the same seed; no two distinct safe integers are.
 */
export type Seed = number | bigint;

const MASK64 = (1n << 64n) - 1n;
const GOLDEN_GAMMA = 0x9e3779b97f4a7c15n;

/**
 * One splitmix64 output for the state `x` (Steele, Lea & Flood, OOPSLA 2014; Vigna's reference
 * splitmix64.c): the state advances by the golden gamma and is finalised by the variant-13 mixer.
 * Consecutive inputs give uncorrelated outputs, which is why it seeds the xoroshiro family.
 */
export function splitmix64(x: bigint): bigint {
  let z = (x + GOLDEN_GAMMA) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

/** The seed as an unsigned 64-bit integer; throws RangeError for a number that is not a safe integer. */
export function seed64(seed: Seed): bigint {
  if (typeof seed === 'number' && !Number.isSafeInteger(seed)) throw new RangeError(`a seed must be an integer of at most 53 bits, got ${seed}`);
  return BigInt.asUintN(64, BigInt(seed));
}

/**
 * An independent 64-bit seed for stream `stream` of a request seeded `seed` (one per cascade level,
 * one per placement of a level): splitmix64 of the seed, then of that mixed with the stream index.
 */
export function deriveSeed(seed: Seed, stream: number): bigint {
  return splitmix64(splitmix64(seed64(seed)) ^ BigInt.asUintN(64, BigInt(stream)));
}

/**
 * Seeded uniform random numbers: xoroshiro128+ (pure-rand) whose 128-bit state is filled by
 * splitmix64 from the 64-bit seed, as Vigna recommends for the xoroshiro generators. Every bit of the
 * seed reaches the state (seeds 42 and 2^32 + 42 differ) and consecutive seeds give uncorrelated
 * streams. The same seed gives the same stream on every platform, so seeded sampling is
 * reproducible run to run.
 */
export class Rng {
  private readonly gen;
  constructor(seed: Seed) {
    const s0 = splitmix64(seed64(seed));
    const s1 = splitmix64((seed64(seed) + GOLDEN_GAMMA) & MASK64);
    const hi = (x: bigint) => Number(x >> 32n) | 0;
    const lo = (x: bigint) => Number(x & 0xffffffffn) | 0;
    // splitmix64 is a bijection, so s0 and s1 (images of distinct inputs) are never both zero.
    this.gen = xoroshiro128plusFromState([hi(s0), lo(s0), hi(s1), lo(s1)]);
  }

  /** A float in [0, 1) with 53 random bits. */
  uniform(): number {
    return uniformFloat64(this.gen);
  }
}
