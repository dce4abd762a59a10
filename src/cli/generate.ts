import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { generateAutoregressive } from '../engine/generate.ts';
import { InvalidArgumentError } from '../errors.ts';
import { loadFamily, memberDir } from '../models/family.ts';
import { OrtModelSession } from '../models/ort-session.ts';
import { TextTokenizer } from '../models/tokenizer.ts';
import { parseNumber } from './options.ts';

interface GenerateOptions {
  prompt?: string;
  promptFile?: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  models: string;
  model?: string;
  threads: number;
  json?: boolean;
}

function promptText(positional: string[], o: GenerateOptions): string {
  const sources = [positional.length > 0, o.prompt !== undefined, o.promptFile !== undefined].filter(Boolean).length;
  if (sources !== 1) throw new InvalidArgumentError('give the prompt exactly one way: as an argument, with --prompt, or with --prompt-file');
  if (o.promptFile !== undefined) {
    try {
      return readFileSync(o.promptFile, 'utf8');
    } catch (cause) {
      throw new InvalidArgumentError(`cannot read --prompt-file ${o.promptFile}`, { cause });
    }
  }
  return o.prompt ?? positional.join(' ');
}

async function run(positional: string[], o: GenerateOptions): Promise<void> {
  const text = promptText(positional, o);
  const family = loadFamily(o.models);
  const model = await OrtModelSession.open(memberDir(family, o.model ?? family.target), { intraOpThreads: o.threads });
  try {
    const tok = TextTokenizer.load(model.spec.tokenizerPath);
    const stream = tok.stream();
    const result = await generateAutoregressive(
      model,
      { promptIds: tok.encode(text), maxTokens: o.maxTokens, sampling: { temperature: o.temperature, topK: o.topK, topP: o.topP }, seed: o.seed },
      o.json ? undefined : (ids) => process.stdout.write(stream.push(ids)),
    );
    if (o.json) {
      const out = { text: tok.decode(result.tokenIds), tokenIds: result.tokenIds, finishReason: result.finishReason, model: model.spec.name, stats: result.stats };
      process.stdout.write(JSON.stringify(out) + '\n');
    } else {
      process.stdout.write(stream.flush() + '\n');
      const s = result.stats;
      process.stderr.write(
        `[${model.spec.name}] ${s.promptTokens} prompt tokens, ${s.generatedTokens} generated in ${s.seconds.toFixed(2)} s ` +
          `(${s.tokensPerSecond.toFixed(1)} tokens/s, first token ${(s.firstTokenSeconds * 1000).toFixed(0)} ms, finish: ${result.finishReason})\n`,
      );
    }
  } finally {
    await model.close();
  }
}

export function registerGenerate(program: Command): void {
  program
    .command('generate')
    .description('generate text with the bundled model family, embedded (no servers)')
    .argument('[prompt...]', 'prompt text (or use --prompt / --prompt-file)')
    .option('--prompt <text>', 'prompt text')
    .option('--prompt-file <file>', 'read the prompt from a file')
    .option('--max-tokens <n>', 'most tokens to generate', parseNumber('--max-tokens', { min: 1, integer: true }), 128)
    .option('--temperature <t>', 'sampling temperature; 0 = greedy', parseNumber('--temperature', { min: 0 }), 0)
    .option('--top-p <p>', 'nucleus sampling mass in (0, 1]', parseNumber('--top-p', { min: 0 }), 1)
    .option('--top-k <k>', 'keep the k most likely tokens; 0 = off', parseNumber('--top-k', { min: 0, integer: true }), 0)
    .option('--seed <s>', 'random seed for sampling', parseNumber('--seed', { integer: true }), 0)
    .option('--models <dir>', 'model family directory', 'models')
    .option('--model <name>', 'family member to run (default: the family target)')
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model', parseNumber('--threads', { min: 1, integer: true }), 1)
    .option('--json', 'print one JSON object {text, tokenIds, finishReason, model, stats} instead of streaming')
    .action(run);
}
