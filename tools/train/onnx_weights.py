"""Recover a model's torch weights from its exported model.onnx, so training can resume from the
shipped model directory when no checkpoint survives (checkpoints are never committed).

The export folds each Linear into MatMul(x, W^T) with an anonymous initializer; the MatMul node's
name keeps the module path (/layers.0/self_attn/q_proj/MatMul), which names the parameter. The
recovered weights are checked against the directory's reference logits before they are trusted.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model import FAMILY, Decoder  # noqa: E402


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, arr in inits.items():
        if name.startswith("model."):
            state[name[len("model."):]] = torch.from_numpy(arr.copy())
    for node in graph.node:
        m = re.fullmatch(r"/(.+)/MatMul", node.name)
        if node.op_type == "MatMul" and m and node.input[1] in inits:
            state[m.group(1).replace("/", ".") + ".weight"] = torch.from_numpy(inits[node.input[1]].T.copy())
    return state


def load_from_model_dir(model_dir: Path) -> Decoder:
    """The Decoder stored in model_dir, verified against reference.bin (max abs diff < 1e-3)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    model = Decoder(FAMILY[cfg["name"]])
    missing, unexpected = model.load_state_dict(state_dict_from_onnx(model_dir / "model.onnx"), strict=False)
    if missing or unexpected:
        raise SystemExit(f"{model_dir}: cannot map ONNX weights (missing {missing}, unexpected {unexpected})")
    ref = json.loads((model_dir / "reference.json").read_text())
    want = np.fromfile(model_dir / ref["logits"]["file"], dtype=np.float32).reshape(ref["logits"]["shape"])
    model.eval()
    with torch.no_grad():
        got = model(torch.tensor([ref["input_ids"]]))[0].numpy()
    diff = float(np.abs(got - want).max())
    if diff > 1e-3:
        raise SystemExit(f"{model_dir}: weights recovered from ONNX give logits {diff} away from the reference")
    model.train()
    return model


if __name__ == "__main__":
    for d in sys.argv[1:]:
        load_from_model_dir(Path(d))
        print(f"{d}: weights recovered and verified against the reference logits")
