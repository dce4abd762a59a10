"""Block-wise weight-only quantization of a model directory's graph into ONNX Runtime's MatMulNBits (or W8A8).

What onnxruntime's `matmul_nbits_quantizer.py` (DefaultWeightOnlyQuantizer, QOperator format, RTN) and
onnxruntime-genai's model builder write, in numpy: every MatMul whose right operand is a constant
W [K, N] becomes

    MatMulNBits(A, B, scales[, zero_points])   domain com.microsoft, attributes K, N, bits, block_size, accuracy_level

  - B: uint8 [N, n_blocks, blob_size], W^T by output column, cut into blocks of block_size along K
    (K zero-padded to n_blocks * block_size); blob_size = block_size * bits / 8, 4-bit values two to a
    byte, the first in the low nibble;
  - scales: [N, n_blocks], the dtype of A (float32, or float16 for a float16 export);
  - zero_points (asymmetric, the default, as the ORT quantizer's): uint8 [N, ceil(n_blocks * bits / 8)],
    packed as B; symmetric (--symmetric) leaves them out and the kernel takes 2^(bits-1);
  - dequantized weight = (q - zero_point) * scale. Asymmetric blocks span [min(w, 0), max(w, 0)] in
    2^bits - 1 steps (MLAS's range_to_scale_zp), symmetric ones put the signed largest magnitude at -2^(bits-1).

accuracy_level 4 (the default here, as the genai builder's for the CPU) lets the CPU EP quantize A to
int8 per block and use its int8 kernels; 0 keeps A in float.

The right operand may be an initializer, an Identity of one (torch.onnx's deduplicated weights), a
Transpose of one (perm [1, 0]: W stored as torch's [N, K]), a float Cast of one (float16 storage), or
a Gather of its rows by a constant index (an FR-Spec reduced-vocabulary head over the embedding's most
frequent rows, as the EAGLE drafter's; it gets its own quantized copy of those rows). Left in float, and listed:
  - the LM head (a MatMul with N = vocab_size, a reduced head over a Gather of rows, or the family's
    tied Gemm(h, embedding, transB=1)) unless
    --quantize-head: then it becomes a MatMulNBits too (a tied head over its own quantized copy of
    W^T, which the embedding's Gather shares under --quantize-embedding);
  - the embedding Gather, unless --quantize-embedding: then it becomes

        GatherBlockQuantized(data, input_ids, scales[, zero_points])   domain com.microsoft, bits, block_size,
                                                                        gather_axis 0, quantize_axis 1

    over the table [vocab, hidden] quantized along hidden as the head's W^T is (data uint8
    [vocab, hidden * bits / 8], scales and zero points as MatMulNBits'). A tied table quantized for the
    head (--quantize-head) is shared, so a row is exactly the head's dequantized weights:
    data is Reshape(B, [vocab, -1]) of the head's B (MatMulNBits takes B only as [N, n_blocks, blob_size],
    as onnxruntime-genai's builder shares it), with the head's scales and zero points, and the float
    table is dropped. An untied table gets its own quantized copy. hidden must be a multiple of
    block_size (no padded block);
  - a weight read by any other node too (a tied or shared weight);
  - MatMuls inside subgraphs (an Optimum merged decoder's If branches): refused, export without
    merging (`--no-post-process`) or use the decoder_with_past graph.

--scheme w8a8 (8 bits) writes every such product instead as int8 weights per output channel and int8
activations per token through MatMulIntegerToFloat (w8a8_product); the embedding stays float. In a
fused graph it also gives each GroupQueryAttention one zero row more than the pass's tokens
(pad_attention_rows), so that a one-token pass needs no padding to score as a verify pass does.

Everything else in the directory is copied (reference logits stay the f32 model's); config.json gains
"quantization": {"method": "MatMulNBits", "bits", "block_size", ...} (or {"method": "w8a8", ...}),
which the runner reads to decide batch invariance and warnings (src/models/config.ts).

Needs numpy and onnx only (`apt-get install python3-onnx python3-numpy`).
Usage: /usr/bin/python3 tools/train/quantize.py --model models/target --out /tmp/q8 --bits 8
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

MS = "com.microsoft"
# Graphs a folder may hold, in the order src/models/model-dir.ts prefers them.
PREFERRED = ["model.onnx", "decoder_model_merged.onnx", "onnx/model.onnx", "onnx/decoder_model_merged.onnx"]
# Protobuf's 2 GiB limit: bigger graphs are written with their tensors in one external file.
PROTO_LIMIT = 2**31 - 2**26


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quantize_weight(w: np.ndarray, bits: int, block_size: int, symmetric: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """B [N, n_blocks, blob_size] uint8, scales [N, n_blocks] (w's dtype) and packed zero points
    [N, ceil(n_blocks * bits / 8)] uint8 (None when symmetric) of a weight w [K, N]."""
    k, n = w.shape
    n_blocks = -(-k // block_size)
    wt = np.zeros((n, n_blocks * block_size), dtype=np.float32)
    wt[:, :k] = w.T.astype(np.float32)
    blocks = wt.reshape(n, n_blocks, block_size)
    qmax = (1 << bits) - 1
    lo, hi = blocks.min(axis=-1), blocks.max(axis=-1)
    if symmetric:
        mid = 1 << (bits - 1)
        amax = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = (amax / -mid).astype(np.float32)
        zp = np.full(scale.shape, mid, dtype=np.float32)
    else:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = ((hi - lo) / qmax).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.where(scale == 0, 0, np.clip(np.round(-lo / scale), 0, qmax)).astype(np.float32)
    safe = np.where(scale == 0, 1, scale)[..., None]
    q = np.clip(np.round(blocks / safe + zp[..., None]), 0, qmax)
    q = np.where(scale[..., None] == 0, zp[..., None], q).astype(np.uint8)
    zps = None if symmetric else zp.astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
        if zps is not None:
            if n_blocks % 2:
                zps = np.concatenate([zps, np.zeros((n, 1), dtype=np.uint8)], axis=1)
            zps = zps[:, 0::2] | (zps[:, 1::2] << 4)
    return np.ascontiguousarray(q), scale.astype(w.dtype), zps


def dequantize(b: np.ndarray, scales: np.ndarray, zps: np.ndarray | None, bits: int, k: int) -> np.ndarray:
    """W [K, N] back from quantize_weight's output (the check that the packing round-trips)."""
    n, n_blocks, _ = b.shape
    if bits == 4:
        q = np.stack([b & 0xF, b >> 4], axis=-1).reshape(n, n_blocks, -1)
        z = None if zps is None else np.stack([zps & 0xF, zps >> 4], axis=-1).reshape(n, -1)[:, :n_blocks]
    else:
        q, z = b, zps
    z = np.full((n, n_blocks), 1 << (bits - 1)) if z is None else z
    w = (q.astype(np.float32) - z[..., None]) * scales.astype(np.float32)[..., None]
    return w.reshape(n, -1)[:, :k].T


def pack_embedding(b: np.ndarray) -> np.ndarray:
    """GatherBlockQuantized's data [vocab, hidden * bits / 8] from quantize_weight's B [vocab, n_blocks,
    blob_size] of the table's transpose: the same bytes, rows whole (hidden a multiple of block_size)."""
    return b.reshape(b.shape[0], -1)


def find_graph(src: Path, model_file: str | None) -> Path:
    if model_file:
        path = Path(model_file) if Path(model_file).is_absolute() else src / model_file
        if not path.exists():
            raise SystemExit(f"--model-file {model_file}: {path} does not exist")
        return path
    for name in PREFERRED:
        if (src / name).exists():
            return src / name
    raise SystemExit(f"{src} holds none of {', '.join(PREFERRED)}: name the graph with --model-file")


def quantize_graph(model: onnx.ModelProto, vocab: int | None, bits: int, block_size: int, accuracy_level: int,
                   symmetric: bool, quantize_head: bool = False, quantize_embedding: bool = False,
                   scheme: str = "nbits") -> tuple[list[str], list[str], list[str]]:
    """Rewrites model's MatMuls (and, with quantize_embedding, its embedding Gathers) in place; returns
    (quantized product names, quantized Gather descriptions, kept-in-float descriptions). scheme "nbits":
    MatMulNBits; "w8a8": per-channel int8 weights and per-token int8 activations (w8a8_product)."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise SystemExit("the graph has subgraphs (an Optimum merged decoder's If, or a Loop): its weights are shared "
                         "between branches, which this tool does not rewrite; export the decoder with past without "
                         "merging (optimum-cli export onnx --no-post-process) and quantize that graph")
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    taken = set(inits) | {i.name for i in g.input} | {o for n in g.node for o in n.output}

    def fresh(name: str) -> str:
        """name, or name_2, name_3, ... where the graph already has that tensor name."""
        out, i = name, 1
        while out in taken:
            i += 1
            out = f"{name}_{i}"
        taken.add(out)
        return out
    readers = count_readers(g.node, g.output)

    def weight_of(name: str) -> tuple[np.ndarray, list[str], int] | None:
        """W [K, N] behind a MatMul's right operand: an initializer, or one reached through Identity,
        2-D Transpose and float Cast nodes (a float16-stored weight cast up, then transposed, as
        tools/train/eagle.py exports it) and a Gather of rows by a constant 1-D index (FR-Spec's
        reduced-vocabulary head: the embedding's most frequent rows, as eagle.py exports it); the
        tensors on that chain, from the MatMul's operand outwards (dropped where only it reads them);
        and how many of them are this product's own: all but a Gather's source, which the embedding
        lookup may share (the product then gets its own quantized copy of the rows)."""
        chain: list[str] = []
        steps: list[tuple[str, dict]] = []
        own = None
        while name not in inits:
            p = producer.get(name)
            if p is None or p.op_type not in ("Identity", "Transpose", "Cast", "Gather"):
                return None
            attrs = {a.name: helper.get_attribute_value(a) for a in p.attribute}
            if p.op_type == "Gather":
                index = inits.get(p.input[1]) if len(p.input) == 2 else None
                if own is not None or index is None or len(index.dims) != 1 or attrs.get("axis", 0) != 0:
                    return None
                attrs = {"rows": onnx.numpy_helper.to_array(index)}
                own = len(chain) + 1
            elif len(p.input) != 1:
                return None
            if p.op_type == "Transpose" and list(attrs.get("perm", [1, 0])) != [1, 0]:
                return None
            if p.op_type == "Cast" and attrs.get("to") not in (TensorProto.FLOAT, TensorProto.FLOAT16):
                return None
            chain.append(name)
            steps.append((p.op_type, attrs))
            name = p.input[0]
        w = onnx.numpy_helper.to_array(inits[name])
        for op, attrs in reversed(steps):  # from the initializer out to the MatMul
            if op == "Transpose":
                if w.ndim != 2:
                    return None
                w = w.T
            elif op == "Cast":
                w = w.astype(np.float32 if attrs["to"] == TensorProto.FLOAT else np.float16)
            elif op == "Gather":
                if w.ndim != 2:
                    return None
                w = w[attrs["rows"]]
        chain.append(name)
        return w, chain, len(chain) if own is None else own

    def gemm_head(node: onnx.NodeProto) -> tuple[np.ndarray, list[str], int] | str:
        """W [K, N] of a Gemm(h, B) that is a plain product (no C, alpha 1, no transA), else why not."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 2 and node.input[2] or attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0):
            return "Gemm with a bias, alpha or transA"
        b = onnx.numpy_helper.to_array(inits[node.input[1]])
        return (b.T if attrs.get("transB", 0) else b), [node.input[1]], 1

    done, kept, nodes, dropped = [], [], [], set()
    float_products: list[str] = []  # the constant-weight products left in float (listed in kept)
    # w8a8: a float activation's name -> its per-token int8 form (shared by the products that read it)
    activations: dict[str, tuple[str, ...]] = {}
    if scheme == "w8a8" and main_opset(model) < 13:
        raise SystemExit(f"--scheme w8a8 needs a graph of opset 13 or later (this one is {main_opset(model)}): re-export it")
    # initializer T -> (B, scales, zero points names) of a product over W = T^T (a tied head's table)
    quantized_rows: dict[str, list[str]] = {}
    for node in g.node:
        label = node.name or node.output[0]
        found: tuple[np.ndarray, list[str], int] | str | None = None
        if node.op_type == "MatMul":
            found = weight_of(node.input[1])
        elif node.op_type == "Gemm" and node.input[1] in inits:
            tied = "tied head" if any(n.op_type == "Gather" and n.input[0] == node.input[1] for n in g.node) else "Gemm"
            found = gemm_head(node) if quantize_head else f"{tied}; --quantize-head rewrites it"
        if found is None:
            nodes.append(node)  # not a product with a constant (attention scores, a weight computed in the graph)
            continue
        why = found if isinstance(found, str) else None
        if why is None:
            w, chain, own = found
            rows = own < len(chain)  # a Gather of the source's rows: a reduced-vocabulary head
            if w.ndim != 2:
                why = f"weight of rank {w.ndim}"
            elif w.dtype not in (np.float32, np.float16):
                why = f"weight of dtype {w.dtype}"
            elif (rows or (vocab is not None and w.shape[1] == vocab)) and not quantize_head:
                why = f"LM head{' over a subset of the vocabulary' if rows else ''}; --quantize-head rewrites it"
            elif node.op_type == "MatMul" and any(readers.get(t, 0) > 1 for t in chain[:own]):
                why = "weight shared with other nodes"
        if why:
            kept.append(f"{label} ({why})")
            float_products.append(label)
            nodes.append(node)
            continue
        k, n = w.shape
        # named after the weight, or for a head over gathered rows after that Gather's output (one
        # table may feed several such heads)
        base = (chain[own - 1] if rows else chain[-1]) + ("_T" if node.op_type == "Gemm" else "")
        if scheme == "w8a8":
            if w.dtype != np.float32:
                raise SystemExit(f"{label}: --scheme w8a8 needs float32 weights and activations (ONNX Runtime's "
                                 f"MatMulIntegerToFloat computes in float32 on the CPU); this graph's are {w.dtype}")
            nodes.extend(w8a8_product(g, node, w, base, fresh, activations, main_opset(model)))
        else:
            b, scales, zps = quantize_weight(w, bits, block_size, symmetric)
            names = [fresh(f"{base}_Q{bits}"), fresh(f"{base}_scales")]
            new_inits = [onnx.numpy_helper.from_array(b, names[0]), onnx.numpy_helper.from_array(scales, names[1])]
            if zps is not None:
                names.append(fresh(f"{base}_zero_points"))
                new_inits.append(onnx.numpy_helper.from_array(zps, names[2]))
            g.initializer.extend(new_inits)
            attrs = {"K": k, "N": n, "bits": bits, "block_size": block_size}
            if accuracy_level:
                attrs["accuracy_level"] = accuracy_level
            nodes.append(helper.make_node("MatMulNBits", [node.input[0], *names], list(node.output),
                                          name=f"{node.name}_Q{bits}" if node.name else "", domain=MS, **attrs))
            # a tied head's quantized table, which the embedding's Gather may share (quantize_gathers)
            if chain[-1] in inits and transposed(node):
                quantized_rows[chain[-1]] = names
        # a tied head's table stays for the embedding's Gather (dropped below if that is quantized too);
        # past a Gather of rows, its source goes too up to the first tensor something else reads
        dropped.update(t for t in chain[:own] if readers.get(t, 0) <= 1)
        for t in chain[own:]:
            if readers.get(t, 0) > 1:
                break
            dropped.add(t)
        done.append(label)
    # the weights' Identity / Transpose / Cast / Gather nodes, now read by nothing; the lookups are then
    # judged by who reads their tables after the rewrite
    nodes = [n for n in nodes if not (len(n.output) == 1 and n.output[0] in dropped)]
    gathers = quantize_gathers(g, nodes, inits, count_readers(nodes, g.output), quantized_rows, bits, block_size, symmetric,
                               quantize_head, quantize_embedding, kept, fresh)
    if scheme == "w8a8":  # its embeddings stay float: --quantize-embedding is an nbits option
        kept[:] = [k.replace("; --quantize-embedding rewrites it", "; w8a8 keeps it in float") for k in kept]
    # initializers read before and by nothing now: a tied table once its head and its Gather are both
    # rewritten, a reduced head's row index
    still_read = {i for n in nodes for i in n.input} | {o.name for o in g.output}
    dropped.update(t for t in inits if readers.get(t, 0) and t not in still_read)
    del g.node[:]
    g.node.extend(nodes)
    keep = [i for i in g.initializer if i.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(keep)
    # an older export lists its initializers among the graph's inputs too: the dropped ones go there as well
    inputs = [i for i in g.input if i.name not in dropped]
    del g.input[:]
    g.input.extend(inputs)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    # only where every product is integer: a product left in float (the head without --quantize-head)
    # would score a decode step's one row with its own kernel again
    if scheme == "w8a8" and not float_products and pad_attention_rows(g, fresh):
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, PADDED_ATTENTION: "1"})
    elif scheme == "w8a8" and any(n.op_type == "GroupQueryAttention" for n in g.node):
        why = f"{', '.join(float_products)} stay{'s' if len(float_products) == 1 else ''} float" if float_products else "a GroupQueryAttention it cannot pad (pad_attention_rows)"
        log(f"attention not padded ({why}): the runner pads this graph's one-token passes instead")
    return done, gathers, kept


def main_opset(model: onnx.ModelProto) -> int:
    """The graph's version of the default ONNX domain."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 of w [K, N]: Wq int8 [K, N] in [-127, 127] and scales float32 [N],
    w ~= Wq * scales (a column of zeros gets scale 1)."""
    scale = np.abs(w).max(axis=0).astype(np.float32) / 127
    scale = np.where(scale == 0, 1, scale).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


PADDED_ATTENTION = "cascade.padded_attention"
"""The graph's metadata key (ModelProto.metadata_props) that pad_attention_rows sets; the runner reads it."""


def pad_attention_rows(g: onnx.GraphProto, fresh) -> int:
    """Feeds every GroupQueryAttention one row more than the pass's tokens, so that its attention never
    runs over a single query row; returns how many it rewrote (0, graph unchanged, where any is not
    one this can pad).

    Why: ONNX Runtime's CPU GroupQueryAttention multiplies through MLAS's SGEMM, which takes its own
    kernel for one row (M = 1, alpha 1: the probabilities by V), so a decode step's attention and a
    verify pass's round apart (about 1e-5), and a per-token int8 activation can then land on another
    rounding step. A w8a8 graph's products are exact integer sums whatever the rows, so the attention
    is all that needs the second row: the runner's padding (a copy of the token through the whole
    graph) did that at the cost of every product's second row too.

    How, per node (inputs query, key, value [batch, seq, hidden], past_key, past_value, seqlens_k,
    total_sequence_length): query, key and value each get one zero row at the end of the sequence
    axis (Pad), seqlens_k and total_sequence_length one more (Add 1, once per tensor), and the output's
    last row is dropped (Slice). The zero row comes after every real one, so under the causal mask no
    real row attends to it; its present row sits after the pass's rows, past the attention mask's
    width, where the runner drops it (a host past) or never reads it (a host buffer's present_rows
    take the mask's last rows). A packed query (key and value empty) gets the one Pad. Left as they
    are (every node, 0 returned): a node with do_rotary (its rotation would need the padded
    positions), fewer than 7 inputs, any input past sin_cache (position_ids, attention_bias, ...,
    whose shapes follow the sequence) or an output past present_value (output_qk).

    The presents then hold one row past the pass's tokens, and ONNX Runtime takes no batch of such
    passes over a past: a runtime other than this project's must drop that row and run sequences one
    by one (docs/quantization.md).
    """
    nodes = list(g.node)
    attention = [n for n in nodes if n.op_type == "GroupQueryAttention"]
    attrs = lambda n: {a.name: helper.get_attribute_value(a) for a in n.attribute}
    if not attention or any(len(n.input) < 7 or any(n.input[9:]) or len(n.output) > 3 or attrs(n).get("do_rotary", 0)
                            for n in attention):
        return 0
    consts = {k: fresh(f"pad_rows_{k}") for k in ("pads", "zero", "minus1", "axis1", "one")}
    g.initializer.extend([
        onnx.numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 0], np.int64), consts["pads"]),  # 3-D: one row at the end of axis 1
        onnx.numpy_helper.from_array(np.array([0], np.int64), consts["zero"]),
        onnx.numpy_helper.from_array(np.array([-1], np.int64), consts["minus1"]),
        onnx.numpy_helper.from_array(np.array([1], np.int64), consts["axis1"]),
        onnx.numpy_helper.from_array(np.array(1, np.int32), consts["one"]),
    ])
    plus_one: dict[str, str] = {}
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if n.op_type != "GroupQueryAttention":
            out.append(n)
            continue
        base = n.name or n.output[0]
        for i in (0, 1, 2):
            if not n.input[i]:  # packed q|k|v: key and value empty
                continue
            padded = fresh(f"{n.input[i]}_pad_rows")
            out.append(helper.make_node("Pad", [n.input[i], consts["pads"]], [padded], name=f"{base}/pad_rows/Pad_{i}", mode="constant"))
            n.input[i] = padded
        for i in (5, 6):
            if n.input[i] not in plus_one:
                plus_one[n.input[i]] = fresh(f"{n.input[i]}_pad_rows")
                out.append(helper.make_node("Add", [n.input[i], consts["one"]], [plus_one[n.input[i]]], name=f"{base}/pad_rows/Add_{i}"))
            n.input[i] = plus_one[n.input[i]]
        rows = n.output[0]
        n.output[0] = fresh(f"{rows}_pad_rows")
        out.append(n)
        out.append(helper.make_node("Slice", [n.output[0], consts["zero"], consts["minus1"], consts["axis1"]], [rows], name=f"{base}/pad_rows/Slice"))
    del g.node[:]
    g.node.extend(out)
    return len(attention)


