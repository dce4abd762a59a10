/**
 * The operator types of an ONNX graph, read from the file without loading its weights: the runner
 * needs to know whether a graph computes attention with ONNX Runtime's fused GroupQueryAttention,
 * whose contract differs from the unfused graph's (docs/gpu.md, "Graph forms"). Field numbers are
 * onnx.proto3's: ModelProto.graph = 7; GraphProto.node = 1; NodeProto.op_type = 4, attribute = 5;
 * AttributeProto.g = 6, graphs = 11 (the branches of If and Loop are searched too); ModelProto.metadata_props
 * = 14, StringStringEntryProto.key = 1, value = 2.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/** Reads `length` bytes at `at` of a message's bytes (a file or a buffer). */
type Read = (at: number, length: number) => Uint8Array;

interface Field {
  readonly no: number;
  /** Where a length-delimited field's bytes start and end; other wire types are skipped. */
  readonly start: number;
  readonly end: number;
  readonly delimited: boolean;
  /** A varint field's value (wire type 0); fixed-width fields carry none. */
  readonly value?: number;
}

/** The fields of the message in [from, to), one at a time (a varint needs at most 10 bytes). */
function* fields(read: Read, from: number, to: number): Generator<Field> {
  let at = from;
  while (at < to) {
    const head = read(at, Math.min(20, to - at));
    let i = 0;
    const varint = (): number => {
      let value = 0;
      for (let scale = 1; ; scale *= 128) {
        const byte = head[i++];
        if (byte === undefined) throw new Error('truncated varint');
        value += (byte & 0x7f) * scale;
        if (byte < 0x80) return value;
      }
    };
    const tag = varint();
    const no = Math.floor(tag / 8);
    const wire = tag % 8;
    if (wire === 2) {
      const length = varint();
      yield { no, start: at + i, end: at + i + length, delimited: true };
      at += i + length;
    } else if (wire === 0) {
      const value = varint();
      yield { no, start: at, end: at + i, delimited: false, value };
      at += i;
    } else if (wire === 1 || wire === 5) {
      at += i + (wire === 1 ? 8 : 4);
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

/** One node: its op type and its integer attributes by name (AttributeProto.name = 1, i = 3). */
interface NodeInfo {
  readonly opType: string;
  readonly ints: ReadonlyMap<string, number>;
}

function graphNodes(read: Read, from: number, to: number, visit: (node: NodeInfo) => void): void {
  const text = new TextDecoder();
  for (const f of fields(read, from, to)) {
    if (f.no !== 1 || !f.delimited) continue;
    const node = read(f.start, f.end - f.start);
    const inMemory: Read = (at, length) => node.subarray(at, at + length);
    let opType = '';
    const ints = new Map<string, number>();
    for (const n of fields(inMemory, 0, node.length)) {
      if (n.no === 4 && n.delimited) opType = text.decode(node.subarray(n.start, n.end));
      if (n.no !== 5 || !n.delimited) continue;
      let name = '';
      let int: number | undefined;
      for (const a of fields(inMemory, n.start, n.end)) {
        if (a.no === 1 && a.delimited) name = text.decode(node.subarray(a.start, a.end));
        if (a.no === 3 && a.value !== undefined) int = a.value;
        if ((a.no === 6 || a.no === 11) && a.delimited) graphNodes(inMemory, a.start, a.end, visit);
      }
      if (name && int !== undefined) ints.set(name, int);
    }
    visit({ opType, ints });
  }
}

/** Calls `use` with a reader of the ONNX file at `path` and its size, the file open meanwhile. */
function withFile<T>(path: string, use: (read: Read, size: number) => T): T {
  const fd = openSync(path, 'r');
  try {
    const read: Read = (at, length) => {
      const buf = new Uint8Array(length);
      readSync(fd, buf, 0, length, at);
      return buf;
    };
    return use(read, fstatSync(fd).size);
  } finally {
    closeSync(fd);
  }
}

/** Visits every node of the ONNX file at `path` (its graph and subgraphs); initializers are skipped, not read. */
function eachNode(path: string, visit: (node: NodeInfo) => void): void {
  withFile(path, (read, size) => {
    for (const f of fields(read, 0, size)) if (f.no === 7 && f.delimited) graphNodes(read, f.start, f.end, visit);
  });
}

/** The ONNX file's metadata_props (ModelProto), key to value; the graph is skipped, not read. */
export function graphMetadata(path: string): Map<string, string> {
  const props = new Map<string, string>();
  const text = new TextDecoder();
  withFile(path, (read, size) => {
    for (const f of fields(read, 0, size)) {
      if (f.no !== 14 || !f.delimited) continue;
      const entry = read(f.start, f.end - f.start);
      let key = '';
      let value = '';
      for (const e of fields((at, length) => entry.subarray(at, at + length), 0, entry.length)) {
        if (e.no === 1 && e.delimited) key = text.decode(entry.subarray(e.start, e.end));
        if (e.no === 2 && e.delimited) value = text.decode(entry.subarray(e.start, e.end));
      }
      props.set(key, value);
    }
  });
  return props;
}

/**
 * The metadata key `cascade quantize --scheme w8a8` sets on a graph whose GroupQueryAttention nodes
 * take one zero row more than the pass's tokens (tools/train/quantize.py, pad_attention_rows): their
 * attention never runs over one query row, so a one-token pass needs no padding of its own to match a
 * verify pass, and every present holds one row past the pass's tokens.
 */
export const PADDED_ATTENTION = 'cascade.padded_attention';

/** Every node's op type in the ONNX file at `path` (its graph and subgraphs). */
export function graphOpTypes(path: string): Set<string> {
  const ops = new Set<string>();
  eachNode(path, (n) => ops.add(n.opType));
  return ops;
}

/**
 * The quantization a graph holds, read from its nodes: from MatMulNBits (com.microsoft), as
 * onnxruntime-genai's model builder and others write them, the widest `bits` and the highest
 * `accuracy_level` among them (ONNX Runtime's defaults, 4 and 0, where an attribute is absent); with
 * none, from MatMulIntegerToFloat over per-token int8 activations (`cascade quantize --scheme
 * w8a8`), 8 bits, scheme w8a8, accuracy level 0 (no MatMulNBits); undefined for a graph with
 * neither. (ONNX Runtime's own dynamic quantization scales a whole pass at once, which no padding
 * makes batch-invariant: docs/quantization.md.)
 */
export function graphQuantization(path: string): { readonly bits: number; readonly accuracyLevel: number; readonly scheme?: 'w8a8' } | undefined {
  let found: { bits: number; accuracyLevel: number } | undefined;
  let integer = false;
  eachNode(path, (n) => {
    if (n.opType === 'MatMulIntegerToFloat') integer = true;
    if (n.opType !== 'MatMulNBits') return;
    const bits = n.ints.get('bits') ?? 4;
    const accuracyLevel = n.ints.get('accuracy_level') ?? 0;
    found = { bits: Math.max(found?.bits ?? 0, bits), accuracyLevel: Math.max(found?.accuracyLevel ?? 0, accuracyLevel) };
  });
  return found ?? (integer ? { bits: 8, accuracyLevel: 0, scheme: 'w8a8' } : undefined);
}

