"""Rewrite an exported Llama-architecture model directory's graph in the fused form of onnxruntime-genai's model builder.

The project's export (export.py) is the Optimum "decoder with past" graph that torch.onnx writes: 113
nodes per layer, 85 of them not Constants (RMSNorm as Pow/ReduceMean/Sqrt/Div/Mul, RoPE as Slice/Neg/Concat,
attention as MatMul/Softmax over a bias built from the mask). On a GPU each node is a dispatch. This
tool writes the same model with ONNX Runtime's contrib ops, as the genai builder
(src/python/py/models/builders/base.py) emits them:

  - SimplifiedLayerNormalization for the first RMSNorm, SkipSimplifiedLayerNormalization for every
    residual add + RMSNorm after it (its 4th output carries the residual sum);
  - one packed MatMul for q|k|v (and one for gate|up), then Split;
  - RotaryEmbedding (com.microsoft, non-interleaved: the rotate_half convention) on q and k, fed the
    graph's position_ids and cos/sin caches stored as initializers [max_positions, head_dim / 2];
  - GroupQueryAttention (com.microsoft, do_rotary=0) with seqlens_k = ReduceSum(attention_mask) - 1
    and total_sequence_length = Shape(attention_mask)[1], both int32, computed in the graph;
  - the tied head as Gemm(h, embedding, transB=1), the embedding stored once; an untied one as Gemm over its own weight;
  - a projection's bias (Qwen2's q, k, v) as an Add after its packed MatMul.

Inputs and outputs keep the names, dtypes, shapes and KV layout of the unfused graph (input_ids,
attention_mask, position_ids, past_key_values.N.key|value [batch, kv_heads, past, head_dim]; logits,
present.N.key|value [batch, kv_heads, past + sequence, head_dim]), so the runner feeds it unchanged.
One input is added last: num_logits_to_keep (int64 scalar, transformers' logits_to_keep), the head
scoring only the last N rows (logits [batch, N, vocab]; 0 = every row). The runner feeds it the rows
a pass needs: a prompt's pass no longer scores and copies out a row per prompt token. It is required
by the graph, so a runtime that does not feed it (onnxruntime-genai) needs --no-logits-to-keep.
There is no attention_sum output: the H2O policy, which reads it, needs the unfused graph.

What GroupQueryAttention assumes, and the runner guarantees or refuses (docs/gpu.md, "Graph forms"):
each row's cache is its first seqlens_k + 1 - sequence entries, with no holes and no left padding.
The runner feeds one sequence per pass with an all-ones mask (evictions compact the cache), so that
holds; a batched pass of sequences of different lengths (left-padded pasts) is refused for a graph
holding GroupQueryAttention. Attention is causal by cache index, as in the unfused graph, and RoPE
takes the explicit position_ids, so bounded caches (release, rebuild) work unchanged. Positions must
be below --max-positions (the rows of the cos/sin caches).

Checked (test/fused-export.test.ts, docs/gpu.md): logits within 1e-4 of the unfused graph's on the
CPU EP (measured at most 1.4e-5), greedy tokens identical; heads sharing a KV head (GQA) too, on a
draft-l2 whose two KV heads were made equal and fused as one (9.5e-6).

Weights come from the unfused graph itself (each MatMul node is named after its module, as
onnx_weights.py reads them), so no torch is needed: `apt-get install python3-onnx python3-numpy`.
A user's Llama export as torch.onnx / Optimum write it (transformers' LlamaForCausalLM, float32 or
float16, a tied or untied head) fuses too: its module paths sit under a wrapper prefix, its MLP
under `mlp`, its embedding and RMSNorm weights are found by the Gather and Mul that use them, an
untied head by lm_head/MatMul, projection biases (Qwen2) by the Add beside each MatMul, and its RoPE
frequencies and cos/sin scale are read from its rotary_emb (so static scaling, linear, Llama 3 or
yarn, comes along); the graph computes in the weights' own float type. Model types other than llama, mistral
and qwen2, and what the fused layers do not compute, are refused, naming why (RoPE computed at run time, partial rotary, a sliding window shorter
than the positions, an activation other than SiLU). Checked: test/fuse-user-export.test.ts.
The other files of the folder are copied (not with --graph-only); config.json gains "onnx_graph": {"form": "fused", ...},
which the runner ignores (it finds the form from the graph's op types).

With --kv-dtype float16 over float32 weights, q, k and v are cast to float16 after RoPE and the
attention runs in float16 over a float16 cache (inputs past_key_values.* and outputs present.* float16),
its output cast back to float32: the cache's bytes halve, as llama.cpp's default f16 cache; lossy
against float32 KV, and measured so (docs/quantization.md).

Usage: cascade fuse --model DIR --out DIR [--kv-dtype float16]   (or: /usr/bin/python3 tools/train/fuse.py --model models/draft-l2 --out test/fixtures/fused/draft-l2)
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

MS = "com.microsoft"
# transformers' model types whose decoder layers are Llama's: RMSNorm, RoPE (rotate_half), SiLU-gated MLP, no
# other scaling (Mistral adds a sliding window, refused when it applies; Qwen2 adds q, k, v biases, read)
LAYER_TYPES = {"llama", "mistral", "qwen2"}
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "gate_proj", "up_proj", "down_proj"]


def tensor_type(dtype) -> int:
    """The ONNX element type of a numpy dtype (onnx >= 1.13's helper; onnx.mapping before it, removed in 1.17)."""
    convert = getattr(helper, "np_dtype_to_tensor_dtype", None)
    return convert(np.dtype(dtype)) if convert else onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[np.dtype(dtype)]


def numpy_type(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type (as tensor_type, the other way)."""
    convert = getattr(helper, "tensor_dtype_to_np_dtype", None)
    return np.dtype(convert(elem_type) if convert else onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[elem_type])


def head_dim_of(cfg: dict) -> int:
    """config.json's head_dim, or hidden_size / num_attention_heads where it names none (transformers' default)."""
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def trace_back(nodes: dict[str, onnx.NodeProto], name: str, reached, what: str, why: str, path: Path) -> str:
    """From tensor `name` back through Cast, Expand, Unsqueeze and Reshape (nodes that move values
    without changing them) to the first name `reached` accepts; refuses anything else on the way,
    saying `what` happened (the op) and `why` fuse.py cannot follow."""
    while not reached(name):
        node = nodes.get(name)
        if node is None or node.op_type not in ("Cast", "Expand", "Unsqueeze", "Reshape"):
            raise SystemExit(f"{path}: {what} ({node.op_type if node else name}): {why}; keep this model in the unfused form")
        name = node.input[0]
    return name


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every value the graph fixes before it runs: initializers, Constant nodes' values, and Identity
    outputs of either (torch.onnx stores equal weights, such as all-ones RMSNorm weights, once)."""
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def graph_rope(graph: onnx.GraphProto, values: dict[str, np.ndarray], head_dim: int, path: Path) -> tuple[np.ndarray, float] | None:
    """A transformers export's RoPE as its graph computes it: the inverse frequencies its rotary_emb
    multiplies the positions by (a constant that already holds any static scaling: linear, llama3,
    yarn) and the factor its cos and sin are scaled by (yarn's attention factor; 1 otherwise). None
    for a graph without transformers' rotary_emb (this project's export); refused when the
    frequencies are computed in the graph rather than fixed, when the positions are changed before
    they multiply them, or when they cover part of a head. (transformers bakes dynamic scaling's
    frequencies in as constants when it traces: they change only past max_position_embeddings, where
    the fused tables end.)"""
    nodes = {o: n for n in graph.node for o in n.output}
    matmul = next((n for n in graph.node if n.op_type == "MatMul" and re.fullmatch(r"(?:.*/)?rotary_emb/MatMul", n.name)), None)
    if matmul is None:
        return None
    # inv_freq[None, :, None].expand(...).float()
    name = trace_back(nodes, matmul.input[0], lambda n: n in values, "the RoPE frequencies are computed in the graph",
                      "not a constant, and fuse.py's cos/sin tables are fixed", path)
    inv_freq = values[name].astype(np.float32).ravel()
    if inv_freq.size != head_dim // 2:
        raise SystemExit(f"{path}: RoPE rotates {2 * inv_freq.size} of {head_dim} head dimensions (partial rotary): "
                         "fuse.py rotates whole heads; keep this model in the unfused form")
    # the positions must reach the MatMul as they are: an older transformers' linear scaling divided them first
    trace_back(nodes, matmul.input[1], lambda n: n == "position_ids", "the RoPE positions are changed before the frequencies multiply them",
               "fuse.py's tables take the positions as they are", path)
    # cos and sin as the graph scales them (yarn's attention factor), whatever the Muls are named and in either operand order
    scales: dict[str, list[float]] = {"Cos": [], "Sin": []}
    for trig in (n for n in graph.node if n.op_type in ("Cos", "Sin")):
        for user in (n for n in graph.node if trig.output[0] in n.input):
            other = [i for i in user.input if i != trig.output[0]]
            if user.op_type == "Mul" and len(other) == 1 and other[0] in values and values[other[0]].size == 1:
                scales[trig.op_type].append(float(values[other[0]].ravel()[0]))
    found = set(scales["Cos"] + scales["Sin"])
    if len(found) > 1:
        raise SystemExit(f"{path}: RoPE scales cos and sin by {sorted(found)}: fuse.py scales both by one factor")
    scale = found.pop() if found else 1.0
    return inv_freq, scale


def unfused_weights(path: Path, cfg: dict) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, float] | None, float | None]:
    """Weights by module path, from this project's export or a user's Llama export (torch.onnx, the
    Optimum "decoder with past" layout): `model.*` initializers as named; each Linear as its MatMul's
    right operand [in, out] (x @ W, W = torch's weight transposed), keyed `layers.I.<module>`, found by
    the MatMul's name, which keeps the module path under any wrapper prefix
    (/layers.0/self_attn/q_proj/MatMul, /model/layers.0/..., /m/model/layers.0/...), and its bias, if
    any, by the Add beside it (`<key>.bias`: Qwen2's q, k and v); where a user's export names its
    initializers otherwise, the embedding by its Gather, each RMSNorm's weight by the Mul that scales
    by it, and an untied head (`lm_head`) by its MatMul. Also, for a transformers export, its own RoPE
    (graph_rope) and RMSNorm epsilon (graph_epsilon), after check_layer_arithmetic; None for this
    project's export, whose config gives them."""
    layers, hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # protobuf's DecodeError for a truncated or foreign file, an unreadable external-data file
        raise SystemExit(f"{path} is not a readable ONNX graph ({type(e).__name__}: {e})")
    branches = [n.name or n.output[0] for n in graph.node if n.op_type in ("If", "Loop", "Scan")]
    if branches:
        raise SystemExit(f"{path}: its layers sit inside {branches[0]} (a merged decoder, which branches on use_cache_branch): "
                         "fuse.py reads a decoder-with-past graph without branches, as Optimum's model.onnx or decoder_with_past_model.onnx")
    inits = constant_values(graph)
    weights = {name: arr for name, arr in inits.items() if name.startswith("model.")}
    # transformers' LlamaMLP nests the MLP's projections under `mlp`; this project's export does not
    key = lambda module: module.replace("/", ".").replace(".mlp.", ".")  # noqa: E731
    for node in graph.node:
        m = re.fullmatch(r"(?:.*/)?(layers\.\d+/.+)/MatMul", node.name)
        if node.op_type == "MatMul" and m and node.input[1] in inits:
            weights[key(m.group(1))] = inits[node.input[1]]
        elif node.op_type == "MatMul" and re.fullmatch(r"(?:.*/)?lm_head/MatMul", node.name) and node.input[1] in inits:
            weights["lm_head"] = inits[node.input[1]]
        elif node.op_type == "Gather" and re.fullmatch(r"(?:.*/)?embed_tokens/Gather", node.name) and node.input[0] in inits:
            weights.setdefault("model.embed_tokens.weight", inits[node.input[0]])
        elif node.op_type == "Mul" and (m := re.fullmatch(r"(?:.*/)?(layers\.\d+/(?:input|post_attention)_layernorm|norm)/Mul(?:_\d+)?", node.name)):
            scale = [inits[i] for i in node.input if i in inits and inits[i].shape == (hidden,)]
            if scale:
                weights.setdefault(f"model.{m.group(1).replace('/', '.')}.weight", scale[0])
        elif node.op_type == "Add" and (m := re.fullmatch(r"(?:.*/)?(layers\.\d+/.+_proj)/Add", node.name)):
            bias = [inits[i] for i in node.input if i in inits and inits[i].ndim == 1]
            if bias:
                weights[f"{key(m.group(1))}.bias"] = bias[0]
    want = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"{p}layers.{i}.{n}" for i in range(layers)
        for p, n in [("model.", "input_layernorm.weight"), ("model.", "post_attention_layernorm.weight")] + [("", lin) for lin in LINEARS]]
    missing = [w for w in want if w not in weights]
    if missing:
        raise SystemExit(f"{path} is neither this project's export (tools/train/export.py) nor a Llama export fuse.py can read "
                         f"(torch.onnx names each MatMul after its module): no weights for {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}")
    if (cfg.get("attention_bias") or cfg.get("mlp_bias")) and not any(k.endswith(".bias") for k in weights):
        raise SystemExit(f"{path}: config.json gives the projections biases, and no Add beside a projection's MatMul holds one")
    if cfg.get("model_type") == "qwen2":
        unbiased = [f"layers.{i}.{m}" for i in range(layers) for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") if f"layers.{i}.{m}.bias" not in weights]
        if unbiased:
            raise SystemExit(f"{path}: a Qwen2 model's q, k and v projections have biases, and none was found beside {unbiased[:3]}")
    if cfg.get("tie_word_embeddings") is False and "lm_head" not in weights:
        raise SystemExit(f"{path}: config.json says the head is not tied to the embedding, and no initializer feeds lm_head/MatMul")
    rope = graph_rope(graph, inits, head_dim_of(cfg), path)
    if rope is None:
        return weights, None, None
    check_layer_arithmetic(graph, path)
    return weights, rope, graph_epsilon(graph, inits, path)


def check_layer_arithmetic(graph: onnx.GraphProto, path: Path) -> None:
    """Refuses a transformers export whose arithmetic around the Llama weights differs from the fused
    layers' (a config may say llama for a model that is not, e.g. custom code or a merge): a scale on
    the embedding (Gemma), norms on q and k (Qwen3, OLMo2), anything between the head and the logits
    (Granite's logits scaling). An attention scale is not checked (Granite's is refused by its model
    type, check_architecture)."""
    names = [n.name for n in graph.node]
    if any(re.search(r"/(q_norm|k_norm)/", n) for n in names):
        raise SystemExit(f"{path}: the attention norms q and k (q_norm, k_norm): fuse.py's layers do not; keep this model in the unfused form")
    embed = next(n for n in graph.node if n.op_type == "Gather" and re.fullmatch(r"(?:.*/)?embed_tokens/Gather", n.name))
    users = [n for n in graph.node if embed.output[0] in n.input]
    strays = [n.name for n in users if n.op_type != "Shape" and not re.search(r"layers\.0/", n.name)]
    if strays:
        raise SystemExit(f"{path}: the embedding goes through {strays[0]} before the first layer (a scaled embedding?): "
                         "fuse.py feeds it to the layers as it is; keep this model in the unfused form")
    producer = {o: n for n in graph.node for o in n.output}.get("logits")
    if producer is None or not re.fullmatch(r"(?:.*/)?lm_head/MatMul", producer.name):
        raise SystemExit(f"{path}: the logits come from {producer.name if producer else 'nothing'}, not lm_head/MatMul "
                         "(a scaled or capped head?): keep this model in the unfused form")


def graph_epsilon(graph: onnx.GraphProto, values: dict[str, np.ndarray], path: Path) -> float:
    """The RMSNorms' epsilon as the export adds it (variance + eps in input_layernorm/Add), not a default."""
    for node in graph.node:
        if node.op_type == "Add" and re.fullmatch(r"(?:.*/)?layers\.0/input_layernorm/Add(?:_\d+)?", node.name):
            eps = [values[i] for i in node.input if i in values and values[i].size == 1]
            if eps:
                return float(eps[0].ravel()[0])
    raise SystemExit(f"{path}: no epsilon found in layers.0/input_layernorm's Add: not the RMSNorm fuse.py knows")


def check_architecture(cfg: dict, source: Path, positions: int, rope_in_graph: bool) -> float:
    """The RoPE base from the config, after refusing what the fused layers do not compute: another
    activation than SiLU, a sliding window shorter than the positions, and (for a graph whose RoPE
    tables are not read from the export itself, graph_rope) scaled RoPE."""
    rope = cfg.get("rope_parameters") or {}  # transformers 5 moves rope_theta and rope_type here
    scaling = cfg.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
    # Qwen2 names a window and switches it off (use_sliding_window: false)
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    model_type = cfg.get("model_type")
    rope_type = rope.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or (cfg.get("rope_scaling") or {}).get("type")
    problems = [
        # longrope switches to other frequencies past original_max_position_embeddings at run time (transformers, genai's If)
        f"RoPE type {rope_type!r} (its frequencies change with the sequence's length)" if rope_type == "longrope" else "",
        f"model_type {model_type!r} (fuse.py knows {', '.join(sorted(LAYER_TYPES))} layers; others may scale embeddings, norms, "
        "attention or logits where it would not)" if model_type not in LAYER_TYPES else "",
        f"hidden_act {cfg['hidden_act']!r} (the fused MLP is SiLU-gated)" if (cfg.get("hidden_act") or "silu") != "silu" else "",
        f"RoPE scaling {scaling.get('rope_type') or scaling.get('type')!r} and no rotary_emb in the graph to read it from" if scaling and not rope_in_graph else "",
        f"sliding_window {window} (under the {positions} positions; with --max-positions {window} or less the window never applies)" if window and window < positions else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise SystemExit(f"{source}/config.json: {', '.join(problems)}: fuse.py writes plain Llama layers; keep this model in the unfused form")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def rope_caches(inv_freq: np.ndarray, positions: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, head_dim / 2] of positions x inv_freq, in float32 as torch computes them, times `scale`."""
    freqs = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    return (np.cos(freqs) * np.float32(scale)).astype(np.float32), (np.sin(freqs) * np.float32(scale)).astype(np.float32)


def default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """model.rope_tables' inverse frequencies: theta ** -(2i / head_dim), float32."""
    return (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(np.float32)


class Graph:
    """Nodes and initializers of the graph being written; every node output is named `<node>/output_<i>`."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs) -> list[str]:
        outs = [f"{name}/output_{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs


def biased(g: "Graph", w: dict[str, np.ndarray], layer: int, name: str, x: str, modules: list[str]) -> str:
    """x plus the packed biases of `modules` (zeros for a module without one), or x when none has one."""
    weights = [w[f"layers.{layer}.{m}"] for m in modules]
    biases = [w.get(f"layers.{layer}.{m}.bias") for m in modules]
    if all(b is None for b in biases):
        return x
    packed = np.concatenate([b if b is not None else np.zeros(wt.shape[1], dtype=wt.dtype) for b, wt in zip(biases, weights)])
    (out,) = g.node("Add", f"{name}/Add", [x, g.init(f"model.layers.{layer}.{name.split('/')[-1]}.bias", packed)])
    return out


def fuse(cfg: dict, w: dict[str, np.ndarray], max_positions: int, rope: tuple[np.ndarray, float], epsilon: float | None = None,
         kv_dtype: str | None = None, logits_to_keep: bool = True) -> onnx.ModelProto:
    """The fused graph; `rope` is the inverse frequencies and the cos/sin scale (graph_rope, or
    default_inv_freq and 1); `epsilon` the RMSNorms' (graph_epsilon; default the config's); `kv_dtype`
    the KV cache's element type, "float32" or "float16" (default: the weights'). A float32 graph with
    float16 KV casts q, k and v to float16 after RoPE, runs GroupQueryAttention in float16 over a
    float16 past and present, and casts its output back: half the bytes of cache read and copied per
    pass, as llama.cpp's default f16 cache. Lossy against float32 KV (docs/quantization.md measures it).
    `logits_to_keep` adds the num_logits_to_keep input (the head scores the last N rows); without it
    the head scores every row, as the genai builder's graph does."""
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    head_dim = head_dim_of(cfg)
    # a transformers export's own epsilon (graph_epsilon); this project's config, or model.py's default
    eps = float(epsilon if epsilon is not None else cfg.get("rms_norm_eps", 1e-5))
    if head_dim % 8:
        raise SystemExit(f"head_dim {head_dim}: ONNX Runtime's GroupQueryAttention takes head sizes that are multiples of 8 "
                         "(\"head_size must be a multiple of 8\"); keep this model in the unfused form")
    q_size, kv_size, inter = heads * head_dim, kv_heads * head_dim, cfg["intermediate_size"]
    g = Graph()
    embed = g.init("model.embed_tokens.weight", w["model.embed_tokens.weight"])
    # the graph computes in the weights' own float type (float32, or a float16 export's float16), as the export did
    dtype = w["model.embed_tokens.weight"].dtype
    if dtype not in (np.float32, np.float16):
        raise SystemExit(f"weights of type {dtype}: fuse.py writes float32 or float16 graphs")
    kv_np = np.dtype(kv_dtype) if kv_dtype else np.dtype(dtype)
    if kv_np == np.float32 and dtype == np.float16:
        raise SystemExit("--kv-dtype float32 with float16 weights: a float16 export's attention runs in float16, so its KV is float16")
    half_kv = kv_np == np.float16 and dtype == np.float32
    cos, sin = rope_caches(rope[0], max_positions, rope[1])
    g.init("cos_cache", cos.astype(dtype))
    g.init("sin_cache", sin.astype(dtype))
    one = g.init("/model/constants/INT64/[1]", np.array([1], dtype=np.int64))
    g.init("/model/constants/INT64/1", np.array(1, dtype=np.int64))
    g.init("/model/constants/INT64/[-1, hidden]", np.array([-1, hidden], dtype=np.int64))
    g.init("/model/constants/INT64/[vocab]", np.array([vocab], dtype=np.int64))
    g.init("/model/constants/INT64/[0]", np.array([0], dtype=np.int64))
    g.init("/model/constants/INT64/[max]", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    g.init("/model/constants/INT64/qkv_split", np.array([q_size, kv_size, kv_size], dtype=np.int64))
    g.init("/model/constants/INT64/gate_up_split", np.array([inter, inter], dtype=np.int64))

    # genai's attention-mask subgraph: seqlens_k = sum(mask) - 1, total_sequence_length = mask's width
    base = "/model/attn_mask_reformat/attn_mask_subgraph"
    (total,) = g.node("ReduceSum", f"{base}/ReduceSum", ["attention_mask", one], keepdims=0)
    (last,) = g.node("Sub", f"{base}/Sub", [total, one])
    (seqlens_k,) = g.node("Cast", f"{base}/Sub/Cast", [last], to=TensorProto.INT32)
    (shape,) = g.node("Shape", f"{base}/Shape", ["attention_mask"])
    (width,) = g.node("Gather", f"{base}/Gather", [shape, "/model/constants/INT64/1"], axis=0)
    (total_len,) = g.node("Cast", f"{base}/Gather/Cast", [width], to=TensorProto.INT32)

    (x,) = g.node("Gather", "/model/embed_tokens/Gather", [embed, "input_ids"])
    norm_w = g.init("model.layers.0.input_layernorm.weight", w["model.layers.0.input_layernorm.weight"])
    (h,) = g.node("SimplifiedLayerNormalization", "/model/layers.0/input_layernorm/LayerNorm", [x, norm_w],
                  axis=-1, epsilon=eps, stash_type=1)
    residual = x
    for i in range(layers):
        p = f"/model/layers.{i}"
        lin = lambda n: w[f"layers.{i}.{n}"]  # noqa: E731
        qkv_w = g.init(f"model.layers.{i}.attn.qkv_proj.MatMul.weight",
                       np.concatenate([lin("self_attn.q_proj"), lin("self_attn.k_proj"), lin("self_attn.v_proj")], axis=1))
        (qkv,) = g.node("MatMul", f"{p}/attn/qkv_proj/MatMul", [h, qkv_w])
        qkv = biased(g, w, i, f"{p}/attn/qkv_proj", qkv, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])
        q, k, v = g.node("Split", f"{p}/attn/qkv_proj/Split", [qkv, "/model/constants/INT64/qkv_split"], 3, axis=-1)
        (q,) = g.node("RotaryEmbedding", f"{p}/attn/q_rotary/RotaryEmbedding", [q, "position_ids", "cos_cache", "sin_cache"],
                      domain=MS, interleaved=0)
        (k,) = g.node("RotaryEmbedding", f"{p}/attn/k_rotary/RotaryEmbedding", [k, "position_ids", "cos_cache", "sin_cache"],
                      domain=MS, interleaved=0)
        if half_kv:
            q, k, v = (g.node("Cast", f"{p}/attn/{n}_to_float16/Cast", [x], to=TensorProto.FLOAT16)[0] for n, x in (("q", q), ("k", k), ("v", v)))
        attn, _, _ = g.node(
            "GroupQueryAttention", f"{p}/attn/GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len],
            [f"{p}/attn/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
            domain=MS, num_heads=heads, kv_num_heads=kv_heads, do_rotary=0, local_window_size=-1)
        if half_kv:
            (attn,) = g.node("Cast", f"{p}/attn/output_to_float32/Cast", [attn], to=TensorProto.FLOAT)
        o_w = g.init(f"model.layers.{i}.attn.o_proj.MatMul.weight", lin("self_attn.o_proj"))
        (o,) = g.node("MatMul", f"{p}/attn/o_proj/MatMul", [attn, o_w])
        o = biased(g, w, i, f"{p}/attn/o_proj", o, ["self_attn.o_proj"])
        post_w = g.init(f"model.layers.{i}.post_attention_layernorm.weight", w[f"model.layers.{i}.post_attention_layernorm.weight"])
        h, _, _, residual = g.node("SkipSimplifiedLayerNormalization", f"{p}/post_attention_layernorm/SkipLayerNorm",
                                   [o, residual, post_w], [f"{p}/post_attention_layernorm/output_0", "", "",
                                                           f"{p}/post_attention_layernorm/output_3"], domain=MS, epsilon=eps)
        gu_w = g.init(f"model.layers.{i}.mlp.gate_up_proj.MatMul.weight", np.concatenate([lin("gate_proj"), lin("up_proj")], axis=1))
        (gu,) = g.node("MatMul", f"{p}/mlp/gate_up_proj/MatMul", [h, gu_w])
        gu = biased(g, w, i, f"{p}/mlp/gate_up_proj", gu, ["gate_proj", "up_proj"])
        gate, up = g.node("Split", f"{p}/mlp/gate_up_proj/Split", [gu, "/model/constants/INT64/gate_up_split"], 2, axis=-1)
        (sig,) = g.node("Sigmoid", f"{p}/mlp/act_fn/Sigmoid", [gate])
        (silu,) = g.node("Mul", f"{p}/mlp/act_fn/Mul", [gate, sig])
        (prod,) = g.node("Mul", f"{p}/mlp/Mul", [silu, up])
        down_w = g.init(f"model.layers.{i}.mlp.down_proj.MatMul.weight", lin("down_proj"))
        (down,) = g.node("MatMul", f"{p}/mlp/down_proj/MatMul", [prod, down_w])
        down = biased(g, w, i, f"{p}/mlp/down_proj", down, ["down_proj"])
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < layers else "model.norm.weight"
        norm_w = g.init(nxt, w[nxt])
        where = f"/model/layers.{i + 1}/input_layernorm" if i + 1 < layers else f"/model/layers.{layers}/final_norm_layernorm"
        outs = [f"{where}/output_0", "", "", f"{where}/output_3"] if i + 1 < layers else [f"{where}/output_0"]
        h, *rest = g.node("SkipSimplifiedLayerNormalization", f"{where}/SkipLayerNorm", [down, residual, norm_w], outs, domain=MS, epsilon=eps)
        residual = rest[-1] if rest else residual
    # num_logits_to_keep (transformers' logits_to_keep): the head scores only the last N rows, all of
    # them for 0. A prompt's pass needs one row and a verify pass every row; the head is a sixth of the
    # weights, and a prompt's logits of all rows were also copied out whole.
    if logits_to_keep:
        (keep,) = g.node("Unsqueeze", "/lm_head/keep/Unsqueeze", ["num_logits_to_keep", "/model/constants/INT64/[0]"])
        (start,) = g.node("Sub", "/lm_head/keep/Sub", ["/model/constants/INT64/[0]", keep])
        # (a feature output, EAGLE's hidden_states, would be taken before this Slice: it wants every row)
        (h,) = g.node("Slice", "/lm_head/keep/Slice", [h, start, "/model/constants/INT64/[max]", one])
    # a tied head: Gemm over [batch * sequence, hidden] against the embedding itself (stored once);
    # an untied one (a user's lm_head) its own [hidden, vocab] weight
    (flat,) = g.node("Reshape", "/lm_head/Reshape", [h, "/model/constants/INT64/[-1, hidden]"])
    if "lm_head" in w:
        (scores,) = g.node("Gemm", "/lm_head/Gemm", [flat, g.init("lm_head.weight", w["lm_head"])])
    else:
        (scores,) = g.node("Gemm", "/lm_head/Gemm", [flat, embed], transB=1)
    (rows_shape,) = g.node("Shape", "/lm_head/Shape", [h], end=2)
    (out_shape,) = g.node("Concat", "/lm_head/Concat", [rows_shape, "/model/constants/INT64/[vocab]"], axis=0)
    g.node("Reshape", "/lm_head/Reshape_1", [scores, out_shape], ["logits"])

    f32, i64 = tensor_type(dtype), TensorProto.INT64
    kv_type = tensor_type(kv_np)
    kv = lambda n, length: helper.make_tensor_value_info(n, kv_type, ["batch_size", kv_heads, length, head_dim])  # noqa: E731
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "logits_length" if logits_to_keep else "sequence_length", vocab])]
    for i in range(layers):
        inputs += [kv(f"past_key_values.{i}.key", "past_sequence_length"), kv(f"past_key_values.{i}.value", "past_sequence_length")]
        outputs += [kv(f"present.{i}.key", "total_sequence_length"), kv(f"present.{i}.value", "total_sequence_length")]
    if logits_to_keep:
        inputs.append(helper.make_tensor_value_info("num_logits_to_keep", i64, []))
    graph = helper.make_graph(g.nodes, "main_graph", inputs, outputs, g.inits)
    # IR 8 / opset 17: what onnx 1.12 (Debian bookworm) writes; ONNX Runtime resolves
    # SimplifiedLayerNormalization (its own op in the default domain, since version 1) under it.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                              producer_name="cascade-cluster tools/train/fuse.py", ir_version=8)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model directory: this project's export (tools/train/export.py) "
                    "or a user's Llama export in the Optimum layout (config.json + the ONNX graph)")
    ap.add_argument("--model-file", default="model.onnx", help="the ONNX graph inside --model (default model.onnx)")
    ap.add_argument("--out", required=True, help="folder to write the fused model.onnx and the copied files to")
    ap.add_argument("--max-positions", type=int, default=None,
                    help="rows of the RoPE cos/sin caches: positions the graph can take (default config.json's "
                         "max_position_embeddings, which is lowered to it when it is smaller)")
    ap.add_argument("--kv-dtype", choices=["float32", "float16"], default=None,
                    help="the KV cache's element type (default: the weights'): float16 over float32 weights halves the "
                         "cache's bytes and runs the attention in float16, lossy against float32 KV")
    ap.add_argument("--no-logits-to-keep", dest="logits_to_keep", action="store_false",
                    help="leave out the num_logits_to_keep input (the head then scores every row of a pass): for a runtime "
                         "that does not feed it, e.g. onnxruntime-genai; this project's runner feeds it when present")
    ap.add_argument("--graph-only", action="store_true", help="write model.onnx and config.json only (test fixtures; "
                    "the runner then needs --tokenizer)")
    args = ap.parse_args()
    src, out = Path(args.model), Path(args.out)
    for need in ("config.json", args.model_file):
        if not (src / need).is_file():
            why = "a symbolic link to nothing, or a loop" if (src / need).is_symlink() else "not a file" if (src / need).exists() else "missing"
            raise SystemExit(f"{src / need}: {why} (fuse.py needs config.json and {args.model_file})")
    if out.resolve() == src.resolve():
        raise SystemExit(f"--out {out} is the model's own folder: write the fused form beside it")
    try:
        cfg = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise SystemExit(f"{src / 'config.json'} is not JSON: {e}")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size") if not isinstance(cfg.get(k), int)]
    if missing:
        raise SystemExit(f"{src / 'config.json'} lacks integer {', '.join(missing)}: fuse.py reads a Llama-architecture config")
    positions = args.max_positions or cfg.get("max_position_embeddings", 2048)
    weights, rope, epsilon = unfused_weights(src / args.model_file, cfg)
    theta = check_architecture(cfg, src, positions, rope is not None)
    model = fuse(cfg, weights, positions, rope or (default_inv_freq(head_dim_of(cfg), theta), 1.0), epsilon, args.kv_dtype, args.logits_to_keep)
    out.mkdir(parents=True, exist_ok=True)
    # a protobuf holds at most 2 GB: larger weights go to one external file beside the graph, as Optimum writes them
    big = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=big, location="model.onnx_data", all_tensors_to_one_file=True)
    graphs = {args.model_file, "model.onnx"}
    for f in [] if args.graph_only else sorted(src.iterdir()):
        # the folder's other files (tokenizer, chat template, generation config, references); not its graphs or their weights
        if f.is_file() and f.name != "config.json" and f.name not in graphs and not re.search(r"\.onnx(_data|\.data)?$|\.data$", f.name):
            shutil.copyfile(f, out / f.name)
    ops = sorted({n.op_type for n in model.graph.node})
    cfg["max_position_embeddings"] = min(cfg.get("max_position_embeddings", positions), positions)
    cfg["onnx_graph"] = {"form": "fused", "fused_from": str(src / args.model_file), "rope_cache_positions": positions,
                         "ops": ops, "kv_dtype": numpy_type(next(i for i in model.graph.input if i.name == "past_key_values.0.key").type.tensor_type.elem_type).name,
                         "made_by": "tools/train/fuse.py"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    per_layer = sum(1 for n in model.graph.node if n.name.startswith("/model/layers.0/"))
    print(f"fused {src} -> {out}: {len(model.graph.node)} nodes ({per_layer} in layer 0), "
          f"{(out / 'model.onnx').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: the caller removes the partial folder
        raise SystemExit(130)
