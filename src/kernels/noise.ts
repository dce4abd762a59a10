import { seed64, splitmix64, type Seed } from './rng.ts';
import { argmax, distribution, processLogits, type Prefix, type SamplingParams } from './sampling.ts';

/**
 * How a sampled review decides (temperature > 0; greedy reviews are the same under both):
 * - `invariant`: drafter-invariant verification (Daliri, Musco & Suresh 2024, "Coupling without
 *   Communication and Drafter-Invariant Speculative Decoding"). Every level draws its token at a
 *   position with the same noise, keyed by (seed, absolute position, token) (PositionNoise); a review
 *   accepts a draft while it equals the reviewer's own draw, and its correction or bonus token is
 *   that draw. The output is then target-only sampling with that seed, token for token, whatever the
 *   drafters proposed. Acceptance is at least (1 − TV)/(1 + TV) per position.
 * - `rejection`: speculative rejection sampling (Leviathan et al. 2023; SPEC §4.3): the output is
 *   distributed as target-only sampling, acceptance 1 − TV, but which tokens a seed gives depends on
 *   the drafts.
 */
export type Verification = 'invariant' | 'rejection';
export const VERIFICATIONS: readonly Verification[] = ['invariant', 'rejection'];
/** The verification a request gets when it names none (docs/cascade.md, Verification: why, and what it costs). */
export const DEFAULT_VERIFICATION: Verification = 'invariant';

/** lowbias32 (Chris Wellons' hash-prospector): a bijective 32-bit mixer with low avalanche bias. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

const TWO_POW_20 = 2 ** 20;
const TWO_POW_52 = 2 ** 52;
const TWO_POW_M32 = 2 ** -32;

/**
 * Stateless, counter-based sampling noise: a uniform number u(seed, position, token) in (0, 1) for
 * every token at every absolute position of a sequence (prompt included: position i is the i-th token
 * of prompt + output), the same in every process and on every level that holds the seed. A
 * position's 64-bit key is splitmix64(splitmix64(seed) xor position); a token's 53 bits come from
 * two lowbias32 rounds of the key's halves with the token id (52 bits). Nothing is consumed: drawing at a
 * position twice, in any order, gives the same token.
 *
 * `draw` is the Gumbel-max trick written as an exponential race: argmax over the support of p of
 * log(u_t) / p_t, which picks t with probability p_t exactly (log u_t / p_t = −E_t / p_t with E_t
 * standard exponential; the smallest E_t / p_t wins with probability p_t / Σp). This equals
 * argmax(logits / T + Gumbel) over the processed support, since p_t ∝ exp(logits_t / T) there.
 */
export class PositionNoise {
  private readonly key: bigint;

  constructor(readonly seed: Seed) {
    this.key = splitmix64(seed64(seed));
  }

  /** The two 32-bit halves of position `position`'s key. */
  private positionKey(position: number): [number, number] {
    if (!(Number.isInteger(position) && position >= 0)) throw new RangeError(`a noise position must be an integer >= 0, got ${position}`);
    const k = splitmix64(this.key ^ BigInt(position));
    return [Number(k >> 32n) >>> 0, Number(k & 0xffffffffn) >>> 0];
  }

  /** u(seed, position, token), uniform in (0, 1) with 52 bits. */
  uniform(position: number, token: number): number {
    const [k0, k1] = this.positionKey(position);
    return uniformAt(k0, k1, token);
  }

  /**
   * The token of `p` (a normalised distribution over the vocabulary, float32 [vocab]; zero outside
   * the processed support) that this position's noise selects: distributed as p over seeds. A
   * one-hot p returns its token. Throws RangeError when p has no positive entry.
   */
  draw(p: Float32Array, position: number): number {
    const [k0, k1] = this.positionKey(position);
    let best = -Infinity;
    let token = -1;
    for (let t = 0; t < p.length; t++) {
      const pt = p[t]!;
      if (!(pt > 0)) continue;
      // log(u)/pt > best needs u > exp(best·pt) >= 1 + best·pt; u < (hi + 1)/2^32, so most tokens are
      // ruled out by their high 32 bits alone, without the low bits or a log
      const hi = highBits(k0, k1, t);
      if (token >= 0 && (hi + 1) * TWO_POW_M32 <= 1 + best * pt) continue;
      const score = Math.log(uniformOf(hi, lowBits(k0, k1, t))) / pt;
      if (score > best) {
        best = score;
        token = t;
      }
    }
    if (token < 0) throw new RangeError('cannot draw from a distribution with no positive probability');
    return token;
  }
}

/** The high 32 bits of `token`'s uniform under a position key (k0, k1). */
const highBits = (k0: number, k1: number, token: number): number => mix32(k0 ^ mix32((token ^ k1) >>> 0));
/** The low 20 bits of `token`'s uniform. */
const lowBits = (k0: number, k1: number, token: number): number => mix32(k1 ^ mix32((Math.imul(token, 0x9e3779b9) ^ k0 ^ 0x5bd1e995) >>> 0)) >>> 12;
/** (hi·2^20 + lo + 1/2) / 2^52: 52 bits, strictly inside (0, 1) and exact in a double. */
const uniformOf = (hi: number, lo: number): number => (hi * TWO_POW_20 + lo + 0.5) / TWO_POW_52;

function uniformAt(k0: number, k1: number, token: number): number {
  return uniformOf(highBits(k0, k1, token), lowBits(k0, k1, token));
}

/** Throws RangeError for a name that is not a verification rule. */
export function parseVerification(value: string): Verification {
  if (!(VERIFICATIONS as readonly string[]).includes(value)) throw new RangeError(`verification must be one of ${VERIFICATIONS.join(', ')}, got ${JSON.stringify(value)}`);
  return value as Verification;
}

/**
 * Whether a runner can choose a request's tokens itself with drawToken (ModelSession.decode,
 * multi-step decoding): greedy, or sampled with position-keyed noise (drafter-invariant
 * verification, `invariant`), and no log probabilities to record. Rejection sampling draws with an
 * Rng and passes q up, so it chooses a token per call. Target-only decoding, ModelLevel and a
 * cluster's remote target (whose actor's ModelLevel decides the same way) go by it.
 */
export function runnerDraws(temperature: number, invariant: boolean, logprobs: number | undefined): boolean {
  return logprobs === undefined && (temperature === 0 || invariant);
}

/**
 * The token a level chooses from a logits row (float32 [vocab]) at the position after
 * prefix.tokens[0..prefix.length) without an Rng: at temperature 0 the argmax of the processed
 * logits; above it, `noise`'s draw from the processed distribution at that absolute position
 * (drafter-invariant verification). Target-only decoding and a runner's multi-step decoding
 * (ModelSession.decode) choose with this, and so do a level's greedy proposals (ModelLevel,
 * EagleLevel); its sampled ones draw from the same distribution with the same noise, keeping it for
 * their q, so each gives the others' tokens.
 * Throws RangeError at temperature > 0 without noise (rejection sampling draws with an Rng).
 */
export function drawToken(row: Float32Array, sampling: SamplingParams, prefix: Prefix, noise: PositionNoise | undefined): number {
  if (sampling.temperature === 0) return argmax(processLogits(row, sampling, prefix));
  if (!noise) throw new RangeError('sampling at temperature > 0 without position noise draws with an Rng, not drawToken');
  return noise.draw(distribution(row, sampling, prefix), prefix.length);
}
