import type { Family } from './family.ts';
import { loadMagTables, memberSource } from './family.ts';
import type { MagTables } from '../kernels/maxgram.ts';
import { OrtModelSession } from './ort-session.ts';
import { isAuto, placeByCost, type Placement, type PlacementTrial } from './placement.ts';
import type { ModelSession, SessionOptions } from './session.ts';
import { checkSharedVocabulary } from './vocabulary.ts';

/**
 * Opens family members on demand (one worker each, opened once) and closes them all together.
 * `options` are every member's, or chosen per member (placement: the target on a GPU EP, the small
 * drafters on the CPU). A member whose execution providers are `['auto']` is placed by measured
 * cost (placement.ts: the target by its verify pass, a drafter by its decode pass); `placements`
 * says where each went and what was measured.
 */
export class FamilySessions {
  private readonly open = new Map<string, Promise<ModelSession>>();
  /** Members placed by cost (`auto`), by name. */
  readonly placements = new Map<string, Omit<Placement, 'session'>>();

  constructor(
    readonly family: Family,
    private readonly options: SessionOptions | ((name: string) => SessionOptions),
    /** Reports each placement tried for an `auto` member (loads take seconds on a GPU). */
    private readonly onTrial: (name: string, trial: PlacementTrial) => void = () => undefined,
  ) {}

  get(name: string): Promise<ModelSession> {
    let s = this.open.get(name);
    if (!s) {
      const asked = typeof this.options === 'function' ? this.options(name) : this.options;
      // only the target's logits decide the output: a drafter's drafts are reviewed, so it never pads its passes unless asked
      const options: SessionOptions = name === this.family.target ? asked : { ...asked, batchInvariant: asked.batchInvariant ?? 'off' };
      const source = memberSource(this.family, name);
      s = isAuto(options.executionProviders)
        ? placeByCost((executionProviders) => OrtModelSession.open(source, { ...options, executionProviders, cpuFallback: false }, () => undefined), name === this.family.target ? 'target' : 'draft', undefined, (t) => this.onTrial(name, t)).then(({ session, ...where }) => {
            this.placements.set(name, where);
            return session;
          })
        : OrtModelSession.open(source, options);
      this.open.set(name, s);
    }
    return s;
  }

  /** The target and every neural drafter (by name), opened, and MaG's tables: a cascade's models. */
  async cascadeModels(): Promise<{ target: ModelSession; drafters: Map<string, ModelSession>; magTables: MagTables }> {
    const target = await this.get(this.family.target);
    const drafters = new Map<string, ModelSession>();
    for (const d of this.family.drafters) drafters.set(d, await this.get(d));
    checkSharedVocabulary(target.spec, [...drafters.values()].map((d) => d.spec));
    return { target, drafters, magTables: loadMagTables(this.family, target.spec.vocabSize) };
  }

  async close(): Promise<void> {
    const all = await Promise.allSettled(this.open.values());
    await Promise.all(all.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
    this.open.clear();
  }
}