def w8a8_product(g: onnx.GraphProto, node: onnx.NodeProto, w: np.ndarray, base: str, fresh,
                 activations: dict[str, tuple[str, ...]], opset: int) -> list[onnx.NodeProto]:
    """The nodes computing node's product A @ W with int8 weights and int8 activations (W8A8, dynamic
    per-token activation scales, as vLLM's int8 W8A8 scheme, without SmoothQuant's smoothing), through ONNX Runtime's
    integer GEMM (MLAS QGEMM, VNNI where the CPU has it):

        s = max(max|A_row|, 1e-30) / 127                             per row of A (a token), [.., S, 1]
        Aq = QuantizeLinear(A / s, 1, 128)                          uint8, round half to even, saturating
        Y = MatMulIntegerToFloat(Aq, Wq, 1, w_scales, 128) * s      Wq int8 [K, N], w_scales [N] (quantize_columns)

    Each row's product depends on that row alone, its integer products summed exactly in int32 (ONNX
    Runtime's DynamicQuantizeMatMul would scale A per tensor, so a token would change with its
    neighbours in a verify pass). The float ops around them still round a one-row pass and a verify
    pass apart by about 1e-5, which can move an activation across a rounding step: a fused graph
    whose every product is w8a8 pads its attention for that (pad_attention_rows), and the runner pads
    one-token passes of any other such graph (batch invariance, docs/quantization.md). A's quantization is made once per tensor and shared by its readers
    (q, k and v; gate and up). `activations` maps an activation's name to its (int8 form, row scales),
    and "" to the graph's shared constants. Needs opset 13 or later (QuantizeLinear's saturation, a
    negative ReduceMax axis)."""
    made: list[onnx.NodeProto] = []
    if "" not in activations:  # the graph's shared constants, named once (fresh: no clash with its own tensors)
        consts = {"inv127": np.array(1 / 127, np.float32), "one": np.array(1, np.float32),
                  "zp": np.array(128, np.uint8), "tiny": np.array(1e-30, np.float32)}
        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
            consts["axes"] = np.array([-1], np.int64)
        named = {k: fresh(f"w8a8_{k}") for k in consts}
        g.initializer.extend(onnx.numpy_helper.from_array(v, named[k]) for k, v in consts.items())
        activations[""] = (named["inv127"], named["one"], named["zp"], named["tiny"], named.get("axes", ""))
    inv127, one, zp, tiny, axes = activations[""]
    a = node.input[0]
    if a not in activations:
        t = {k: fresh(f"{a}_w8a8_{k}") for k in ("abs", "max", "clamped", "scale", "scaled", "q")}
        reduce = (helper.make_node("ReduceMax", [t["abs"], axes], [t["max"]], keepdims=1) if opset >= 18
                  else helper.make_node("ReduceMax", [t["abs"]], [t["max"]], axes=[-1], keepdims=1))
        made += [helper.make_node("Abs", [a], [t["abs"]]), reduce,
                 helper.make_node("Max", [t["max"], tiny], [t["clamped"]]),
                 helper.make_node("Mul", [t["clamped"], inv127], [t["scale"]]),
                 helper.make_node("Div", [a, t["scale"]], [t["scaled"]]),
                 helper.make_node("QuantizeLinear", [t["scaled"], one, zp], [t["q"]])]
        activations[a] = (t["q"], t["scale"])
    q, scale = activations[a]
    wq, ws = quantize_columns(w)
    names = [fresh(f"{base}_W8"), fresh(f"{base}_w_scales")]
    g.initializer.extend([onnx.numpy_helper.from_array(wq, names[0]), onnx.numpy_helper.from_array(ws, names[1])])
    unscaled = fresh(f"{node.output[0]}_w8a8")
    made += [helper.make_node("MatMulIntegerToFloat", [q, names[0], one, names[1], zp], [unscaled],
                              name=f"{node.name}_W8A8" if node.name else "", domain=MS),
             helper.make_node("Mul", [unscaled, scale], list(node.output))]
    return made


