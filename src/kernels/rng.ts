import { uniformFloat64 } from 'pure-rand/distribution/uniformFloat64';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';

const WARMUP = 32;

/**
 * Seeded uniform random numbers (xoroshiro128+ from pure-rand). The same seed gives the same
 * stream on every platform, so seeded sampling is reproducible run to run.
 */
export class Rng {
  private readonly gen;
  constructor(seed: number) {
    this.gen = xoroshiro128plus(seed | 0);
    // Small seeds leave the state mostly zero bits; the first outputs are then far from uniform.
    for (let i = 0; i < WARMUP; i++) this.gen.next();
  }

  /** A float in [0, 1) with 53 random bits. */
  uniform(): number {
    return uniformFloat64(this.gen);
  }
}
