import type { SpanRecord } from '../cluster/tracing.ts';
import { CascadeError, InvalidArgumentError } from '../errors.ts';

/**
 * The timeline of one request drawn from its OpenTelemetry spans: one lane per actor, its busy
 * intervals against idle time, and the target's rejections, so one sees drafting overlap
 * verification (asynchronous drafting) or alternate with it (serial rounds).
 */

/** One busy interval of a lane, in absolute milliseconds (the spans' clock); `startMs < endMs` or equal. */
export interface BusyInterval {
  readonly startMs: number;
  readonly endMs: number;
  /** What the lane did: the calls merged into the interval, in order, e.g. `review` or `open+propose`. */
  readonly label: string;
}

/** Whether a lane verifies (the target: it reviews and never proposes) or drafts. */
export type LaneRole = 'verify' | 'draft';

/** One actor (model/instance) or, for traces without actor spans, one cascade level. */
export interface Lane {
  /** `model/instance` for an actor, the `cascade.level` for a level. */
  readonly name: string;
  readonly role: LaneRole;
  /** Disjoint, sorted by time: overlapping or touching calls are merged. */
  readonly busy: BusyInterval[];
  /** Busy time over the timeline's duration, in [0, 1]. */
  readonly busyFraction: number;
}

/** One request's lanes, verifier lanes first, then drafters by first activity. */
export interface Timeline {
  readonly traceId: string;
  /** The request's extent, in absolute milliseconds: the earliest start and latest end over its spans. */
  readonly startMs: number;
  readonly endMs: number;
  readonly lanes: Lane[];
  /** End times (absolute ms, ascending) of the target's reviews that accepted fewer drafts than it was given. */
  readonly rejections: number[];
}

const REQUEST_SPANS = ['gateway.request', 'coordinator.request'] as const;

interface Call {
  readonly lane: string;
  readonly level: string;
  readonly op: string;
  readonly startMs: number;
  readonly endMs: number;
}

/**
 * Picks the trace to draw: the given `traceId`, or, among traces with actor or level spans, the one
 * whose request span is longest (its `gateway.request`, or, lacking one, its `coordinator.request`).
 * Lanes come from the actors' own spans (`actor.*`, merged per `cascade.model`/`cascade.instance`);
 * a trace without them (embedded mode) falls back to the coordinator's `level.*` spans grouped by
 * `cascade.level`. A model is the verifier when it reviews and never proposes (mid-level reviewers
 * of CS Drafting also propose); rejections are its `level.review` spans whose `cascade.accepted` is
 * below `cascade.drafts` (spans without `cascade.accepted` count as none).
 *
 * Throws InvalidArgumentError when `traceId` matches no span, and CascadeError when no trace (or the
 * given one) has actor or level spans to draw.
 */
export function requestTimeline(spans: readonly SpanRecord[], traceId?: string): Timeline {
  const byTrace = new Map<string, SpanRecord[]>();
  for (const s of spans) {
    const list = byTrace.get(s.traceId);
    if (list) list.push(s);
    else byTrace.set(s.traceId, [s]);
  }
  let id = traceId;
  if (id === undefined) {
    id = longestRequest(byTrace);
  } else if (!byTrace.has(id)) {
    throw new InvalidArgumentError(`no spans of trace ${id} (${byTrace.size} traces read)`);
  }
  const trace = byTrace.get(id)!;
  const calls = callsOf(trace);
  if (!calls.length) throw new CascadeError(`trace ${id} has no actor.* or level.* spans to draw`);

  const startMs = Math.min(...trace.map((s) => s.startMs));
  const endMs = Math.max(...trace.map((s) => s.endMs));
  const verifiers = verifierLevels(calls);
  const lanes = [...groupBy(calls, (c) => c.lane)].map(([name, own]): Lane => {
    const busy = merge(own);
    const busyMs = busy.reduce((a, b) => a + b.endMs - b.startMs, 0);
    return { name, role: verifiers.has(own[0]!.level) ? 'verify' : 'draft', busy, busyFraction: endMs > startMs ? busyMs / (endMs - startMs) : 0 };
  });
  lanes.sort((a, b) => Number(b.role === 'verify') - Number(a.role === 'verify') || a.busy[0]!.startMs - b.busy[0]!.startMs || a.name.localeCompare(b.name));

  const rejections = trace
    .filter((s) => s.name === 'level.review' && (!verifiers.size || verifiers.has(String(s.attributes['cascade.level']))))
    .filter((s) => {
      const accepted = s.attributes['cascade.accepted'];
      const drafts = s.attributes['cascade.drafts'];
      return typeof accepted === 'number' && typeof drafts === 'number' && accepted < drafts;
    })
    .map((s) => s.endMs)
    .sort((a, b) => a - b);
  return { traceId: id, startMs, endMs, lanes, rejections };
}

