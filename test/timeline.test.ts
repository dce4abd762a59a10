import test from 'ava';
import { requestTimeline, timelineSvg } from '../src/bench/timeline.ts';
import type { SpanRecord } from '../src/cluster/tracing.ts';
import { CascadeError, InvalidArgumentError } from '../src/errors.ts';

let ids = 0;
const span = (traceId: string, name: string, service: string, startMs: number, endMs: number, attributes: Record<string, unknown> = {}, parentSpanId?: string): SpanRecord => ({
  traceId,
  spanId: `s${++ids}`,
  ...(parentSpanId ? { parentSpanId } : {}),
  name,
  service,
  startMs,
  endMs,
  attributes,
});

const T0 = 1_000_000;

/**
 * One request in asynchronous drafting, 100 ms long: the drafter `small` (instance d1) proposes
 * while the target `big` (instance t1) reviews. Times are offsets from T0 in ms.
 */
function asyncRequest(traceId: string, lengthMs = 100, target = 'big', drafter = 'small'): SpanRecord[] {
  const gw = span(traceId, 'gateway.request', 'cascade-gateway', T0, T0 + lengthMs);
  const co = span(traceId, 'coordinator.request', 'cascade-coordinator', T0 + 2, T0 + lengthMs - 2, {}, gw.spanId);
  const spans = [gw, co];
  const actor = (model: string, instance: string, op: string, from: number, to: number, parent: SpanRecord) =>
    span(traceId, `actor.${op}`, `cascade-actor-${model}`, T0 + from, T0 + to, { 'cascade.model': model, 'cascade.instance': instance, 'cascade.session': 'sess' }, parent.spanId);
  const propose = (from: number, to: number) => {
    const lvl = span(traceId, 'level.propose', 'cascade-coordinator', T0 + from - 1, T0 + to + 1, { 'cascade.level': drafter, 'cascade.want': 4 }, co.spanId);
    spans.push(lvl, actor(drafter, 'd1', 'propose', from, to, lvl));
  };
  const review = (from: number, to: number, drafts: number, accepted: number) => {
    const lvl = span(traceId, 'level.review', 'cascade-coordinator', T0 + from - 1, T0 + to + 1, { 'cascade.level': target, 'cascade.drafts': drafts, 'cascade.accepted': accepted }, co.spanId);
    spans.push(lvl, actor(target, 't1', 'review', from, to, lvl));
  };
  const open = (model: string, instance: string, from: number, to: number) => {
    const lvl = span(traceId, 'level.open', 'cascade-coordinator', T0 + from - 1, T0 + to + 1, { 'cascade.level': model }, co.spanId);
    spans.push(lvl, actor(model, instance, 'open', from, to, lvl));
  };
  open(target, 't1', 5, 10);
  open(drafter, 'd1', 5, 8);
  propose(10, 20);
  propose(20, 30); // touches the previous call: one busy interval
  review(12, 40, 3, 3);
  propose(32, 50);
  review(42, 70, 4, 1); // a rejection, ending at +71 on the coordinator's side
  review(72, 90, 0, 0); // nothing drafted: a plain decode step, no rejection
  return spans;
}

test('timeline - one lane per actor, target first, with merged busy intervals and busy fractions', (t) => {
  const tl = requestTimeline(asyncRequest('a'));
  t.is(tl.traceId, 'a');
  t.is(tl.startMs, T0);
  t.is(tl.endMs, T0 + 100);
  t.deepEqual(
    tl.lanes.map((l) => [l.name, l.role]),
    [
      ['big/t1', 'verify'],
      ['small/d1', 'draft'],
    ],
  );
  const [big, small] = tl.lanes;
  t.deepEqual(big!.busy, [
    { startMs: T0 + 5, endMs: T0 + 10, label: 'open' },
    { startMs: T0 + 12, endMs: T0 + 40, label: 'review' },
    { startMs: T0 + 42, endMs: T0 + 70, label: 'review' },
    { startMs: T0 + 72, endMs: T0 + 90, label: 'review' },
  ]);
  t.deepEqual(small!.busy, [
    { startMs: T0 + 5, endMs: T0 + 8, label: 'open' },
    { startMs: T0 + 10, endMs: T0 + 30, label: 'propose' },
    { startMs: T0 + 32, endMs: T0 + 50, label: 'propose' },
  ]);
  t.is(big!.busyFraction, (5 + 28 + 28 + 18) / 100);
  t.is(small!.busyFraction, (3 + 20 + 18) / 100);
});

test('timeline - a rejection is a target review that accepted fewer drafts than it was given, marked at its end', (t) => {
  const tl = requestTimeline(asyncRequest('a'));
  t.deepEqual(tl.rejections, [T0 + 71]);
  const svg = timelineSvg(tl);
  t.is(svg.match(/stroke="#d62728" stroke-width="2"><title>rejection/g)?.length, 1, 'one tick, across the one verifier lane');
});

