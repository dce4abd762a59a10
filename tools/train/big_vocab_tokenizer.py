"""Grow a byte-level BPE tokenizer.json to a large vocabulary with synthetic merges.

For test fixtures that need a Qwen2-sized vocabulary (151936 tokens) without training one: the
project's tokenizer (models/tokenizer.json, 8192 tokens) is kept as it is, and synthetic merges are
appended after its own, at the lowest priority. Each new token is the concatenation of two tokens
already in the vocabulary (the merge `a b` -> `ab`) that is not in the vocabulary yet, and gets the
next free id, so ids 0..N-1 are each used exactly once (the added tokens, e.g. <|endoftext|> at 0,
keep their ids). The pairs are drawn by a seeded random generator from the original tokens of at
most SHORT_HALF symbols (about 2,500 tokens, so millions of candidate pairs), which keeps the new
tokens 2..6 symbols long and the file small; which text they cover is of no interest, only that
the file is a valid BPE and round-trips. The same input, size and seed give the same file.

Because the original merges keep their ranks and come first, most text encodes almost as before;
a new merge fires only when both halves appear adjacent in a pre-token after the original merges.
Decoding is unaffected (byte-level: every token is a string of byte symbols).

Usage: python3 tools/train/big_vocab_tokenizer.py --in models/tokenizer.json --size 151936 --out OUT/tokenizer.json
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SHORT_HALF = 3  # halves of a synthetic merge: original tokens of at most this many byte symbols


def grow(tj: dict, size: int, seed: int = 0) -> dict:
    model = tj["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges: list = [list(m) for m in model["merges"]]
    ids = set(vocab.values())
    for t in tj["added_tokens"]:
        ids.add(t["id"])
    if len(ids) != len(vocab) or ids != set(range(len(ids))):
        raise SystemExit("the input's ids are not 0..n-1, each used once (vocab + added tokens)")
    if size < len(ids):
        raise SystemExit(f"--size {size} is below the input's vocabulary {len(ids)}")
    special = {t["content"] for t in tj["added_tokens"]}
    halves = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if tok not in special and len(tok) <= SHORT_HALF]
    seen_pairs = {tuple(m) for m in merges}
    rng = random.Random(seed)
    next_id = len(vocab)
    while next_id < size:
        a, b = rng.choice(halves), rng.choice(halves)
        new = a + b
        if new in vocab or (a, b) in seen_pairs:
            continue
        vocab[new] = next_id
        merges.append([a, b])
        seen_pairs.add((a, b))
        next_id += 1
    out = dict(tj)
    out["model"] = dict(model, vocab=vocab, merges=merges)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp", default="models/tokenizer.json")
    ap.add_argument("--size", type=int, default=151936, help="vocabulary size to reach (model vocab incl. added tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tj = json.loads(Path(args.inp).read_text(encoding="utf-8"))
    big = grow(tj, args.size, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(big, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    m = big["model"]
    print(f"{len(tj['model']['vocab'])} -> {len(m['vocab'])} tokens, {len(m['merges'])} merges -> {out} "
          f"({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