def count_readers(nodes, outputs) -> dict[str, int]:
    """How many of `nodes` read each tensor, a graph output counting as one reader."""
    readers: dict[str, int] = {}
    for name in [i for n in nodes for i in n.input] + [o.name for o in outputs]:
        readers[name] = readers.get(name, 0) + 1
    return readers


def transposed(node: onnx.NodeProto) -> bool:
    """Whether a rewritten product's W [K, N] is its initializer's transpose, so that B's rows are the
    initializer's rows: the tied Gemm(h, table, transB=1). (A MatMul over Transpose(table) whose table
    the Gather reads too is kept in float as a shared weight.)"""
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def quantize_gathers(g: onnx.GraphProto, nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto],
                     readers: dict[str, int], quantized_rows: dict[str, list[str]], bits: int, block_size: int,
                     symmetric: bool, quantize_head: bool, quantize_embedding: bool, kept: list[str],
                     fresh) -> list[str]:
    """Replaces, in `nodes`, each Gather (axis 0) of a constant table [vocab, hidden] by a
    GatherBlockQuantized when quantize_embedding: over the tied head's quantized rows where
    `quantized_rows` has the table, else over its own quantized copy. Lists the Gathers left in float in
    `kept`; returns descriptions of the rewritten ones."""
    done, out = [], []
    reshaped: dict[str, str] = {}  # a shared head's B -> its rows as [vocab, -1], made once for every Gather
    for node in nodes:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2:
            out.append(node)  # not a lookup in a constant matrix (shape arithmetic)
            continue
        label = node.name or node.output[0]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        shared = quantized_rows.get(node.input[0])
        why = None
        if axis != 0:
            why = f"a Gather of axis {axis}"
        elif node.input[1] != "input_ids":
            why = f"a lookup by {node.input[1]}, not by input_ids: not the token embedding"
        elif not quantize_embedding:
            why = "embedding; --quantize-embedding rewrites it"
        elif table.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            why = f"embedding of dtype {onnx.TensorProto.DataType.Name(table.data_type)}"
        elif table.dims[1] % block_size:
            why = f"embedding width {table.dims[1]} is not a multiple of --block-size {block_size}"
        elif shared is None and readers.get(node.input[0], 0) > 1:
            others = sorted({n.op_type for n in nodes if n is not node and node.input[0] in n.input})
            why = ("embedding tied to a float head; --quantize-head lets it share the head's quantized table"
                   if not quantize_head and {"Gemm", "MatMul", "Transpose"} & set(others)
                   else f"embedding table also read by {', '.join(others) or 'a graph output'}, left in float")
        if why:
            kept.append(f"{label} ({why})")
            out.append(node)
            continue
        if shared is not None:
            data = reshaped.get(shared[0])
            if data is None:
                data, shape = fresh(f"{shared[0]}_rows"), fresh(f"{shared[0]}_rows_shape")
                g.initializer.append(onnx.numpy_helper.from_array(np.array([table.dims[0], -1], dtype=np.int64), shape))
                out.append(helper.make_node("Reshape", [shared[0], shape], [data], name=f"{label}_rows"))
                reshaped[shared[0]] = data
            inputs = [data, node.input[1], *shared[1:]]
        else:
            b, scales, zps = quantize_weight(onnx.numpy_helper.to_array(table).T, bits, block_size, symmetric)
            base = node.input[0]
            inputs = [fresh(f"{base}_Q{bits}"), node.input[1], fresh(f"{base}_scales")]
            g.initializer.extend([onnx.numpy_helper.from_array(pack_embedding(b), inputs[0]),
                                  onnx.numpy_helper.from_array(scales, inputs[2])])
            if zps is not None:
                inputs.append(fresh(f"{base}_zero_points"))
                g.initializer.append(onnx.numpy_helper.from_array(zps, inputs[3]))
        out.append(helper.make_node("GatherBlockQuantized", inputs, list(node.output),
                                    name=f"{node.name}_Q{bits}" if node.name else "", domain=MS,
                                    bits=bits, block_size=block_size, gather_axis=0, quantize_axis=1))
        done.append(f"{label} ({'sharing the head' if shared else 'its own table'})")
    nodes[:] = out
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model directory (config.json + an ONNX decoder graph)")
    ap.add_argument("--out", required=True, help="a new folder for the quantized graph and the copied files")
    ap.add_argument("--bits", type=int, choices=[4, 8], required=True)
    ap.add_argument("--block-size", type=int, default=32, help="weights per block along K: a power of 2, >= 16 (default 32)")
    ap.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                    help="MatMulNBits accuracy_level: 4 (default) lets the CPU EP compute in int8, 0 keeps A in float")
    ap.add_argument("--symmetric", action="store_true", help="no zero points (the kernel takes 2^(bits-1))")
    ap.add_argument("--quantize-head", action="store_true",
                    help="quantize the LM head too (a tied Gemm head gets its own quantized W^T)")
    ap.add_argument("--quantize-embedding", action="store_true",
                    help="the embedding Gather as GatherBlockQuantized, sharing a tied head's quantized table under "
                         "--quantize-head (the float table is then dropped), else over its own")
    ap.add_argument("--model-file", help="the graph, relative to --model, when the folder holds several")
    ap.add_argument("--scheme", choices=["nbits", "w8a8"], default="nbits",
                    help="nbits (default): block-wise weight-only MatMulNBits; w8a8: per-channel int8 weights and "
                         "per-token int8 activations through MatMulIntegerToFloat (8 bits only; no blocks, levels "
                         "or zero points)")
    args = ap.parse_args()
    if args.scheme == "w8a8" and args.bits != 8:
        raise SystemExit(f"--scheme w8a8 is 8-bit: --bits {args.bits} is for --scheme nbits")
    if args.scheme == "w8a8" and args.quantize_embedding:
        raise SystemExit("--scheme w8a8 leaves the embedding in float: --quantize-embedding is for --scheme nbits")
    if args.scheme == "w8a8" and args.symmetric:
        raise SystemExit("--scheme w8a8 is always symmetric: --symmetric is for --scheme nbits")
    if args.block_size < 16 or args.block_size & (args.block_size - 1):
        raise SystemExit(f"--block-size {args.block_size}: MatMulNBits takes a power of 2, at least 16")
    src, out = Path(args.model), Path(args.out)
    if not (src / "config.json").exists():
        raise SystemExit(f"{src} has no config.json: not a model directory")
    if out.exists():
        raise SystemExit(f"{out} exists: name a new folder for the quantized model")
    cfg = json.loads((src / "config.json").read_text())
    graph_path = find_graph(src, args.model_file)
    rel = graph_path.relative_to(src) if graph_path.is_relative_to(src) else Path(graph_path.name)
    log(f"reading {graph_path} ({graph_path.stat().st_size / 1e6:.1f} MB)")
    try:
        model = onnx.load(str(graph_path))
    except Exception as e:  # protobuf's DecodeError for a truncated or foreign file, an unreadable external-data file
        raise SystemExit(f"{graph_path} is not a readable ONNX graph ({type(e).__name__}: {e})")
    external = {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}
    done, gathers, kept = quantize_graph(model, cfg.get("vocab_size"), args.bits, args.block_size, args.accuracy_level,
                                         args.symmetric, args.quantize_head, args.quantize_embedding, args.scheme)
    if not done:
        raise SystemExit(f"{graph_path}: no MatMul with a constant 2-D weight to quantize (kept: {'; '.join(kept) or 'none'})")
    how = ("int8 weights by output channel, int8 activations by token (w8a8)" if args.scheme == "w8a8"
           else f"{args.bits} bits, blocks of {args.block_size}{', symmetric' if args.symmetric else ''}")
    padded = any(p.key == PADDED_ATTENTION for p in model.metadata_props)
    if padded:
        how += "; GroupQueryAttention padded by one row (one-token passes need no padding: pad_attention_rows)"
    log(f"quantized {len(done)} MatMul/Gemm products to {how}; embeddings: {'; '.join(gathers) or 'none'}; "
        f"kept in float: {'; '.join(kept) or 'nothing'}")

    out.mkdir(parents=True)
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    big = model.ByteSize() > PROTO_LIMIT
    onnx.save(model, str(target), save_as_external_data=big, all_tensors_to_one_file=True,
              location=f"{target.name}.data")
    skip = {graph_path.resolve()} | {(graph_path.parent / e).resolve() for e in external}
    # the folder's other graphs (a transformers.js folder's onnx/model_fp16.onnx beside onnx/model_q4.onnx)
    # stay behind with their external data: the output holds one graph, which --model and --draft-model find
    others = [f for f in sorted(src.rglob("*.onnx")) if f.is_file() and f.resolve() not in skip]
    for g in others:
        skip.add(g.resolve())
        # its external data: the conventional names, then whatever its initializers name (a graph that
        # cannot be parsed keeps only the conventional ones out)
        skip |= {(g.parent / f"{g.name}{suffix}").resolve() for suffix in ("_data", ".data")}
        try:
            other = onnx.load(str(g), load_external_data=False)
            skip |= {(g.parent / e.value).resolve() for i in other.graph.initializer for e in i.external_data if e.key == "location"}
        except Exception as e:  # a truncated or foreign file beside the graph being quantized
            log(f"{g}: not read ({type(e).__name__}); left out with its conventionally named data files")
    if others:
        log(f"left out the folder's other graphs: {', '.join(str(g.relative_to(src)) for g in others)}")
    for f in sorted(src.rglob("*")):
        if f.is_file() and f.resolve() not in skip and f.name != "config.json" and "__pycache__" not in f.parts:
            dest = out / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    cfg["quantization"] = ({"method": "w8a8", "bits": 8, "weights": "int8 per output channel, symmetric",
                            "activations": "int8 per token, dynamic, symmetric", "quantize_head": args.quantize_head,
                            "padded_attention": padded}
                           if args.scheme == "w8a8" else {
        "method": "MatMulNBits", "bits": args.bits, "block_size": args.block_size,
        "symmetric": args.symmetric, "accuracy_level": args.accuracy_level, "quantize_head": args.quantize_head,
        "quantize_embedding": args.quantize_embedding}) | {
        "quantized_matmuls": len(done),
        "quantized_gathers": gathers, "kept_float": kept,
        "source": str(src.resolve()), "made_by": "tools/train/quantize.py",
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    log(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, was {graph_path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: the caller removes the partial folder
        raise SystemExit(130)
