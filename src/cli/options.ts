import { InvalidArgumentError } from '../errors.ts';

/** Commander argument parsers that reject bad values with a message naming the flag. */
export const parseNumber = (flag: string, { min, integer = false }: { min?: number; integer?: boolean } = {}) =>
  (raw: string): number => {
    const v = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v)) || (min !== undefined && v < min)) {
      const kind = integer ? 'an integer (of at most 53 bits)' : 'a number';
      throw new InvalidArgumentError(`${flag} must be ${kind}${min !== undefined ? ` >= ${min}` : ''}, got "${raw}"`);
    }
    return v;
  };
