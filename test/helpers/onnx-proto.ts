/**
 * Just enough protobuf to rewrite an ONNX ModelProto from Node (no Python here): split messages into
 * fields, and build fields back (the writing half is src/models/onnx-proto.ts). Field numbers are onnx.proto3's.
 */
import { concat, field, node, valueInfo } from '../../src/models/onnx-proto.ts';

export { concat, field };
interface Field {
  readonly no: number;
  readonly wire: number;
  /** The field's payload: a length-delimited field's bytes, else the raw varint / fixed bytes. */
  readonly body: Uint8Array;
  /** The whole field as it was encoded (tag included), to copy it unchanged. */
  readonly raw: Uint8Array;
}

function readVarint(buf: Uint8Array, at: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (;;) {
    const b = buf[at++]!;
    value += (b & 0x7f) * scale;
    scale *= 128;
    if (b < 0x80) return [value, at];
  }
}

export function fields(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  let at = 0;
  while (at < buf.length) {
    const start = at;
    const [tag, next] = readVarint(buf, at);
    at = next;
    const no = Math.floor(tag / 8);
    const wire = tag % 8;
    let body: Uint8Array;
    if (wire === 0) {
      const from = at;
      at = readVarint(buf, at)[1];
      body = buf.subarray(from, at);
    } else if (wire === 1 || wire === 5) {
      body = buf.subarray(at, at + (wire === 1 ? 8 : 4));
      at += body.length;
    } else if (wire === 2) {
      const [len, from] = readVarint(buf, at);
      body = buf.subarray(from, from + len);
      at = from + len;
    } else throw new Error(`protobuf wire type ${wire} at ${start}`);
    out.push({ no, wire, body, raw: buf.subarray(start, at) });
  }
  return out;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** A message with its length-delimited field `no` rewritten by `edit` (other fields copied). */
function rewrite(buf: Uint8Array, no: number, edit: (body: Uint8Array) => Uint8Array): Uint8Array {
  return concat(fields(buf).map((f) => (f.no === no && f.wire === 2 ? field(no, edit(f.body)) : f.raw)));
}

/**
 * The model with every initializer's raw_data moved into one external data file `location` (as
 * torch and Optimum write `model.onnx_data`): TensorProto.raw_data (9) becomes external_data (13)
 * {location, offset, length} with data_location (14) EXTERNAL.
 */
export function externalize(model: Uint8Array, location: string): { graph: Uint8Array; data: Uint8Array } {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const entry = (key: string, value: string) => field(13, concat([field(1, key), field(2, value)]));
  const tensor = (t: Uint8Array) => {
    const fs = fields(t);
    const raw = fs.find((f) => f.no === 9 && f.wire === 2);
    if (!raw || raw.body.length < 64) return t;
    const pad = (4096 - (offset % 4096)) % 4096;
    chunks.push(new Uint8Array(pad), raw.body);
    offset += pad;
    const out = concat([...fs.filter((f) => f.no !== 9 && f.no !== 13 && f.no !== 14).map((f) => f.raw), entry('location', location), entry('offset', String(offset)), entry('length', String(raw.body.length)), field(14, 1)]);
    offset += raw.body.length;
    return out;
  };
  const graph = rewrite(model, 7, (g) => rewrite(g, 5, tensor));
  return { graph, data: concat(chunks) };
}

/** A GraphProto whose nodes write `to` where they wrote `from` (NodeProto.output is field 2). */
function renameOutput(graph: Uint8Array, from: string, to: string): Uint8Array {
  return concat(
    fields(graph).map((f) => {
      if (f.no !== 1 || f.wire !== 2) return f.raw;
      return field(1, concat(fields(f.body).map((n) => (n.no === 2 && text(n.body) === from ? field(2, to) : n.raw))));
    }),
  );
}

/** A Constant node's int64 scalar. */
const int64Scalar = (out: string, v: number) => node('Constant', [], [out], [concat([field(1, 'value'), field(20, 4), field(5, concat([field(2, 7), field(7, v)]))])]);

/**
 * A stand-in for Optimum's merged decoder, made from a decoder-with-past graph: a bool input
 * `use_cache_branch` [1] whose value must say whether a past is fed (past length > 0), or the
 * logits come out zero. It checks the feed, not Optimum's If-node graph.
 */
export function withCacheBranch(model: Uint8Array, logitsElem: number): Uint8Array {
  return rewrite(model, 7, (g) => {
    const renamed = renameOutput(g, 'logits', 'logits_inner');
    const added = [
      node('Shape', ['past_key_values.0.key'], ['cb_shape']),
      int64Scalar('cb_two', 2),
      int64Scalar('cb_zero', 0),
      node('Gather', ['cb_shape', 'cb_two'], ['cb_past']),
      node('Greater', ['cb_past', 'cb_zero'], ['cb_has_past']),
      node('Equal', ['cb_has_past', 'use_cache_branch'], ['cb_ok']),
      node('Cast', ['cb_ok'], ['cb_scale'], [concat([field(1, 'to'), field(20, 2), field(3, logitsElem)])]),
      node('Mul', ['logits_inner', 'cb_scale'], ['logits']),
    ];
    return concat([renamed, ...added.map((n) => field(1, n)), field(11, valueInfo('use_cache_branch', 9, [1]))]);
  });
}

/** A Constant node's 1-D int64 tensor. */
const int64Vector = (out: string, values: number[]) =>
  node('Constant', [], [out], [concat([field(1, 'value'), field(20, 4), field(5, concat([field(1, values.length), field(2, 7), ...values.map((v) => field(7, v))]))])]);

/**
 * The graph with a `num_logits_to_keep` input (int64 scalar) that returns only the last n positions'
 * logits (0 = all), as transformers' models take `logits_to_keep`: a Slice over the logits' sequence
 * axis. It checks the runner's feed and its reading of the shorter logits, not a graph that skips
 * the head's work (this one computes every row and slices).
 */
export function withLogitsToKeep(model: Uint8Array): Uint8Array {
  return rewrite(model, 7, (g) => {
    const renamed = renameOutput(g, 'logits', 'logits_all');
    const added = [
      node('Neg', ['num_logits_to_keep'], ['lk_neg']),
      int64Vector('lk_shape', [1]),
      node('Reshape', ['lk_neg', 'lk_shape'], ['lk_start']),
      int64Vector('lk_end', [2 ** 53 - 1]),
      int64Vector('lk_axis', [1]),
      node('Slice', ['logits_all', 'lk_start', 'lk_end', 'lk_axis'], ['logits']),
    ];
    return concat([renamed, ...added.map((n) => field(1, n)), field(11, valueInfo('num_logits_to_keep', 7, []))]);
  });
}
