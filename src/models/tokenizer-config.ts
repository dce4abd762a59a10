import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { readJsonFile } from './json-file.ts';
import { ModelLoadError } from '../errors.ts';
import { ChatTemplate, SPECIAL_TOKEN_ATTRIBUTES, type SpecialTokens } from './chat-template.ts';
import { describeIssues } from './generation-config.ts';

/** What a model directory's `tokenizer_config.json` (and `chat_template.jinja`) decides. */
export interface TokenizerConfig {
  /** The file's JSON, handed to tokenizers.js as its config (clean-up and normalisation options). */
  readonly raw: Record<string, unknown>;
  /** `add_bos_token`: prepend the BOS to a plain prompt (never to a chat template's text). */
  readonly addBosToken: boolean;
  /** The special tokens' text (`bos_token`, `eos_token`, …), as the file gives them. */
  readonly specialTokens: SpecialTokens;
  /** The chat template, when the model has one. */
  readonly chatTemplate?: ChatTemplate;
  /** Where the chat template came from (for messages). */
  readonly chatTemplateSource?: string;
}

/** A special token is its text, or an AddedToken object carrying the text as `content` (older exports). */
const SpecialToken = z.union([z.string(), z.object({ content: z.string() }).loose()]).nullable().optional();
const TokenizerConfigJson = z
  .object({
    add_bos_token: z.boolean().nullable().optional(),
    chat_template: z.union([z.string(), z.array(z.object({ name: z.string(), template: z.string() }))]).nullable().optional(),
    ...Object.fromEntries(SPECIAL_TOKEN_ATTRIBUTES.map((k) => [k, SpecialToken])),
  })
  .loose();

/**
 * Reads `tokenizer_config.json` from `dir` when it is there (an absent file decides nothing), and
 * the chat template: `chat_template.jinja` when the directory has one (newer transformers save the
 * template there), else the config's `chat_template` (a string, or a list of named templates of which
 * `default` is used). Throws ModelLoadError naming the file and field.
 */
export function loadTokenizerConfig(dir: string): TokenizerConfig {
  const path = join(dir, 'tokenizer_config.json');
  const raw = existsSync(path) ? readJsonFile(path) : {};
  const parsed = TokenizerConfigJson.safeParse(raw);
  if (!parsed.success) throw new ModelLoadError(`${path} is malformed: ${describeIssues(parsed.error)}`);
  const cfg = parsed.data as z.infer<typeof TokenizerConfigJson> & Record<string, z.infer<typeof SpecialToken>>;
  const specialTokens: Record<string, string> = {};
  for (const key of SPECIAL_TOKEN_ATTRIBUTES) {
    const token = cfg[key];
    const text = typeof token === 'string' ? token : token?.content;
    if (text) specialTokens[key] = text;
  }
  let source: { text: string; from: string } | undefined;
  const jinjaPath = join(dir, 'chat_template.jinja');
  if (existsSync(jinjaPath)) source = { text: readFileSync(jinjaPath, 'utf8'), from: jinjaPath };
  else if (typeof cfg.chat_template === 'string') source = { text: cfg.chat_template, from: `${path} field chat_template` };
  else if (Array.isArray(cfg.chat_template)) {
    const named = cfg.chat_template.find((t) => t.name === 'default');
    if (named) source = { text: named.template, from: `${path} field chat_template (default)` };
  }
  let chatTemplate: ChatTemplate | undefined;
  if (source) {
    try {
      chatTemplate = new ChatTemplate(source.text, specialTokens);
    } catch (cause) {
      throw new ModelLoadError(`${source.from} is not a valid Jinja template: ${(cause as Error).message}`, { cause });
    }
  }
  return {
    raw: raw as Record<string, unknown>,
    addBosToken: cfg.add_bos_token === true,
    specialTokens,
    ...(chatTemplate ? { chatTemplate, chatTemplateSource: source!.from } : {}),
  };
}