function longestRequest(byTrace: ReadonlyMap<string, SpanRecord[]>): string {
  let best: { id: string; ms: number } | undefined;
  for (const [id, trace] of byTrace) {
    if (!callsOf(trace).length) continue;
    const root = REQUEST_SPANS.map((name) => trace.filter((s) => s.name === name)).find((r) => r.length);
    if (!root) continue;
    const ms = Math.max(...root.map((s) => s.endMs)) - Math.min(...root.map((s) => s.startMs));
    if (!best || ms > best.ms) best = { id, ms };
  }
  if (!best) throw new CascadeError(`no request trace to draw: none of ${byTrace.size} traces has a gateway.request or coordinator.request span with actor.* or level.* spans`);
  return best.id;
}

/** The actors' calls in a trace, or the coordinator's level calls when no actor span is there. */
function callsOf(trace: readonly SpanRecord[]): Call[] {
  const actor = trace.filter((s) => s.name.startsWith('actor.'));
  if (actor.length) {
    return actor.map((s) => {
      const model = String(s.attributes['cascade.model'] ?? s.service.replace(/^cascade-actor-/, ''));
      const instance = s.attributes['cascade.instance'];
      return { lane: instance === undefined ? model : `${model}/${String(instance)}`, level: model, op: s.name.slice('actor.'.length), startMs: s.startMs, endMs: s.endMs };
    });
  }
  return trace
    .filter((s) => s.name.startsWith('level.'))
    .map((s) => {
      const level = String(s.attributes['cascade.level'] ?? '?');
      return { lane: level, level, op: s.name.slice('level.'.length), startMs: s.startMs, endMs: s.endMs };
    });
}

/** Levels that review and never propose; failing that, every level that reviews. */
function verifierLevels(calls: readonly Call[]): Set<string> {
  const ops = new Map<string, Set<string>>();
  for (const c of calls) ops.set(c.level, (ops.get(c.level) ?? new Set()).add(c.op));
  const reviewers = [...ops].filter(([, o]) => o.has('review'));
  const pure = reviewers.filter(([, o]) => !o.has('propose'));
  return new Set((pure.length ? pure : reviewers).map(([level]) => level));
}

function groupBy<T>(xs: readonly T[], key: (x: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const x of xs) {
    const list = out.get(key(x));
    if (list) list.push(x);
    else out.set(key(x), [x]);
  }
  return out;
}

function merge(calls: readonly Call[]): BusyInterval[] {
  const sorted = [...calls].sort((a, b) => a.startMs - b.startMs);
  const out: { startMs: number; endMs: number; ops: string[] }[] = [];
  for (const c of sorted) {
    const last = out.at(-1);
    if (last && c.startMs <= last.endMs) {
      last.endMs = Math.max(last.endMs, c.endMs);
      if (last.ops.at(-1) !== c.op) last.ops.push(c.op);
    } else {
      out.push({ startMs: c.startMs, endMs: c.endMs, ops: [c.op] });
    }
  }
  return out.map((b) => ({ startMs: b.startMs, endMs: b.endMs, label: b.ops.join('+') }));
}

// ---- SVG ----

const WIDTH = 1200;
const LABEL_W = 300;
const RIGHT = 24;
const TOP = 64;
const LANE_H = 26;
const LANE_GAP = 10;
const PLOT_W = WIDTH - LABEL_W - RIGHT;
const IDLE = '#e8e8e8';
const REJECT = '#d62728';
/** Lane colours (no red: red marks rejections). */
const PALETTE = ['#4c78a8', '#f58518', '#54a24b', '#b279a2', '#eeca3b', '#72b7b2', '#9d755d', '#ff9da6', '#bab0ac', '#17becf'];
const MAX_NAME = 30;

/**
 * Renders a Timeline as a self-contained SVG document (about 1200 px wide, no external fonts,
 * scripts or styles): lanes with their busy share on the left, busy intervals in the lane's colour
 * over a grey idle band, the target's rejections as red ticks across the verifier lanes, a time axis
 * in milliseconds since the request started, and a legend. Every rect and tick has a `<title>`
 * tooltip. Text is XML-escaped.
 */
