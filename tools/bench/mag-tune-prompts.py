"""Tuning prompts for MaG's fill and the schedule's match-length classes, disjoint from every measured set.

Code: TypeScript declarations, .mjs and .cjs files of this checkout's node_modules (`cascade bench
peer` and tools/bench/heldout-prompts.mjs take .js files); English: README and NEWS files of
/usr/share/doc (the measured sets take man pages). Each prompt is whole lines of at most 700
characters, 16 per workload, picked evenly over the sorted candidates.

Usage: python3 tools/bench/mag-tune-prompts.py --out DIR   (writes DIR/code.jsonl and DIR/english.jsonl)
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
from pathlib import Path


def cut(text: str, chars: int = 700) -> str:
    out = ""
    for line in text.split("\n"):
        if len(out) + len(line) + 1 > chars:
            break
        out += line + "\n"
    return out


def pick(paths: list[str], n: int) -> list[dict]:
    out, seen = [], set()
    step = max(1, len(paths) // (n * 3))
    for p in paths[::step]:
        try:
            with (gzip.open(p, "rt", encoding="utf8") if p.endswith(".gz") else open(p, encoding="utf8")) as f:
                text = cut(f.read().strip())
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) < 400 or text in seen or "sourceMappingURL" in text:
            continue
        seen.add(text)
        out.append({"id": p, "source": p, "license": "see the package", "prompt": text})
        if len(out) >= n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=16)
    args = ap.parse_args()
    code = sorted(p for p in glob.glob("node_modules/**/*.*", recursive=True) if p.endswith((".d.ts", ".mjs", ".cjs")) and os.path.getsize(p) > 2500)
    docs = sorted(p for p in glob.glob("/usr/share/doc/*/*") if os.path.basename(p).upper().startswith(("README", "NEWS")) and not p.endswith((".gz", ".html")) and os.path.isfile(p) and os.path.getsize(p) > 1500)
    docs += sorted(glob.glob("/usr/share/doc/*/README*.gz"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name, paths in (("code", code), ("english", docs)):
        rows = pick(paths, args.count)
        with open(Path(args.out) / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"{name}: {len(rows)} prompts from {len(paths)} candidates -> {Path(args.out) / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
