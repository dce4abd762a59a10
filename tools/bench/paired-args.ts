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
  /** The tool's own options (pairedArgs' `extra`), by name, as given or their defaults. */
  readonly extra: Record<string, string>;
}

/**
 * The command line of a paired A/B tool: `dirs` model folders, then --prompts (8), --max-tokens
 * (128), --repeats (3), --threads (1), --prompts-dir and --out, and the tool's own string options
 * `extra` (name to default). Prints `usage` and exits with status 2 when the folders or a number are
 * missing or wrong.
 */
export function pairedArgs(dirs: number, usage: string, extra: Record<string, string> = {}): PairedArgs {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      ...Object.fromEntries(Object.entries(extra).map(([name, value]) => [name, { type: 'string' as const, default: value }])),
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
    process.stderr.write(`usage: ${usage}${Object.keys(extra).map((name) => ` [--${name} X]`).join('')} [--prompts N] [--max-tokens N] [--repeats N] [--threads N] [--prompts-dir DIR] [--out FILE.json]\n`);
    process.exit(2);
  }
  const own = Object.fromEntries(Object.keys(extra).map((name) => [name, String((values as Record<string, unknown>)[name])]));
  return { positionals, prompts, maxTokens, repeats, threads, promptsDir: values['prompts-dir'], out: values.out, extra: own };
}

/** What a timed side returns per request (a GenerateResult or CascadeResult). */
interface Timed {
  readonly tokenIds: readonly number[];
  readonly stats: { readonly seconds: number; readonly firstTokenSeconds: number; readonly rounds?: number };
}

/** Each side's tokens/s by repeat: end to end, decode (tokens after the first over the time after it), tokens per target pass; and its last outputs. */
export interface Turns {
  readonly e2e: number[][];
  readonly decode: number[][];
  readonly perPass: number[][];
  readonly outputs: number[][][];
}

/**
 * Runs `sides` sides over every prompt, `repeats` times, taking turns (the order rotates each
 * repeat, so no side always runs first), after one untimed warm-up request per side.
 */
export async function takeTurns(sides: number, repeats: number, prompts: readonly number[][], run: (side: number, promptIds: number[]) => Promise<Timed>): Promise<Turns> {
  for (let i = 0; i < sides; i++) await run(i, [...prompts[0]!]);
  const turns: Turns = { e2e: [], decode: [], perPass: [], outputs: [] };
  for (let i = 0; i < sides; i++) [turns.e2e, turns.decode, turns.perPass, turns.outputs].forEach((x) => x.push([]));
  for (let rep = 0; rep < repeats; rep++) {
    for (let k = 0; k < sides; k++) {
      const i = (k + rep) % sides;
      const total = { tokens: 0, seconds: 0, decodeSeconds: 0, rounds: 0 };
      const outs: number[][] = [];
      for (const p of prompts) {
        const r = await run(i, [...p]);
        total.tokens += r.tokenIds.length;
        total.seconds += r.stats.seconds;
        total.decodeSeconds += r.stats.seconds - r.stats.firstTokenSeconds;
        total.rounds += r.stats.rounds ?? r.tokenIds.length;
        outs.push([...r.tokenIds]);
      }
      turns.e2e[i]!.push(total.tokens / total.seconds);
      turns.decode[i]!.push((total.tokens - prompts.length) / total.decodeSeconds);
      turns.perPass[i]!.push(total.tokens / total.rounds);
      turns.outputs[i] = outs;
    }
  }
  return turns;
}
