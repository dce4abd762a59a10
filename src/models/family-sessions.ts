import type { Family } from './family.ts';
import { loadBigram, memberSource } from './family.ts';
import { OrtModelSession } from './ort-session.ts';
import type { ModelSession, SessionOptions } from './session.ts';
import { checkSharedVocabulary } from './vocabulary.ts';

/**
 * Opens family members on demand (one worker each, opened once) and closes them all together.
 * `options` are every member's, or chosen per member (placement: the target on a GPU EP, the small
 * drafters on the CPU).
 */
export class FamilySessions {
  private readonly open = new Map<string, Promise<ModelSession>>();

  constructor(
    readonly family: Family,
    private readonly options: SessionOptions | ((name: string) => SessionOptions),
  ) {}

  get(name: string): Promise<ModelSession> {
    let s = this.open.get(name);
    if (!s) {
      s = OrtModelSession.open(memberSource(this.family, name), typeof this.options === 'function' ? this.options(name) : this.options);
      this.open.set(name, s);
    }
    return s;
  }

  /** The target and every neural drafter (by name), opened, and MaG's bigram table: a cascade's models. */
  async cascadeModels(): Promise<{ target: ModelSession; drafters: Map<string, ModelSession>; bigram: Uint32Array | undefined }> {
    const target = await this.get(this.family.target);
    const drafters = new Map<string, ModelSession>();
    for (const d of this.family.drafters) drafters.set(d, await this.get(d));
    checkSharedVocabulary(target.spec, [...drafters.values()].map((d) => d.spec));
    return { target, drafters, bigram: loadBigram(this.family) };
  }

  async close(): Promise<void> {
    const all = await Promise.allSettled(this.open.values());
    await Promise.all(all.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
    this.open.clear();
  }
}
