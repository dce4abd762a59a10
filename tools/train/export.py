"""Export a trained checkpoint as a model directory that follows SPEC §3.

Writes DIR/model.onnx (decoder with past, Optimum layout, tied embedding stored once), config.json,
tokenizer.json, tokenizer_config.json, and reference.json + reference.bin: torch logits for a fixed
held-out input, computed in two calls (a prefix, then the rest over the prefix's KV), which the
JavaScript tests compare with ONNX Runtime's output.

Random mode (`--random SEED`): no checkpoint; a Decoder of the sizes given by --vocab-size,
--hidden-size, --layers, --heads, --kv-heads and --intermediate-size, initialised from
torch.manual_seed(SEED) with normal(0, --init-std) matrices (the Decoder's own init; RMSNorm weights 1),
exported the same way. For test fixtures (e.g. a large vocabulary; --vocab-size may exceed the
tokenizer's, a padded embedding as Qwen2 has). The reference text defaults to a short built-in one,
and with a large vocabulary (over REFERENCE_FULL_MAX_VOCAB) reference.bin is not written: reference.json
then holds, per input position, the argmax and the top-5 logits ("top_logits") instead of a
"logits" file entry. It also writes generation_config.json (eos = the tokenizer's <|endoftext|>) and
the family's chat template in tokenizer_config.json.

Usage: python3 tools/train/export.py --ckpt runs/target/ckpt.pt --out models/target
       python3 tools/train/export.py --random 1 --vocab-size 152064 --hidden-size 8 --layers 2 --heads 2 \
           --kv-heads 1 --intermediate-size 16 --tokenizer big/tokenizer.json --out test/fixtures/hf/qwen-152k/target
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bpe import Encoder  # noqa: E402
from model import FAMILY, Decoder, ModelConfig, OnnxWrapper  # noqa: E402

REFERENCE_TOKENS = 16
REFERENCE_PREFIX = 10
# Random mode: the reference text when --reference-text is not given (at least REFERENCE_TOKENS tokens).
BUILTIN_REFERENCE_TEXT = ("def fibonacci(n):\n    if n < 2:\n        return n\n"
                          "    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\nprint(fibonacci(10))\n")
# Above this vocabulary random mode keeps only the top logits (16 x 152064 float32 would be 9.7 MB).
REFERENCE_FULL_MAX_VOCAB = 32768
REFERENCE_TOP_K = 5
# The chat template of the trained family (models/*/tokenizer_config.json), given to random exports too.
FAMILY_CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n\\n' }}"
                        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")


def load(ckpt: str) -> Decoder:
    ck = torch.load(ckpt, weights_only=False)
    model = Decoder(FAMILY[ck["model_name"]])
    model.load_state_dict(ck["model"])
    model.eval()
    return model


def random_model(args: argparse.Namespace) -> Decoder:
    """A Decoder with random weights: torch.manual_seed(seed), normal(0, init_std) matrices."""
    cfg = ModelConfig(name=args.name or f"random-{args.random}", vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads or args.heads, intermediate_size=args.intermediate_size,
                      max_position_embeddings=args.max_positions)
    if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads or cfg.head_dim % 2:
        raise SystemExit("--hidden-size must be a multiple of --heads (with an even head_dim), and --heads of --kv-heads")
    torch.manual_seed(args.random)
    model = Decoder(cfg)
    if args.init_std != 0.02:  # the Decoder's own init uses 0.02 (scaled down for o_proj/down_proj)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2:
                    scale = 1 / math.sqrt(2 * cfg.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                    p.normal_(0.0, args.init_std * scale)
    return model.eval()


def special_id(tokenizer: str, content: str) -> int:
    tj = json.loads(Path(tokenizer).read_text(encoding="utf-8"))
    ids = [t["id"] for t in tj["added_tokens"] if t["content"] == content]
    if not ids:
        raise SystemExit(f"{tokenizer} has no added token {content}")
    return ids[0]


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", "attention_sum", *present]


@contextlib.contextmanager
def traceable_repeat_interleave():
    """torch 1.13 exports Tensor.repeat_interleave (GQA's KV-head expansion in model.Attention) with
    a Reshape to the dummy input's static shape, so the graph fails for any other sequence or past
    length ("left operand cannot broadcast"). During export, compute the same result with
    unsqueeze + expand + reshape over the traced (dynamic) sizes. Unused without GQA."""
    original = torch.Tensor.repeat_interleave

    def expand(self, repeats, dim=None, *, output_size=None):
        if not isinstance(repeats, int) or dim != 1 or self.dim() != 4:
            return original(self, repeats, dim, output_size=output_size)
        b, h, t, d = self.shape
        return self.unsqueeze(2).expand(b, h, repeats, t, d).reshape(b, h * repeats, t, d)

    torch.Tensor.repeat_interleave = expand
    try:
        yield
    finally:
        torch.Tensor.repeat_interleave = original


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
    with torch.no_grad(), traceable_repeat_interleave():
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
    src.add_argument("--random", type=int, metavar="SEED", help="export a random-weight model of the sizes below (test fixtures)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default="models/tokenizer.json")
    ap.add_argument("--reference-text", default=None,
                    help="text whose first tokens the reference logits are for (default data/corpus/test.code.txt; "
                         "with --random, a short built-in text)")
    rnd = ap.add_argument_group("random mode (--random SEED)")
    rnd.add_argument("--name", help="config.json name (default random-SEED)")
    rnd.add_argument("--vocab-size", type=int, default=8192, help="embedding rows; may exceed the tokenizer's (padding)")
    rnd.add_argument("--hidden-size", type=int, default=64)
    rnd.add_argument("--layers", type=int, default=1)
    rnd.add_argument("--heads", type=int, default=1)
    rnd.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    rnd.add_argument("--intermediate-size", type=int, default=128)
    rnd.add_argument("--max-positions", type=int, default=2048)
    rnd.add_argument("--init-std", type=float, default=0.02, help="std of the normal init of the weight matrices")
    args = ap.parse_args()
    if args.ckpt:
        model = load(args.ckpt)
    elif args.from_model:
        from onnx_weights import load_from_model_dir
        model = load_from_model_dir(Path(args.from_model)).eval()
    else:
        model = random_model(args)
    if args.reference_text is None and args.random is None:
        args.reference_text = "data/corpus/test.code.txt"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "model.onnx")
    (out / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=2) + "\n")
    shutil.copyfile(args.tokenizer, out / "tokenizer.json")
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": None, "clean_up_tokenization_spaces": False, "model_max_length": model.cfg.max_position_embeddings}
    if args.random is not None:
        tok_cfg["chat_template"] = FAMILY_CHAT_TEMPLATE
        eos = special_id(args.tokenizer, "<|endoftext|>")
        (out / "generation_config.json").write_text(json.dumps({
            "bos_token_id": eos, "eos_token_id": eos}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    if args.random is not None and args.reference_text is None:
        text = BUILTIN_REFERENCE_TEXT
    else:
        text = Path(args.reference_text).read_text(encoding="utf-8")[:400]
    ids, logits = reference(model, Encoder(args.tokenizer), text)
    meta = {"text": text, "input_ids": ids, "prefix": REFERENCE_PREFIX}
    if args.random is not None and model.cfg.vocab_size > REFERENCE_FULL_MAX_VOCAB:
        (out / "reference.bin").unlink(missing_ok=True)
        top = np.argsort(-logits, axis=-1, kind="stable")[:, :REFERENCE_TOP_K]
        meta["top_logits"] = {
            "shape": list(logits.shape), "k": REFERENCE_TOP_K,
            "argmax": logits.argmax(-1).tolist(),
            "ids": top.tolist(),
            "values": [[float(logits[r, c]) for c in row] for r, row in enumerate(top)],
            "row_std": [float(v) for v in logits.std(-1)],
        }
    else:
        logits.tofile(out / "reference.bin")
        meta["logits"] = {"file": "reference.bin", "dtype": "float32", "shape": list(logits.shape)}
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"exported {out}: {(out / 'model.onnx').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
