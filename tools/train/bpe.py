"""Train a byte-level BPE tokenizer and write it as a Hugging Face tokenizer.json.

Byte-level: every byte is a base symbol (GPT-2's bytes_to_unicode mapping), so any UTF-8 text
round-trips losslessly. Pre-tokenization is GPT-2's regex, the pattern the ByteLevel pre-tokenizer
of both the Rust `tokenizers` crate and tokenizers.js applies when `use_regex` is true, so training
and run-time splitting agree. Merges are learned with incremental pair counts (a heap with lazy
deletion), so each merge touches only the words containing the merged pair.

Usage: python3 tools/train/bpe.py --corpus data/corpus --vocab 8192 --out models/tokenizer.json
"""
from __future__ import annotations

import argparse
import collections
import heapq
import json
from pathlib import Path

import regex

GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ["<|endoftext|>"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def count_words(texts, max_bytes: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    seen = 0
    for text in texts:
        for doc in text.split(SPECIAL_TOKENS[0]):
            counts.update(GPT2_PATTERN.findall(doc))
            seen += len(doc)
            if seen >= max_bytes:
                return counts
    return counts


def train(counts: collections.Counter, vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    b2u = bytes_to_unicode()
    symbols = [b2u[b] for b in range(256)]
    sym_id = {s: i for i, s in enumerate(symbols)}
    words = [[sym_id[b2u[b]] for b in w.encode("utf-8")] for w in counts]
    freqs = list(counts.values())
    pair_counts: collections.Counter = collections.Counter()
    where: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
    for wi, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += freqs[wi]
            where[(a, b)].add(wi)
    heap = [(-c, symbols[a], symbols[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    target = vocab_size - len(SPECIAL_TOKENS)
    while len(symbols) < target and heap:
        negc, _, _, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -negc or negc == 0:
            continue  # stale heap entry
        new = len(symbols)
        symbols.append(symbols[a] + symbols[b])
        merges.append((symbols[a], symbols[b]))
        changed: set[tuple[int, int]] = set()
        for wi in list(where.pop((a, b), ())):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                changed.add(p)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where[p].add(wi)
                changed.add(p)
        pair_counts.pop((a, b), None)
        for p in changed:
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, symbols[p[0]], symbols[p[1]], p[0], p[1]))
            else:
                pair_counts.pop(p, None)
    return symbols, merges


def tokenizer_json(symbols: list[str], merges: list[tuple[str, str]]) -> dict:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in SPECIAL_TOKENS
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges],
        },
    }


class Encoder:
    """Encodes text with a tokenizer.json written by this script (the same splits and merges that
    tokenizers.js applies at run time; a test checks the two agree)."""

    def __init__(self, path: str | Path):
        tj = json.loads(Path(path).read_text(encoding="utf-8"))
        self.vocab: dict[str, int] = tj["model"]["vocab"]
        self.ranks = {tuple(m): i for i, m in enumerate(tj["model"]["merges"])}
        self.b2u = bytes_to_unicode()
        self.special = {t["content"]: t["id"] for t in tj["added_tokens"]}
        self.cache: dict[str, list[int]] = {}

    def _word(self, w: str) -> list[int]:
        hit = self.cache.get(w)
        if hit is not None:
            return hit
        parts = [self.b2u[b] for b in w.encode("utf-8")]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: self.ranks.get((parts[i], parts[i + 1]), 1 << 30))
            if (parts[best], parts[best + 1]) not in self.ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[w] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Text to ids; the end-of-text marker becomes its special id."""
        out: list[int] = []
        eot = SPECIAL_TOKENS[0]
        for i, doc in enumerate(text.split(eot)):
            if i:
                out.append(self.special[eot])
            for w in GPT2_PATTERN.findall(doc):
                out.extend(self._word(w))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--sample-bytes", type=int, default=12_000_000, help="bytes of each domain's train split to learn from")
    ap.add_argument("--out", default="models/tokenizer.json")
    args = ap.parse_args()
    counts: collections.Counter = collections.Counter()
    for path in sorted(Path(args.corpus).glob("train.*.txt")):
        counts.update(count_words([path.read_text(encoding="utf-8")], args.sample_bytes))
    symbols, merges = train(counts, args.vocab)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tokenizer_json(symbols, merges), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(counts)} distinct pre-tokens, vocabulary {len(symbols) + len(SPECIAL_TOKENS)}, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main()
