import { readFileSync } from 'node:fs';
import { ModelLoadError } from '../errors.ts';

/** A JSON file of a model or family directory, parsed; throws ModelLoadError naming the file when it cannot be read or parsed. */
export function readJsonFile(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (cause) {
    throw new ModelLoadError(`${path} is not valid JSON`, { cause });
  }
}
