import { parseArgs } from 'node:util';

/** What a paired A/B tool over held-out prompts takes (multi-step.ts, paired-models.ts). */
export interface PairedArgs {
  readonly positionals: string[];
  readonly prompts: number;
  readonly maxTokens: number;
  readonly repeats: number;
  readonly threads: number;
  readonly promptsDir?: string;
  readonly out?: string;
}

/**
 * The command line of a paired A/B tool: `dirs` model folders, then --prompts (8), --max-tokens
 * (128), --repeats (3), --threads (1), --prompts-dir and --out. Prints `usage` and exits with status 2
 * when the folders or a number are missing or wrong.
 */
export function pairedArgs(dirs: number, usage: string): PairedArgs {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      prompts: { type: 'string', default: '8' },
      'max-tokens': { type: 'string', default: '128' },
      repeats: { type: 'string', default: '3' },
      threads: { type: 'string', default: '1' },
      'prompts-dir': { type: 'string' },
      out: { type: 'string' },
    },
  });
  const [prompts, maxTokens, repeats, threads] = [values.prompts, values['max-tokens'], values.repeats, values.threads].map(Number) as [number, number, number, number];
  if (positionals.length !== dirs || ![prompts, maxTokens, repeats, threads].every((n) => Number.isInteger(n) && n > 0)) {
    process.stderr.write(`usage: ${usage} [--prompts N] [--max-tokens N] [--repeats N] [--threads N] [--prompts-dir DIR] [--out FILE.json]\n`);
    process.exit(2);
  }
  return { positionals, prompts, maxTokens, repeats, threads, promptsDir: values['prompts-dir'], out: values.out };
}