export function timelineSvg(t: Timeline, title?: string): string {
  const span = t.endMs - t.startMs || 1;
  const x = (ms: number) => LABEL_W + ((ms - t.startMs) / span) * PLOT_W;
  const laneY = (i: number) => TOP + i * (LANE_H + LANE_GAP);
  const plotBottom = laneY(t.lanes.length) - LANE_GAP;
  const ticks = niceTicks(t.endMs - t.startMs);
  const height = plotBottom + 100;
  const out: string[] = [];
  const heading = title ?? `Request timeline, trace ${t.traceId}`;
  const sub = `${fmtMs(t.endMs - t.startMs)} ms · ${t.lanes.length} lanes · ${t.rejections.length} rejection${t.rejections.length === 1 ? '' : 's'}`;

  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif" font-size="12">`);
  out.push(`<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="10" y="22" font-size="16" font-weight="600">${esc(heading)}</text>`);
  out.push(`<text x="10" y="42" fill="#555">${esc(sub)}</text>`);

  t.lanes.forEach((lane, i) => {
    const y = laneY(i);
    const colour = PALETTE[i % PALETTE.length]!;
    const mid = y + LANE_H / 2 + 4;
    out.push(`<g><title>${esc(`${lane.name} (${lane.role}): busy ${pct(lane.busyFraction)}`)}</title>`);
    out.push(`<rect x="10" y="${n(y + LANE_H / 2 - 5)}" width="10" height="10" fill="${colour}"/>`);
    out.push(`<text x="26" y="${n(mid)}">${esc(elide(lane.name))}</text>`);
    out.push(`<text x="${LABEL_W - 10}" y="${n(mid)}" text-anchor="end" fill="#555">${lane.role} ${pct(lane.busyFraction)}</text></g>`);
    out.push(`<rect x="${LABEL_W}" y="${y}" width="${PLOT_W}" height="${LANE_H}" fill="${IDLE}"/>`);
  });
  for (const tick of ticks) {
    const tx = n(x(t.startMs + tick));
    out.push(`<line x1="${tx}" y1="${TOP}" x2="${tx}" y2="${n(plotBottom)}" stroke="#ffffff" stroke-width="1"/>`);
  }
  t.lanes.forEach((lane, i) => {
    const y = laneY(i);
    const colour = PALETTE[i % PALETTE.length]!;
    for (const b of lane.busy) {
      const tip = `${lane.name}: ${b.label}, +${fmtMs(b.startMs - t.startMs)} to +${fmtMs(b.endMs - t.startMs)} ms (${fmtMs(b.endMs - b.startMs)} ms)`;
      out.push(`<rect x="${n(x(b.startMs))}" y="${y}" width="${n(Math.max(0.5, x(b.endMs) - x(b.startMs)))}" height="${LANE_H}" fill="${colour}"><title>${esc(tip)}</title></rect>`);
    }
  });

  const verify = t.lanes.flatMap((l, i) => (l.role === 'verify' ? [i] : []));
  const across = verify.length ? verify : t.lanes.map((_, i) => i);
  for (const r of t.rejections) {
    const rx = n(x(r));
    for (const i of across) {
      out.push(`<line x1="${rx}" y1="${laneY(i) - 3}" x2="${rx}" y2="${laneY(i) + LANE_H + 3}" stroke="${REJECT}" stroke-width="2"><title>rejection at +${fmtMs(r - t.startMs)} ms</title></line>`);
    }
  }

  const axisY = plotBottom + 8;
  out.push(`<line x1="${LABEL_W}" y1="${n(axisY)}" x2="${LABEL_W + PLOT_W}" y2="${n(axisY)}" stroke="#333"/>`);
  for (const tick of ticks) {
    const tx = n(x(t.startMs + tick));
    out.push(`<line x1="${tx}" y1="${n(axisY)}" x2="${tx}" y2="${n(axisY + 5)}" stroke="#333"/>`);
    out.push(`<text x="${tx}" y="${n(axisY + 18)}" text-anchor="middle">${fmtMs(tick)}</text>`);
  }
  out.push(`<text x="${LABEL_W + PLOT_W / 2}" y="${n(axisY + 36)}" text-anchor="middle" fill="#555">ms since the request started</text>`);

  const ly = axisY + 62;
  out.push(`<text x="10" y="${n(ly + 4)}" fill="#555">Legend:</text>`);
  out.push(`<rect x="70" y="${n(ly - 6)}" width="22" height="12" fill="${PALETTE[0]}"/><text x="98" y="${n(ly + 4)}">busy (lane's colour: the actor computing a call)</text>`);
  out.push(`<rect x="420" y="${n(ly - 6)}" width="22" height="12" fill="${IDLE}"/><text x="448" y="${n(ly + 4)}">idle</text>`);
  out.push(`<line x1="500" y1="${n(ly - 8)}" x2="500" y2="${n(ly + 8)}" stroke="${REJECT}" stroke-width="2"/><text x="510" y="${n(ly + 4)}">rejection: the target accepted fewer tokens than were drafted</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Tick offsets (ms from the start) at a 1/2/5 × 10^k step, about 10 of them. */
function niceTicks(durationMs: number): number[] {
  if (!(durationMs > 0)) return [0];
  const raw = durationMs / 10;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let k = 0; k * step <= durationMs + step * 1e-9; k++) out.push(k * step);
  return out;
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
const n = (v: number): string => String(Math.round(v * 100) / 100);
const pct = (f: number): string => `${Math.round(f * 100)}%`;
const fmtMs = (ms: number): string => (Math.abs(ms) >= 100 || Number.isInteger(ms) ? String(Math.round(ms)) : ms >= 10 ? ms.toFixed(1) : String(Math.round(ms * 100) / 100));
const elide = (s: string): string => (s.length <= MAX_NAME ? s : `${s.slice(0, MAX_NAME - 12)}…${s.slice(-11)}`);
