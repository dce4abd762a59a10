"""A model folder's float32 weights as float16 for travel, and back to float32 where they land.

The bundled target (94 MB of float32 weights) does not fit the 64 MiB a call to the GPU machine may
carry. Packed, it is its graph with the weights stripped (external data, `weights.bin`) plus the
weights as float16 in `weights.f16` (47 MB); unpacked on the GPU machine, `weights.bin` holds those
values as float32 again, and the model computes in float32 as the bundled one does. The bundled
family's weights are float16 values already (tools/train/pack.py --half rounded them when they were
trained), so for them the round trip is exact: `pack` counts the weights that change, and says so.
Another model's would be rounded: a model of its own, compared there with its own target-only
decoding. The folder's other files travel as they are, except the reference files (reference.bin,
reference.json), which the GPU run does not read.

Here:        /usr/bin/python3 tools/gpu/travel_weights.py pack models/target .gpu-family/target
GPU machine: python3 travel_weights.py unpack .gpu-family/target     (numpy and onnx only)
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

WEIGHTS = "weights.bin"
HALF = "weights.f16"
MIN_BYTES = 1024  # smaller initializers (shapes, scalars, norms' epsilons) stay in the graph


def pack(src: Path, dst: Path) -> None:
    import numpy as np
    import onnx
    from onnx.external_data_helper import set_external_data

    if dst.exists():
        raise SystemExit(f"travel_weights.py: {dst} exists; remove it first")
    onnx_files = sorted(src.glob("*.onnx"))
    if len(onnx_files) != 1:
        raise SystemExit(f"travel_weights.py: {src} must hold exactly one .onnx graph, found {len(onnx_files)}")
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".onnx" and not f.name.startswith("reference"):
            shutil.copy2(f, dst / f.name)
    m = onnx.load(str(onnx_files[0]), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        shutil.rmtree(dst)
        raise SystemExit(f"travel_weights.py: {onnx_files[0]} keeps weights in external data files; pack takes a graph that holds its own")
    off = changed = 0
    with open(dst / HALF, "wb") as half:
        for t in m.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) > MIN_BYTES:
                values = np.frombuffer(t.raw_data, dtype=np.float32)
                halves = values.astype(np.float16)
                if not np.isfinite(halves).all():
                    shutil.rmtree(dst)
                    raise SystemExit(f"travel_weights.py: {t.name} has values outside float16's range")
                changed += int(np.count_nonzero(halves.astype(np.float32) != values))
                half.write(halves.tobytes())
                set_external_data(t, WEIGHTS, offset=off, length=len(t.raw_data))
                off += len(t.raw_data)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(m, str(dst / onnx_files[0].name))
    exact = "exactly (every one is a float16 value)" if changed == 0 else f"rounded ({changed} of them change)"
    print(f"{src} -> {dst}: {off // 4} float32 weights travel as float16, {exact}: {(dst / HALF).stat().st_size} bytes", flush=True)


def unpack(dst: Path) -> None:
    import numpy as np

    half = dst / HALF
    if not half.exists():
        raise SystemExit(f"travel_weights.py: {half} is missing (made by `pack`)")
    # written aside and renamed: an unpack cut off leaves no weights.bin that looks whole
    np.fromfile(half, dtype=np.float16).astype(np.float32).tofile(dst / (WEIGHTS + ".tmp"))
    (dst / (WEIGHTS + ".tmp")).replace(dst / WEIGHTS)
    print(f"{dst}: {WEIGHTS} written ({(dst / WEIGHTS).stat().st_size} bytes)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("pack", "unpack") or (sys.argv[1] == "pack") != (len(sys.argv) == 4):
        raise SystemExit(__doc__)
    if sys.argv[1] == "pack":
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        unpack(Path(sys.argv[2]))
