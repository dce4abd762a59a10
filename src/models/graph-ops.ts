/**
 * The operator types of an ONNX graph, read from the file without loading its weights: the runner
 * needs to know whether a graph computes attention with ONNX Runtime's fused GroupQueryAttention,
 * whose contract differs from the unfused graph's (docs/gpu.md, "Graph forms"). Field numbers are
 * onnx.proto3's: ModelProto.graph = 7; GraphProto.node = 1; NodeProto.op_type = 4, attribute = 5;
 * AttributeProto.g = 6, graphs = 11 (the branches of If and Loop are searched too).
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
      varint();
      at += i;
    } else if (wire === 1 || wire === 5) {
      at += i + (wire === 1 ? 8 : 4);
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

function graphOps(read: Read, from: number, to: number, ops: Set<string>): void {
  for (const f of fields(read, from, to)) {
    if (f.no !== 1 || !f.delimited) continue;
    const node = read(f.start, f.end - f.start);
    const inMemory: Read = (at, length) => node.subarray(at, at + length);
    for (const n of fields(inMemory, 0, node.length)) {
      if (n.no === 4 && n.delimited) ops.add(new TextDecoder().decode(node.subarray(n.start, n.end)));
      if (n.no !== 5 || !n.delimited) continue;
      for (const a of fields(inMemory, n.start, n.end)) if ((a.no === 6 || a.no === 11) && a.delimited) graphOps(inMemory, a.start, a.end, ops);
    }
  }
}

/** Every node's op type in the ONNX file at `path` (its graph and subgraphs); initializers are skipped, not read. */
export function graphOpTypes(path: string): Set<string> {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const read: Read = (at, length) => {
      const buf = new Uint8Array(length);
      readSync(fd, buf, 0, length, at);
      return buf;
    };
    const ops = new Set<string>();
    for (const f of fields(read, 0, size)) if (f.no === 7 && f.delimited) graphOps(read, f.start, f.end, ops);
    return ops;
  } finally {
    closeSync(fd);
  }
}
