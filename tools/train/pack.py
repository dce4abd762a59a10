"""Carry trained checkpoints between machines in small files, and unpack them again.

A GPU lent through a device tool returns at most a few files of 16 MiB, 64 MiB together, so a
checkpoint travels as weights (.npz) plus its metadata (.json: step, log, args, ...) without the
optimizer state, and its .npz is cut into parts. `--half` rounds the weights to float16 first (the
target's 94 MB of float32 would not fit); the script reports the validation NLL before and after
rounding so that the loss is measured, not assumed. Unpacking writes a checkpoint that train.py
(--init, --teacher), export.py and evaluate.py read like any other.

Usage:
  python3 tools/train/pack.py pack --ckpt runs/target/ckpt.pt --name target --out OUT [--half] [--data data/tokens]
  python3 tools/train/pack.py unpack --dir OUT --name target --ckpt runs/target/ckpt.pt
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

PART_BYTES = 15 * 1024 * 1024


def pack(args: argparse.Namespace) -> None:
    ck = torch.load(args.ckpt, weights_only=False, map_location="cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.float16 if args.half else np.float32
    weights = {k: v.float().numpy().astype(dtype) for k, v in ck["model"].items()}
    meta = {k: v for k, v in ck.items() if k not in ("model", "opt")}
    meta["packed_dtype"] = np.dtype(dtype).name
    if args.half and args.data:
        from model import FAMILY, Decoder
        from train import evaluate, load_split
        val = load_split(Path(args.data), "val")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = Decoder(FAMILY[ck["model_name"]]).to(device)
        seq = ck["args"]["seq"]
        model.load_state_dict(ck["model"])
        before = evaluate(model, val, seq, 65536)
        model.load_state_dict({k: torch.from_numpy(w.astype(np.float32)) for k, w in weights.items()})
        after = evaluate(model, val, seq, 65536)
        meta["half_rounding_val_nll"] = {"float32": before, "float16": after}
        print(f"{args.name}: validation NLL float32 {before} -> float16-rounded {after}", flush=True)
    buf = io.BytesIO()
    np.savez(buf, **weights)
    data = buf.getvalue()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    for i, p in enumerate(parts):
        (out / f"{args.name}.npz.part{i}").write_bytes(p)
    meta["parts"] = len(parts)
    (out / f"{args.name}.json").write_text(json.dumps(meta))
    print(f"{args.name}: {len(data) / 1e6:.1f} MB in {len(parts)} parts", flush=True)


def unpack(args: argparse.Namespace) -> None:
    d = Path(args.dir)
    meta = json.loads((d / f"{args.name}.json").read_text())
    data = b"".join((d / f"{args.name}.npz.part{i}").read_bytes() for i in range(meta["parts"]))
    with np.load(io.BytesIO(data)) as z:
        model = {k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files}
    ck = dict(meta, model=model)
    Path(args.ckpt).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, args.ckpt)
    print(f"{args.name}: {sum(v.numel() for v in model.values()) / 1e6:.2f}M weights -> {args.ckpt}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true")
    p.add_argument("--data", default="data/tokens", help="validation tokens for the rounding check ('' to skip)")
    u = sub.add_parser("unpack")
    u.add_argument("--dir", required=True)
    u.add_argument("--name", required=True)
    u.add_argument("--ckpt", required=True)
    args = ap.parse_args()
    pack(args) if args.cmd == "pack" else unpack(args)


if __name__ == "__main__":
    main()