test('timeline - a mid-level reviewer that also proposes is a drafter, and its rejections are not the target’s', (t) => {
  const spans = asyncRequest('a');
  const mid = span('a', 'level.review', 'cascade-coordinator', T0 + 50, T0 + 55, { 'cascade.level': 'small', 'cascade.drafts': 3, 'cascade.accepted': 0 });
  spans.push(mid, span('a', 'actor.review', 'cascade-actor-small', T0 + 51, T0 + 54, { 'cascade.model': 'small', 'cascade.instance': 'd1' }, mid.spanId));
  const tl = requestTimeline(spans);
  t.deepEqual(
    tl.lanes.map((l) => [l.name, l.role]),
    [
      ['big/t1', 'verify'],
      ['small/d1', 'draft'],
    ],
  );
  t.deepEqual(tl.rejections, [T0 + 71]);
  t.is(tl.lanes[1]!.busy.at(-1)!.label, 'review');
});

test('timeline - overlapping calls on one actor merge into one interval labelled with both calls', (t) => {
  const spans = [
    span('m', 'coordinator.request', 'cascade-coordinator', 0, 50),
    span('m', 'actor.open', 'cascade-actor-x', 0, 10, { 'cascade.model': 'x', 'cascade.instance': 'i' }),
    span('m', 'actor.propose', 'cascade-actor-x', 5, 20, { 'cascade.model': 'x', 'cascade.instance': 'i' }),
    span('m', 'actor.propose', 'cascade-actor-x', 8, 12, { 'cascade.model': 'x', 'cascade.instance': 'i' }),
  ];
  const tl = requestTimeline(spans);
  t.deepEqual(tl.lanes[0]!.busy, [{ startMs: 0, endMs: 20, label: 'open+propose' }]);
  t.is(tl.lanes[0]!.busyFraction, 20 / 50);
});

test('timeline - without actor spans (embedded), lanes are the levels of the level.* spans', (t) => {
  const spans = asyncRequest('e').filter((s) => !s.name.startsWith('actor.'));
  const tl = requestTimeline(spans);
  t.deepEqual(
    tl.lanes.map((l) => [l.name, l.role]),
    [
      ['big', 'verify'],
      ['small', 'draft'],
    ],
  );
  t.deepEqual(tl.lanes[1]!.busy[0], { startMs: T0 + 4, endMs: T0 + 51, label: 'open+propose' }, 'the coordinator-side calls, network included');
  t.deepEqual(tl.rejections, [T0 + 71]);
});

test('timeline - picks the given trace, or the one with the longest request', (t) => {
  const spans = [...asyncRequest('short', 100), ...asyncRequest('long', 300), ...asyncRequest('mid', 200)];
  t.is(requestTimeline(spans).traceId, 'long');
  t.is(requestTimeline(spans, 'mid').traceId, 'mid');
  t.is(requestTimeline(spans, 'mid').endMs, T0 + 200);
  // A longer trace with nothing to draw is passed over; a trace lacking a gateway span is judged by its coordinator span.
  spans.push(span('empty', 'gateway.request', 'cascade-gateway', 0, 10_000));
  const headless = asyncRequest('headless', 400).filter((s) => s.name !== 'gateway.request');
  t.is(requestTimeline([...spans, ...headless]).traceId, 'headless');
});

test('timeline - no trace, an unknown trace or one without calls is a CascadeError', (t) => {
  t.throws(() => requestTimeline([]), { instanceOf: CascadeError, message: /no request trace/ });
  t.throws(() => requestTimeline(asyncRequest('a'), 'nope'), { instanceOf: InvalidArgumentError, message: /no spans of trace nope/ });
  t.throws(() => requestTimeline([span('g', 'gateway.request', 'cascade-gateway', 0, 5)], 'g'), { instanceOf: CascadeError, message: /no actor\.\* or level\.\* spans/ });
});

test('timeline - the SVG is one self-contained document with lanes, busy shares, an axis and escaped text', (t) => {
  const spans = asyncRequest('x', 100, 'big<&>', 'small"q');
  const svg = timelineSvg(requestTimeline(spans), 'Request <one> & "two"');
  t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  t.true(svg.trimEnd().endsWith('</svg>'));
  t.false(/href|<script|<style|url\(/.test(svg), 'no external resources');
  t.true(svg.includes('big&lt;&amp;&gt;/t1'));
  t.true(svg.includes('small&quot;q/d1'));
  t.true(svg.includes('Request &lt;one&gt; &amp; &quot;two&quot;'));
  t.true(svg.includes('verify 79%'));
  t.true(svg.includes('draft 41%'));
  t.true(svg.includes('ms since the request started'));
  t.true(svg.includes('>100</text>'), 'the axis reaches the end of the request');
  t.true(svg.includes('Legend'));
  // Well-formed enough: every element opened is closed, and no raw '<' or '&' inside text.
  const text = svg.replace(/<[^>]*>/g, '');
  t.false(/<|&(?!(amp|lt|gt|quot|apos);)/.test(text));
  const opened = [...svg.matchAll(/<([a-z]+)[^>]*?(\/?)>/g)].filter((m) => !m[2]).map((m) => m[1]);
  const closed = [...svg.matchAll(/<\/([a-z]+)>/g)].map((m) => m[1]);
  t.deepEqual(opened.sort(), closed.sort());
});
