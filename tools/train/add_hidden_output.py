"""Add the target's last hidden state as a graph output, `hidden_states`, to an exported model.onnx.

The feature is the input of the LM head: the last layer's output after the final RMSNorm
(`/norm/Mul_1` in export.py's graph), float32 [batch, sequence, hidden], one row per input token,
as EAGLE-1 takes it (HF LlamaModel's `last_hidden_state`). A feature drafter's predicted feature
therefore goes straight into the frozen head: logits = hidden_states @ embed_tokens^T.

No weights change and no node is rewritten: an Identity node copies the head's input to the new
output, appended after the existing outputs (logits, attention_sum, present.*), so a runner that
reads outputs by name sees the same graph. The head is found as the Gemm/MatMul whose weight is the
[vocab, hidden] embedding initializer; its data input is a Reshape [b * s, hidden] of the feature.

Usage: python3 tools/train/add_hidden_output.py models/target/model.onnx --out scratch/target-hidden/model.onnx
       (copies the rest of the model directory beside it with --copy-dir)
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import onnx
import onnx.helper

OUTPUT = "hidden_states"


def head_input(graph: onnx.GraphProto) -> tuple[str, int]:
    """The name of the head's [b, s, hidden] input tensor and the hidden size."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if not node.input[1].endswith("embed_tokens.weight"):
            continue
        dims = list(inits[node.input[1]].dims)
        reshape = producer.get(node.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            raise SystemExit(f"the head {node.name} does not read a Reshape of the feature")
        return reshape.input[0], dims[1]
    raise SystemExit("no LM head over the embedding initializer in this graph")


def add_hidden_output(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    if any(o.name == OUTPUT for o in graph.output):
        raise SystemExit(f"the graph already has an output {OUTPUT}")
    feature, hidden = head_input(graph)
    graph.node.append(onnx.helper.make_node("Identity", [feature], [OUTPUT], name="/hidden_states/Identity"))
    graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", "sequence", hidden]))
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an exported model.onnx (export.py's layout)")
    ap.add_argument("--out", required=True, help="where to write the featured model.onnx")
    ap.add_argument("--copy-dir", action="store_true", help="also copy the other files of the model's directory beside --out")
    args = ap.parse_args()
    src, out = Path(args.model), Path(args.out)
    if src.resolve() == out.resolve():
        raise SystemExit("write the featured graph beside the original, not over it")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = add_hidden_output(onnx.load(str(src)))
    onnx.save(model, str(out))
    if args.copy_dir:
        for f in src.parent.iterdir():
            if f.is_file() and f.name != src.name:
                shutil.copyfile(f, out.parent / f.name)
    print(f"{out}: outputs {[o.name for o in model.graph.output][:2]} ... {model.graph.output[-1].name} "
          f"[batch, sequence, {model.graph.output[-1].type.tensor_type.shape.dim[2].dim_value}]")


if __name__ == "__main__":
    main()
