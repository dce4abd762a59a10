/**
 * A discrete-event simulation of a cascade cluster for capacity planning past one machine
 * (`cascade bench scale`). Sessions generate continuously (closed loop). A round of one session is:
 * drafting on a draft node (its share of the drafters' compute), a network hop, a review on the
 * verifier node the session is pinned to, a network hop back, then the session's own work between
 * rounds (acceptance, sampling, MaG: `roundOverheadMs`). Nodes batch: a node takes every job waiting
 * for it (up to `maxBatch`, waiting up to `windowMs` for the rest of its sessions) and serves them in
 * one pass costing `fixedMs + sequenceMs × sequences + tokenMs × tokens` (PassCost), the batching
 * economics of BatchingSession. Costs, tokens per round and draft time come from measurements on
 * this machine (`cascade bench scale`).
 */

/** One batched pass over b sequences and T tokens costs fixedMs + sequenceMs × b + tokenMs × T. */
export interface PassCost {
  readonly fixedMs: number;
  readonly sequenceMs: number;
  readonly tokenMs: number;
}
export interface SimulationParams {
  readonly sessions: number;
  readonly verifiers: number;
  /** Draft nodes (>= 1). This machine embedded is one draft node and one verifier node (the drafters' and the target's worker threads) with no latency. */
  readonly drafters: number;
  /** One-way network latency between a draft node and a verifier node, ms. */
  readonly latencyMs: number;
  /** A verifier pass (tokens = drafts + 1 per session). */
  readonly verify: PassCost;
  /** A draft node's pass over the drafting of several sessions' rounds (tokens = drafted tokens). */
  readonly draft: PassCost;
  /** A session's own work between rounds, not on any node. */
  readonly roundOverheadMs: number;
  /** Drafted tokens per round and tokens emitted per round (mean acceptance length). */
  readonly draftedPerRound: number;
  readonly tokensPerRound: number;
  readonly maxBatch: number;
  /**
   * A node idle with work queued waits up to this long for the other sessions it serves to queue
   * theirs (BatchingSession's window); 0 = serve at once (continuous batching only).
   */
  readonly windowMs: number;
  /** Simulated time, ms. */
  readonly horizonMs: number;
}

interface Job {
  readonly session: number;
  readonly tokens: number;
  /** When it was queued. */
  readonly at: number;
}

class Node {
  readonly queue: Job[] = [];
  constructor(readonly cost: PassCost) {}
  /** Sessions this node serves; whether a wake-up for its window is pending. */
  sessions = 0;
  waiting = false;
  busy = false;
  busyMs = 0;
  passes = 0;
}

