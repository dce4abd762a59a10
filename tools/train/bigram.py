"""Build MaG's fill tables from the training split: a bigram table and, optionally, a trigram table.

bigram.bin: little-endian uint32 [vocab]; entry a is argmax_b count(a, b), ties to the lowest id; a
token never followed by anything maps to the most frequent token overall.

trigram.bin (--trigram-out): for each pair (a, b), its most frequent successor c (ties to the lowest
id), kept where (a, b, c) occurs at least --min-count times (default 5) and c differs from
bigram[b]. Little-endian uint32 throughout: the magic "MAG3", the vocabulary size V, the entry
count N, row offsets [V + 1] (the entries of a are offsets[a]..offsets[a+1], ascending b), b of
each entry [N], c of each entry [N] (src/kernels/maxgram.ts, TrigramTable).

MaG uses them to fill draft positions that no earlier occurrence covers (SPEC §4.1): the trigram's
successor where it has one, else the bigram's.

Usage:
  python3 tools/train/bigram.py --data data/tokens --vocab 8192 --out models/bigram.bin
  python3 tools/train/bigram.py --out models/bigram.bin --trigram-out models/trigram.bin [--min-count 5]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MAGIC = 0x3347414D  # "MAG3"


def trigram_table(keys: np.ndarray, bigram: np.ndarray, v: int, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row offsets [v+1], seconds [n], successors [n] from trigram keys (a*v + b)*v + c: each pair's
    most frequent successor (ties to the lowest id), kept where that trigram was seen >= min_count
    times and its successor is not the bigram's."""
    uniq, counts = np.unique(keys, return_counts=True)
    pair, succ = uniq // v, uniq % v
    order = np.lexsort((succ, -counts, pair))
    pair, succ, counts = pair[order], succ[order], counts[order]
    first = np.r_[True, pair[1:] != pair[:-1]]
    pair, succ, counts = pair[first], succ[first], counts[first]
    keep = (counts >= min_count) & (succ != bigram[pair % v])
    pair, succ = pair[keep], succ[keep]
    a, b = pair // v, pair % v  # ascending by (a, b)
    offsets = np.zeros(v + 1, dtype=np.int64)
    np.add.at(offsets, a + 1, 1)
    return np.cumsum(offsets), b, succ


def main() -> None:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    ap.add_argument("--data", default="data/tokens", help="token streams (train.*.bin, uint16) from tools/train/encode.py")
    ap.add_argument("--vocab", type=int, default=8192, help="the tokenizer's vocabulary size")
    ap.add_argument("--out", default="models/bigram.bin", help="where the bigram table goes (always written)")
    ap.add_argument("--trigram-out", help="also write the trigram table here")
    ap.add_argument("--min-count", type=int, default=5, help="a pair whose most frequent successor follows it fewer times stays out of the trigram table")
    args = ap.parse_args()
    v = args.vocab
    counts = np.zeros((v, v), dtype=np.int32)
    unigram = np.zeros(v, dtype=np.int64)
    streams = []
    paths = sorted(Path(args.data).glob("train.*.bin"))
    if not paths:
        raise SystemExit(f"no training split in {args.data} (train.*.bin): run tools/train/corpus.py, then encode.py")
    for path in paths:
        s = np.fromfile(path, dtype=np.uint16).astype(np.int64)
        streams.append(s)
        np.add.at(counts, (s[:-1], s[1:]), 1)
        unigram += np.bincount(s, minlength=v)
    table = counts.argmax(axis=1).astype(np.uint32)
    table[counts.max(axis=1) == 0] = int(unigram.argmax())
    table.astype("<u4").tofile(args.out)
    print(f"bigram table for {v} tokens -> {args.out}; {int((counts.max(axis=1) == 0).sum())} tokens never followed")
    if args.trigram_out:
        # keys per stream: a pair never spans two files
        keys = np.concatenate([(s[:-2] * v + s[1:-1]) * v + s[2:] for s in streams])
        offsets, seconds, successors = trigram_table(keys, table.astype(np.int64), v, args.min_count)
        n = len(seconds)
        with open(args.trigram_out, "wb") as f:
            np.array([MAGIC, v, n], dtype="<u4").tofile(f)
            offsets.astype("<u4").tofile(f)
            seconds.astype("<u4").tofile(f)
            successors.astype("<u4").tofile(f)
        print(f"trigram table: {n} pairs whose most frequent successor (seen >= {args.min_count} times) differs from the bigram's -> {args.trigram_out}")


if __name__ == "__main__":
    main()
