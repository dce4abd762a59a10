"""Build the held-out benchmark prompts (never seen in training) and write them as JSONL.

Sources are the two kept out of the training corpus on purpose:
- man pages of the Linux man-pages project (Debian `manpages`, `manpages-dev`; sections 2 and 3),
  rendered with man(1), for the `english` workload;
- npm's own JavaScript sources (`npm pack npm@NPM_VERSION`, lib/, Artistic-2.0), for `code`.
The `grounded` workload makes continuations reuse material from the prompt (where MaG shines):
a code block followed by a restatement of it, or a document followed by a question about it.
The `long` workload holds whole documents of at least LONG_CHARS characters (well over 2048
tokens): complete man pages and complete npm source files, for bounded KV caches (ADORE).

Usage: python3 tools/heldout/build_prompts.py --out bench/prompts
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

NPM_VERSION = "10.9.2"
PER_WORKLOAD = 16
PROMPT_CHARS = 700
LONG_CHARS = 10_000
LONG_PER_SOURCE = 8


def man_text(path: Path) -> str:
    env = dict(os.environ, MANWIDTH="1000")
    raw = subprocess.run(["man", "-l", str(path)], capture_output=True, env=env, check=True).stdout
    return subprocess.run(["col", "-b"], input=raw, capture_output=True, check=True).stdout.decode("utf-8", "replace")


def description(text: str) -> str | None:
    m = re.search(r"\nDESCRIPTION\n(.*?)\n[A-Z][A-Z ]+\n", text, re.S)
    if not m:
        return None
    paras = [re.sub(r"\s+", " ", p).strip() for p in m.group(1).split("\n\n")]
    body = "\n\n".join(p for p in paras if p)
    return body if len(body) > PROMPT_CHARS + 200 else None


def cut(text: str, n: int) -> str:
    """The first ~n characters of text, ending at a word (or line) boundary."""
    if len(text) <= n:
        return text
    i = max(text.rfind(" ", 0, n), text.rfind("\n", 0, n))
    return text[: i if i > n // 2 else n]


def evenly(items: list, k: int) -> list:
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if len(items) >= k else items


def long_man_pages() -> list[tuple[str, str]]:
    """Whole man pages (sections 2 and 3) of at least LONG_CHARS characters, whitespace tidied."""
    listed = subprocess.run(["dpkg", "-L", "manpages", "manpages-dev"], capture_output=True, text=True, check=True).stdout.split()
    out, seen = [], set()
    for p in sorted(Path(p) for p in listed if re.match(r"/usr/share/man/man[23]/[^/]+\.[23]\.gz$", p)):
        if p.stat().st_size < 6000:
            continue
        text = re.sub(r"[ \t]+", " ", man_text(p))
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        if len(text) >= LONG_CHARS and text not in seen:  # one page installed under several names (rpc(3), …)
            seen.add(text)
            out.append((p.name.split(".")[0], text))
    return out


def man_pages() -> list[tuple[str, str]]:
    """Sections 2 and 3 of the files that the manpages and manpages-dev packages install."""
    listed = subprocess.run(["dpkg", "-L", "manpages", "manpages-dev"], capture_output=True, text=True, check=True).stdout.split()
    paths = sorted(Path(p) for p in listed if re.match(r"/usr/share/man/man[23]/[^/]+\.[23]\.gz$", p))
    out, seen = [], set()
    for path in paths:
        if path.stat().st_size < 3000:  # skip .so redirections and stubs
            continue
        d = description(man_text(path))
        if d and d not in seen:  # aliases installed as copies (lchown32, mmap64, …)
            seen.add(d)
            out.append((path.name.split(".")[0], d))
    return out


def npm_sources(tmp: Path) -> list[tuple[str, str]]:
    subprocess.run(["npm", "pack", "-q", f"npm@{NPM_VERSION}"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(next(tmp.glob("npm-*.tgz"))) as tar:
        tar.extractall(tmp)
    out = []
    for path in sorted((tmp / "package" / "lib").rglob("*.js")):
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        start = next((i for i, l in enumerate(lines) if re.match(r"(async )?(function|class) |const \w+ = (async )?\(", l)), None)
        if start is None:
            continue
        body = "\n".join(lines[start:])
        if len(body) > PROMPT_CHARS + 200:
            out.append((str(path.relative_to(tmp / "package")), body))
    return out


def long_npm_sources(tmp: Path) -> list[tuple[str, str]]:
    """Whole npm lib/ source files of at least LONG_CHARS characters (after npm_sources unpacked it)."""
    out = []
    for path in sorted((tmp / "package" / "lib").rglob("*.js")):
        text = path.read_text(encoding="utf-8")
        if len(text) >= LONG_CHARS:
            out.append((str(path.relative_to(tmp / "package")), text))
    return out


def code_block(body: str, n: int) -> str:
    """The first ~n characters of a function, ending at a line boundary."""
    block = body[:n]
    return block[: block.rfind("\n")] if "\n" in block else block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/prompts")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    man = man_pages()
    with tempfile.TemporaryDirectory() as td:
        js = npm_sources(Path(td))
        long_js = long_npm_sources(Path(td))
    man_src = {"source": "Linux man-pages 6.03 (Debian manpages, manpages-dev)", "license": "Linux man-pages licences (verbatim-copying and GPL, redistribution permitted)"}
    npm_src = {"source": f"npm {NPM_VERSION} lib/", "license": "Artistic-2.0"}
    workloads: dict[str, list[dict]] = {"english": [], "code": [], "grounded": [], "long": []}
    for name, text in evenly(man, PER_WORKLOAD):
        workloads["english"].append({"id": f"man:{name}", **man_src, "prompt": cut(text, PROMPT_CHARS)})
    for name, body in evenly(js, PER_WORKLOAD):
        workloads["code"].append({"id": f"npm:{name}", **npm_src, "prompt": code_block(body, PROMPT_CHARS)})
    half = PER_WORKLOAD // 2
    for name, body in evenly(js[1:], half):
        block = code_block(body, 500)
        first = block.split("\n", 1)[0]
        prompt = f"{block}\n\n// The same code again, unchanged:\n{first}\n"
        workloads["grounded"].append({"id": f"npm-restate:{name}", **npm_src, "prompt": prompt})
    for name, text in evenly(man[1:], half):
        doc = cut(text, 600)
        prompt = f"{doc}\n\nQuestion: According to the text above, what does {name} do?\nAnswer: According to the text above,"
        workloads["grounded"].append({"id": f"man-qa:{name}", **man_src, "prompt": prompt})
    for name, text in evenly(long_man_pages(), LONG_PER_SOURCE):
        workloads["long"].append({"id": f"man-page:{name}", **man_src, "prompt": text})
    for name, text in evenly(long_js, LONG_PER_SOURCE):
        workloads["long"].append({"id": f"npm-file:{name}", **npm_src, "prompt": text})
    for wl, rows in workloads.items():
        with open(out / f"{wl}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{wl}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
