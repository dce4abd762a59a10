"""Export a trained checkpoint as a model directory that follows SPEC §3.

Writes DIR/model.onnx (decoder with past, Optimum layout, tied embedding stored once), config.json,
tokenizer.json, tokenizer_config.json, and reference.json + reference.bin: torch logits for a fixed
held-out input, computed in two calls (a prefix, then the rest over the prefix's KV), which the
JavaScript tests compare with ONNX Runtime's output.

Usage: python3 tools/train/export.py --ckpt runs/target/ckpt.pt --out models/target
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
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bpe import Encoder  # noqa: E402
from model import FAMILY, Decoder, OnnxWrapper  # noqa: E402

REFERENCE_TOKENS = 16
REFERENCE_PREFIX = 10


def load(ckpt: str) -> Decoder:
    ck = torch.load(ckpt, weights_only=False)
    model = Decoder(FAMILY[ck["model_name"]])
    model.load_state_dict(ck["model"])
    model.eval()
    return model


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", "attention_sum", *present]


def export_onnx(model: Decoder, path: Path) -> None:
    cfg = model.cfg
    inputs, outputs = io_names(cfg.num_hidden_layers)
    past_len, s = 2, 3
    dummy = [
        torch.randint(0, cfg.vocab_size, (1, s)),
        torch.ones(1, past_len + s, dtype=torch.int64),
        torch.arange(past_len, past_len + s).unsqueeze(0),
    ]
    for _ in range(2 * cfg.num_hidden_layers):
        dummy.append(torch.randn(1, cfg.num_key_value_heads, past_len, cfg.head_dim))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
            "attention_sum": {0: "batch", 1: "sequence", 2: "total"}}
    for n in inputs[3:]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outputs[2:]:
        axes[n] = {0: "batch", 2: "total"}
    with torch.no_grad():
        torch.onnx.export(OnnxWrapper(model), tuple(dummy), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=14, do_constant_folding=True)
    graph = onnx.load(str(path))
    tie_head(graph, cfg.vocab_size, cfg.hidden_size)
    onnx.checker.check_model(graph)
    big = [i.name for i in graph.graph.initializer if list(i.dims) in ([cfg.vocab_size, cfg.hidden_size], [cfg.hidden_size, cfg.vocab_size])]
    if len(big) != 1:
        raise SystemExit(f"tied embedding stored {len(big)} times in {path}: {big}")
    onnx.save(graph, str(path))


def tie_head(graph: onnx.ModelProto, vocab: int, hidden: int) -> None:
    """Constant folding turns the tied head into MatMul with a transposed copy of the embedding;
    make it Gemm(h, embedding, transB=1) so the embedding is stored once."""
    inits = {i.name: i for i in graph.graph.initializer}
    emb = next(n for n, i in inits.items() if list(i.dims) == [vocab, hidden])
    for node in graph.graph.node:
        copy = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if copy is not None and list(copy.dims) == [hidden, vocab]:
            e = onnx.numpy_helper.to_array(inits[emb])
            if not np.array_equal(onnx.numpy_helper.to_array(copy), e.T):
                raise SystemExit("head weight is not the transposed embedding")
            node.op_type = "Gemm"
            node.input[1] = emb
            node.attribute.append(onnx.helper.make_attribute("transB", 1))
            graph.graph.initializer.remove(copy)
            return


def reference(model: Decoder, enc: Encoder, text: str) -> tuple[list[int], np.ndarray]:
    """Logits for REFERENCE_TOKENS tokens, computed as prefix + continuation over the prefix's KV."""
    ids = enc.encode(text)[:REFERENCE_TOKENS]
    cfg = model.cfg
    empty = [(torch.zeros(1, cfg.num_key_value_heads, 0, cfg.head_dim),) * 2 for _ in range(cfg.num_hidden_layers)]
    x = torch.tensor([ids])
    with torch.no_grad():
        a, past = model.forward_with_past(x[:, :REFERENCE_PREFIX], torch.ones(1, REFERENCE_PREFIX, dtype=torch.int64),
                                          torch.arange(REFERENCE_PREFIX).unsqueeze(0), empty)
        b, _ = model.forward_with_past(x[:, REFERENCE_PREFIX:], torch.ones(1, len(ids), dtype=torch.int64),
                                       torch.arange(REFERENCE_PREFIX, len(ids)).unsqueeze(0), past)
        full = model(x)
    both = torch.cat([a, b], dim=1)[0]
    drift = (both - full[0]).abs().max().item()
    if drift > 1e-4:
        raise SystemExit(f"incremental torch forward differs from the full forward by {drift}")
    return ids, both.numpy().astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="training checkpoint to export")
    src.add_argument("--from-model", help="re-export the weights of an exported model directory (after an exporter change)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default="models/tokenizer.json")
    ap.add_argument("--reference-text", default="data/corpus/test.code.txt")
    args = ap.parse_args()
    if args.ckpt:
        model = load(args.ckpt)
    else:
        from onnx_weights import load_from_model_dir
        model = load_from_model_dir(Path(args.from_model)).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "model.onnx")
    (out / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=2) + "\n")
    shutil.copyfile(args.tokenizer, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": None, "clean_up_tokenization_spaces": False, "model_max_length": model.cfg.max_position_embeddings}, indent=2) + "\n")
    text = Path(args.reference_text).read_text(encoding="utf-8")[:400]
    ids, logits = reference(model, Encoder(args.tokenizer), text)
    logits.tofile(out / "reference.bin")
    (out / "reference.json").write_text(json.dumps({
        "text": text, "input_ids": ids, "prefix": REFERENCE_PREFIX,
        "logits": {"file": "reference.bin", "dtype": "float32", "shape": list(logits.shape)}}, indent=1) + "\n")
    print(f"exported {out}: {(out / 'model.onnx').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
