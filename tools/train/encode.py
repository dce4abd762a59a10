"""Encode the corpus splits into uint16 token streams: DIR/{split}.{domain}.bin.

Usage: python3 tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json --out data/tokens
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bpe import Encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="models/tokenizer.json")
    ap.add_argument("--out", default="data/tokens")
    args = ap.parse_args()
    enc = Encoder(args.tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for path in sorted(Path(args.corpus).glob("*.txt")):
        ids = np.array(enc.encode(path.read_text(encoding="utf-8")), dtype=np.uint16)
        ids.tofile(out / (path.stem + ".bin"))
        counts[path.stem] = int(len(ids))
        print(f"{path.stem:16s} {len(ids):>10d} tokens", flush=True)
    (out / "counts.json").write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
