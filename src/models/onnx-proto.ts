/**
 * Just enough protobuf to write small ONNX models from Node: the KV cache's own graphs (Gather,
 * Concat, Pad, Slice over past_key_values) that run on the model's execution provider, so a cache
 * kept on the device is rolled back, compacted and batched there (device-kv.ts). Field numbers are
 * onnx.proto3's (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto, TypeProto).
 */

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n % 128) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** A varint (number) or length-delimited (string, bytes) field. */
export function field(no: number, value: number | string | Uint8Array): Uint8Array {
  if (typeof value === 'number') return Uint8Array.from([...varint(no * 8), ...varint(value)]);
  const bytes = typeof value === 'string' ? new TextEncoder().encode(value) : value;
  const head = Uint8Array.from([...varint(no * 8 + 2), ...varint(bytes.length)]);
  const out = new Uint8Array(head.length + bytes.length);
  out.set(head);
  out.set(bytes, head.length);
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** ONNX TensorProto element types used here. */
export const ELEM = { float32: 1, int64: 7, float16: 10 } as const;

/** A dimension: a fixed size, or a named symbolic one. */
export type Dim = number | string;

/** A ValueInfoProto: a tensor `name` of element type `elem` and shape `dims` (a name = symbolic). */
export function valueInfo(name: string, elem: number, dims: readonly Dim[]): Uint8Array {
  const shape = concat(dims.map((d) => field(1, typeof d === 'number' ? field(1, d) : field(2, d))));
  return concat([field(1, name), field(2, field(1, concat([field(1, elem), field(2, shape)])))]);
}

/** An INT attribute (AttributeProto type 2). */
export const intAttr = (name: string, value: number): Uint8Array => concat([field(1, name), field(20, 2), field(3, value)]);

/** A NodeProto of the default domain. */
export function node(op: string, inputs: readonly string[], outputs: readonly string[], attrs: readonly Uint8Array[] = []): Uint8Array {
  return concat([...inputs.map((i) => field(1, i)), ...outputs.map((o) => field(2, o)), field(3, `${op}_${outputs[0]}`), field(4, op), ...attrs.map((a) => field(5, a))]);
}

/** A ModelProto (IR 8, default-domain opset 14) of one graph. */
export function model(name: string, nodes: readonly Uint8Array[], inputs: readonly Uint8Array[], outputs: readonly Uint8Array[]): Uint8Array {
  const graph = concat([...nodes.map((n) => field(1, n)), field(2, name), ...inputs.map((i) => field(11, i)), ...outputs.map((o) => field(12, o))]);
  return concat([field(1, 8), field(2, 'cascade-cluster'), field(8, concat([field(1, ''), field(2, 14)])), field(7, graph)]);
}

/** A TENSOR attribute (AttributeProto type 4) holding an int64 vector. */
function int64TensorAttr(name: string, values: readonly number[]): Uint8Array {
  const tensor = concat([field(1, values.length), field(2, ELEM.int64), ...values.map((v) => field(7, v))]);
  return concat([field(1, name), field(20, 4), field(5, tensor)]);
}

/**
 * Bytes that, appended to a serialized decoder ModelProto, add outputs `present_rows.N.key|value`
 * [batch, kv_heads, new tokens, head_dim]: the last rows of each `present.N.*`, those of this pass's
 * tokens (Slice on axis 2 from the attention mask's width less input_ids' width). Protobuf merges a
 * repeated singular message field into the first, so the graph keeps every node and gains these
 * (onnx.proto3: ModelProto.graph is field 7; GraphProto.node 1, output 12). A runner that fetches
 * only these rows never copies the whole cache out of ONNX Runtime (kv-placement.ts, HostBufferKv).
 */
export function presentRowsFragment(layers: number, elem: number): Uint8Array {
  const p = 'cascade_present_rows';
  const nodes = [
    node('Shape', ['attention_mask'], [`${p}/mask_shape`]),
    node('Shape', ['input_ids'], [`${p}/ids_shape`]),
    node('Sub', [`${p}/mask_shape`, `${p}/ids_shape`], [`${p}/starts`]),
    node('Constant', [], [`${p}/axes`], [int64TensorAttr('value', [0, 2])]),
  ];
  const outputs: Uint8Array[] = [];
  for (let i = 0; i < layers; i++) {
    for (const kv of ['key', 'value']) {
      // starts [0, total - new], ends [batch, total] on axes [0, 2]: every batch row, this pass's positions
      nodes.push(node('Slice', [`present.${i}.${kv}`, `${p}/starts`, `${p}/mask_shape`, `${p}/axes`], [`present_rows.${i}.${kv}`]));
      outputs.push(valueInfo(`present_rows.${i}.${kv}`, elem, ['batch_size', 'kv_heads', 'sequence_length', 'head_dim']));
    }
  }
  return field(7, concat([...nodes.map((n) => field(1, n)), ...outputs.map((o) => field(12, o))]));
}
