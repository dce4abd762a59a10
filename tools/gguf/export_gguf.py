"""Write a model folder (model.onnx + config.json + tokenizer.json, a Llama export of
tools/train/export.py or a user's) as GGUF for llama.cpp, at f32, f16, Q8_0 or Q4_0.

The GGUF is written by llama.cpp's own gguf-py, never by this file: node-llama-cpp ships llama.cpp's
source as a git bundle (node_modules/node-llama-cpp/llama/gitRelease.bundle), which is cloned once
into a cache folder (--cache-dir) and put on sys.path. --gguf-py names an existing gguf-py instead.

Weights come from the ONNX initializers as in tools/train/onnx_weights.py: the export folds each
Linear into MatMul(x, W^T) whose node name keeps the module path (/layers.0/self_attn/q_proj/MatMul),
and keeps the embedding, norms and tied head as model.* initializers. Q and K rows are permuted as
convert_hf_to_gguf.py's LlamaModel.permute does: this project's RoPE rotates halves
(rotate_half, HF's convention) and llama.cpp's LLAMA architecture rotates adjacent pairs, so each
head's rows are interleaved [0, d/2, 1, d/2+1, ...]. Without it llama.cpp's output diverges from the
first generated tokens.

Quantization (gguf-py's numpy quantizers): norms stay f32; every matrix takes the asked type. The
tied embedding/head stays Q8_0 under Q4_0, nearest to llama-quantize's Q6_K for the output tensor
(gguf-py has no numpy Q6_K quantizer).

The tokenizer is the byte-level BPE of tokenizer.json as llama.cpp's "gpt2" model with the GPT-2
pre-tokenizer regex ("gpt-2", what a ByteLevel pre-tokenizer with use_regex means), the vocabulary in
id order, the merges, and BOS/EOS ids from config.json.

Needs numpy and onnx only (apt-get install python3-onnx python3-numpy) and git for the clone.
Usage: /usr/bin/python3 tools/gguf/export_gguf.py --model models/target --out /tmp/target-f32.gguf --type f32
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "node_modules" / "node-llama-cpp" / "llama" / "gitRelease.bundle"
TYPES = ("f32", "f16", "q8_0", "q4_0")


class ExportError(SystemExit):
    """A bad model folder or a missing tool: exits with the message, no traceback."""

    def __init__(self, message: str):
        super().__init__(f"export_gguf: {message}")


def gguf_py_dir(explicit: str | None, bundle: Path, cache_dir: Path) -> Path:
    """gguf-py from --gguf-py, or from llama.cpp's source cloned out of node-llama-cpp's bundle (once)."""
    if explicit:
        path = Path(explicit)
        if not (path / "gguf" / "gguf_writer.py").is_file():
            raise ExportError(f"--gguf-py {path} holds no gguf/gguf_writer.py")
        return path
    if not bundle.is_file():
        raise ExportError(
            f"llama.cpp's gguf-py comes from node-llama-cpp's {bundle}, which is missing: "
            "install node-llama-cpp (npm install --no-save node-llama-cpp@3.22.1) or pass --gguf-py DIR"
        )
    # keyed by the bundle's content, so a newer node-llama-cpp gets its own clone
    h = hashlib.sha256()
    with open(bundle, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    clone = cache_dir / f"llama.cpp-{h.hexdigest()[:12]}"
    if not (clone / "gguf-py" / "gguf" / "gguf_writer.py").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{clone.name}.{os.getpid()}"
        print(f"cloning llama.cpp's source from {bundle} into {clone}", file=sys.stderr)
        try:
            subprocess.run(["git", "clone", "--quiet", str(bundle), str(tmp)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError as err:
            raise ExportError("cloning gguf-py from node-llama-cpp's bundle needs git (apt-get install git)") from err
        except subprocess.CalledProcessError as err:
            raise ExportError(f"git clone {bundle} failed: {err.stderr.decode(errors='replace').strip()}") from err
        try:
            tmp.rename(clone)
        except OSError:
            if not (clone / "gguf-py").is_dir():
                raise
            subprocess.run(["rm", "-rf", str(tmp)], check=False)  # another process cloned it first
    return clone / "gguf-py"


def read_config(model: Path) -> dict:
    path = model / "config.json"
    if not path.is_file():
        raise ExportError(f"{model} has no config.json: not a model folder")
    cfg = json.loads(path.read_text())
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise ExportError(f"{path}: model_type {cfg.get('model_type')!r}, architectures {archs}: only Llama exports (model_type llama) convert")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if not isinstance(cfg.get(key), int):
            raise ExportError(f"{path} has no integer {key}")
    if cfg.get("tie_word_embeddings") is False:
        raise ExportError(f"{path}: tie_word_embeddings is false; this exporter reads the tied head of tools/train/export.py only")
    return cfg


def onnx_weights(model: Path, cfg: dict) -> dict[str, np.ndarray]:
    """HF-named weights ([out, in] like torch's Linear) from the ONNX initializers."""
    try:
        import onnx
        import onnx.numpy_helper
    except ImportError as err:
        raise ExportError("needs Python's onnx (apt-get install python3-onnx python3-numpy, or pip install onnx numpy)") from err
    graphs = sorted(model.glob("*.onnx"))
    path = model / "model.onnx" if (model / "model.onnx").is_file() else (graphs[0] if len(graphs) == 1 else None)
    if path is None:
        raise ExportError(f"{model} holds {len(graphs)} ONNX graphs and no model.onnx")
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    out: dict[str, np.ndarray] = {}
    for name, init in inits.items():
        if name.startswith("model."):
            out[name[len("model."):]] = onnx.numpy_helper.to_array(init).astype(np.float32)
    for node in graph.node:
        m = re.fullmatch(r"/(.+)/MatMul", node.name)
        if node.op_type == "MatMul" and m and node.input[1] in inits:
            out[m.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(onnx.numpy_helper.to_array(inits[node.input[1]]).astype(np.float32).T)
    need = ["embed_tokens.weight", "norm.weight"]
    for i in range(cfg["num_hidden_layers"]):
        need += [f"layers.{i}.{p}.weight" for p in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                                                    "self_attn.v_proj", "self_attn.o_proj", "gate_proj", "up_proj", "down_proj")]
    missing = [n for n in need if n not in out]
    if missing:
        raise ExportError(
            f"{path} is not a Llama export of tools/train/export.py (unfused MatMul nodes named after their modules, "
            f"model.* initializers): missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        )
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half rows to llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tokenizer(writer, gguf, model: Path, cfg: dict) -> None:
    path = model / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{model} has no tokenizer.json")
    tok = json.loads(path.read_text())
    m = tok.get("model") or {}
    pre = tok.get("pre_tokenizer") or {}
    if m.get("type") != "BPE" or pre.get("type") != "ByteLevel" or pre.get("use_regex", True) is not True:
        raise ExportError(f"{path}: only a byte-level BPE with the GPT-2 regex converts (model {m.get('type')}, pre_tokenizer {pre.get('type')})")
    n = cfg["vocab_size"]
    by_id = {i: t for t, i in m["vocab"].items()}
    special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
    if max(by_id) >= n:
        raise ExportError(f"{path} has token id {max(by_id)}, outside config.json's vocab_size {n}")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED for i in range(n)]
    merges = [" ".join(p) if isinstance(p, list) else p for p in m.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if cfg.get("bos_token_id") is not None:
        writer.add_bos_token_id(int(cfg["bos_token_id"]))
    if eos is not None:
        writer.add_eos_token_id(int(eos))
    tc = model / "tokenizer_config.json"
    add_bos = bool(json.loads(tc.read_text()).get("add_bos_token", False)) if tc.is_file() else False
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)


def export(model: Path, out: Path, qtype: str, gguf_py: Path) -> None:
    sys.path.insert(0, str(gguf_py))
    import gguf  # noqa: E402  llama.cpp's own writer

    cfg = read_config(model)
    w = onnx_weights(model, cfg)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    Q = gguf.GGMLQuantizationType
    matrix_type = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[qtype]
    embed_type = Q.Q8_0 if qtype == "q4_0" else matrix_type
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]

    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(cfg.get("name") or model.name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(file_type)
    add_tokenizer(writer, gguf, model, cfg)

    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    for name, data in w.items():
        if name.endswith("q_proj.weight"):
            data = permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute(data, n_kv)
        # the block-level gate/up/down of this export sit under mlp. in HF's naming
        hf = "model." + re.sub(r"^(layers\.\d+\.)(gate_proj|up_proj|down_proj)", r"\1mlp.\2", name)
        gname = names.get_name(hf, try_suffixes=(".weight",))
        if gname is None:
            raise ExportError(f"no GGUF name for {hf}")
        if data.ndim == 1:
            kind = Q.F32
        elif name == "embed_tokens.weight":
            kind = embed_type
        else:
            kind = matrix_type
        if kind == Q.F32:
            writer.add_tensor(gname, data.astype(np.float32))
        elif kind == Q.F16:
            writer.add_tensor(gname, data.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(data, kind), raw_dtype=kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder: model.onnx, config.json, tokenizer.json")
    ap.add_argument("--out", required=True, help="the .gguf file to write (replaced when it exists)")
    ap.add_argument("--type", default="f32", choices=TYPES, help="weight type of the matrices (norms stay f32)")
    ap.add_argument("--gguf-py", help="an existing llama.cpp gguf-py folder (default: cloned from node-llama-cpp's bundle)")
    ap.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="node-llama-cpp's llama/gitRelease.bundle")
    ap.add_argument("--cache-dir", default=str(REPO / ".cache"), help="where the llama.cpp clone is kept")
    a = ap.parse_args()
    model = Path(a.model)
    if not model.is_dir():
        raise ExportError(f"--model {model} is not a folder")
    out = Path(a.out)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    try:
        export(model, tmp, a.type, gguf_py_dir(a.gguf_py, Path(a.bundle), Path(a.cache_dir)))
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(out)


if __name__ == "__main__":
    main()