/** A min-heap of timed events. */
class Events {
  private readonly heap: { at: number; run: () => void }[] = [];
  push(at: number, run: () => void): void {
    const h = this.heap;
    h.push({ at, run });
    for (let i = h.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (h[p]!.at <= h[i]!.at) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): { at: number; run: () => void } | undefined {
    const h = this.heap;
    if (!h.length) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length) {
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && h[l]!.at < h[m]!.at) m = l;
        if (r < h.length && h[r]!.at < h[m]!.at) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}

export interface SimulationResult {
  readonly tokensPerSecond: number;
  readonly verifierUtilisation: number;
  readonly drafterUtilisation: number;
  readonly meanVerifyBatch: number;
}

/** The shortest a simulated round can take, ms: below it the costs are no measurement (a round of 0 ms never lets time pass). */
export const MIN_ROUND_MS = 1e-3;
/** Most events one simulation runs (a guard: a real calibration needs a few hundred thousand). */
export const MAX_EVENTS = 20_000_000;

/**
 * Runs the simulation; deterministic (fractional tokens per round are carried per session). Throws
 * RangeError when a round could take less than MIN_ROUND_MS (costs that do not advance time) or
 * the run passes MAX_EVENTS, instead of running without end.
 */
export function simulate(p: SimulationParams): SimulationResult {
  const oneVerify = p.verify.fixedMs + Math.max(0, p.verify.sequenceMs) + Math.max(0, p.verify.tokenMs) * (p.draftedPerRound + 1);
  const shortest = oneVerify + p.latencyMs + p.roundOverheadMs;
  if (!(shortest >= MIN_ROUND_MS)) {
    throw new RangeError(`a simulated round would take ${shortest} ms (verifier pass ${JSON.stringify(p.verify)}, latency ${p.latencyMs} ms, overhead ${p.roundOverheadMs} ms): at least ${MIN_ROUND_MS} ms is needed for time to pass`);
  }
  const events = new Events();
  const verifiers = Array.from({ length: p.verifiers }, () => new Node(p.verify));
  const drafters = Array.from({ length: Math.max(1, p.drafters) }, () => new Node(p.draft));
  let now = 0;
  let tokens = 0;
  const carry = new Array<number>(p.sessions).fill(0);
  let verifyJobs = 0;
  const speculative = p.draftedPerRound > 0;

  const serve = (node: Node, done: (job: Job) => void, costOf: (batch: Job[]) => number) => {
    if (node.busy || node.queue.length === 0) return;
    const since = node.queue[0]!.at;
    const everyone = node.queue.length >= Math.min(node.sessions, p.maxBatch);
    if (!everyone && now - since < p.windowMs) {
      if (!node.waiting) {
        node.waiting = true;
        events.push(since + p.windowMs, () => {
          node.waiting = false;
          serve(node, done, costOf);
        });
      }
      return;
    }
    const batch = node.queue.splice(0, p.maxBatch);
    const ms = costOf(batch);
    node.busy = true;
    node.busyMs += ms;
    node.passes++;
    events.push(now + ms, () => {
      node.busy = false;
      for (const j of batch) done(j);
      serve(node, done, costOf);
    });
  };
  // A calibration on a busy machine can fit a negative slope; a pass of more sequences or tokens never
  // costs less than one of fewer, or a batch could take no time at all and time would stop passing.
  const passCost = (node: Node) => (batch: Job[]) =>
    node.cost.fixedMs + Math.max(0, node.cost.sequenceMs) * batch.length + Math.max(0, node.cost.tokenMs) * batch.reduce((a, j) => a + j.tokens, 0);

  const verifierOf = (s: number) => verifiers[s % verifiers.length]!;
  const verify = (s: number) => {
    const v = verifierOf(s);
    v.queue.push({ session: s, tokens: p.draftedPerRound + 1, at: now });
    serve(v, reviewed, passCost(v));
  };
  const startRound = (s: number) => {
    if (!speculative) return events.push(now + p.latencyMs, () => verify(s));
    const d = drafters[s % drafters.length]!;
    d.queue.push({ session: s, tokens: p.draftedPerRound, at: now });
    serve(d, (j) => events.push(now + p.latencyMs, () => verify(j.session)), passCost(d));
  };
  const reviewed = (j: Job) => {
    verifyJobs++;
    carry[j.session]! += p.tokensPerRound;
    const whole = Math.floor(carry[j.session]!);
    carry[j.session]! -= whole;
    tokens += whole;
    events.push(now + p.latencyMs + p.roundOverheadMs, () => startRound(j.session));
  };

  for (let s = 0; s < p.sessions; s++) {
    verifierOf(s).sessions++;
    drafters[s % drafters.length]!.sessions++;
    events.push(0, () => startRound(s));
  }
  let ran = 0;
  for (let e = events.pop(); e && e.at <= p.horizonMs; e = events.pop()) {
    if (++ran > MAX_EVENTS) throw new RangeError(`the simulation passed ${MAX_EVENTS} events before ${p.horizonMs} ms of simulated time (at ${now.toFixed(3)} ms): the costs are too small for the horizon`);
    now = e.at;
    e.run();
  }
  const passes = verifiers.reduce((a, v) => a + v.passes, 0);
  return {
    tokensPerSecond: (tokens / p.horizonMs) * 1000,
    verifierUtilisation: verifiers.reduce((a, v) => a + Math.min(v.busyMs, p.horizonMs), 0) / (p.horizonMs * verifiers.length),
    drafterUtilisation: drafters.reduce((a, d) => a + Math.min(d.busyMs, p.horizonMs), 0) / (p.horizonMs * drafters.length),
    meanVerifyBatch: passes ? verifyJobs / passes : 0,
  };
}
