"""An exported EAGLE drafter (models/eagle) with its head over the target's whole vocabulary: the
graph's `drafter.draft_vocab` initializer (the FR-Spec rows of the target's frozen head, most frequent
first) becomes 0..V-1, and config.json's `draft_vocab` with it. The drafter's layer is unchanged; its
predicted feature is read by every row of the target's head instead of the 2048 most frequent
(issue 24: the full-head lever, bench/results/eagle-full-head).

    /usr/bin/python3 tools/train/eagle_full_head.py models/eagle OUT_DIR
    npx cascade quantize --model OUT_DIR --out OUT_DIR-int8 --bits 8 --quantize-head

OUT_DIR has no reference.bin (the torch reference is the shipped head's): tools/train/eagle_check.mjs
does not apply to it; tools/train/eagle_agreement.mjs and tools/bench/drafter-cost.mjs do.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: eagle_full_head.py DRAFTER_DIR OUT_DIR")
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    if out.resolve() == src.resolve():
        sys.exit("OUT_DIR must differ from DRAFTER_DIR")
    cfg = json.loads((src / "config.json").read_text())
    vocab = cfg["vocab_size"]
    model = onnx.load(str(src / "model.onnx"))
    found = [i for i, init in enumerate(model.graph.initializer) if init.name == "drafter.draft_vocab"]
    if len(found) != 1:
        sys.exit(f"{src}/model.onnx has no drafter.draft_vocab initializer: not an EAGLE drafter of tools/train/eagle.py")
    model.graph.initializer[found[0]].CopyFrom(numpy_helper.from_array(np.arange(vocab, dtype=np.int64), "drafter.draft_vocab"))
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    (out / "config.json").write_text(json.dumps({**cfg, "draft_vocab": list(range(vocab))}, indent=1) + "\n")
    print(f"wrote {out}: the head over all {vocab} tokens (was {len(cfg['draft_vocab'])})")


if __name__ == "__main__":
    main()
