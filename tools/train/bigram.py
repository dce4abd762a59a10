"""Build MaG's bigram fallback: for every token, its most frequent successor in the training split.

Writes DIR/bigram.bin: little-endian uint32 [vocab]; entry a is argmax_b count(a, b), ties to the
lowest id; a token never followed by anything maps to the most frequent token overall. MaG uses it
to fill draft positions that no earlier occurrence covers (SPEC §4.1).

Usage: python3 tools/train/bigram.py --data data/tokens --vocab 8192 --out models/bigram.bin
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/tokens")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", default="models/bigram.bin")
    args = ap.parse_args()
    v = args.vocab
    counts = np.zeros((v, v), dtype=np.int32)
    unigram = np.zeros(v, dtype=np.int64)
    for path in sorted(Path(args.data).glob("train.*.bin")):
        s = np.fromfile(path, dtype=np.uint16).astype(np.int64)
        np.add.at(counts, (s[:-1], s[1:]), 1)
        unigram += np.bincount(s, minlength=v)
    table = counts.argmax(axis=1).astype(np.uint32)
    table[counts.max(axis=1) == 0] = int(unigram.argmax())
    table.astype("<u4").tofile(args.out)
    print(f"bigram table for {v} tokens -> {args.out}; {int((counts.max(axis=1) == 0).sum())} tokens never followed")


if __name__ == "__main__":
    main()
