"""Evaluate the trained family on held-out test text and write the training record.

Per model: parameters, ONNX file size and sha256, tokens seen and wall time (from its checkpoint),
per-domain test NLL (nats/token), greedy next-token agreement with the target per domain, and the
repeated-4-gram rate of greedy continuations of held-out prompts (degenerate loops score high).
Writes models/training-record.json and models/README.md (the family card).

Usage: python3 tools/train/evaluate.py --runs runs --models models
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from model import Decoder, count_params  # noqa: E402
from onnx_weights import load_from_model_dir  # noqa: E402
from train import DOMAINS, load_split  # noqa: E402

PROMPTS_PER_DOMAIN = 12
PROMPT_TOKENS = 64
CONTINUATION_TOKENS = 64


def phase_of(ck: dict, run: str) -> dict:
    return {"run": run, "steps": ck["step"], "tokens": ck["step"] * ck["args"]["batch"] * ck["args"]["seq"],
            "wall_s": round(ck.get("elapsed", 0.0)), "train_args": ck["args"], "val_curve": ck["log"],
            "torch": ck.get("torch", []), "teacher_steps": ck.get("teacher_steps", []),
            **{k: ck[k] for k in ("device", "packed_dtype", "half_rounding_val_nll") if k in ck}}


def recorded_phases(previous: dict | None, why: str) -> list[dict]:
    """The phases an earlier training record gives a model (records before phases had one)."""
    if previous is None:
        raise SystemExit(f"{why}, and no earlier training record describes it")
    if "phases" in previous:
        return previous["phases"]
    return [{"run": previous["train_args"]["run"], "steps": previous["steps"], "tokens": previous["tokens_seen"],
             "wall_s": previous["train_wall_s"], "train_args": previous["train_args"], "val_curve": previous["val_curve"]}]


def training_phases(ckpt: Path, previous: dict | None) -> list[dict]:
    """The training history of a shipped model, oldest phase first.

    A phase started with --init CKPT continues from that checkpoint's phases; one started with
    --init-model DIR (the weights of an earlier export) continues from the phases in the earlier
    training record. Without a checkpoint (a model not retrained this time) the earlier record stands.
    """
    if not ckpt.exists():
        return recorded_phases(previous, f"no checkpoint {ckpt}")
    ck = torch.load(ckpt, weights_only=False)
    a = ck["args"]
    if a.get("init"):
        before = training_phases(Path(a["init"]), None)
    elif a.get("init_model"):
        # An earlier record written from this same checkpoint already lists it last: continue from
        # the phases before it, not after it.
        before = [ph for ph in recorded_phases(previous, f"{ckpt} started from the exported {a['init_model']}")
                  if ph["run"] != str(ckpt.parent)]
    else:
        before = []
    return before + [phase_of(ck, str(ckpt.parent))]


@torch.no_grad()
def nll_and_argmax(model: Decoder, stream: np.ndarray, seq: int) -> tuple[float, np.ndarray]:
    n = (len(stream) - 1) // seq * seq
    x = torch.from_numpy(stream[:n + 1].astype(np.int64))
    tot, preds = 0.0, []
    for i in range(0, n, seq * 16):
        c = min(seq * 16, n - i)
        logits = model(x[i:i + c].view(-1, seq))
        tot += F.cross_entropy(logits.flatten(0, 1), x[i + 1:i + c + 1], reduction="sum").item()
        preds.append(logits.argmax(-1).flatten().numpy())
    return tot / n, np.concatenate(preds)


@torch.no_grad()
def greedy(model: Decoder, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after prompt, decoding incrementally over the KV cache."""
    cfg = model.cfg
    past = [(torch.zeros(1, cfg.num_key_value_heads, 0, cfg.head_dim),) * 2 for _ in range(cfg.num_hidden_layers)]
    total = len(prompt)
    logits, past = model.forward_with_past(torch.tensor([prompt]), torch.ones(1, total, dtype=torch.int64),
                                           torch.arange(total).unsqueeze(0), past)
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits[0, -1].argmax()))
        total += 1
        logits, past = model.forward_with_past(torch.tensor([[out[-1]]]), torch.ones(1, total, dtype=torch.int64),
                                               torch.tensor([[total - 1]]), past)
    return out


def repeated_4gram_rate(tokens: list[int]) -> float:
    grams = [tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


def prompts(stream: np.ndarray, k: int) -> list[tuple[list[int], list[int]]]:
    """k (prompt, true continuation) pairs at evenly spaced document starts (after end-of-text markers)."""
    starts = [0] + [int(i) + 1 for i in np.flatnonzero(stream == 0)]
    starts = [s for s in starts if s + PROMPT_TOKENS < len(stream) and 0 not in stream[s:s + PROMPT_TOKENS]]
    pick = [starts[int(j)] for j in np.linspace(0, len(starts) - 1, k)]
    end = PROMPT_TOKENS + CONTINUATION_TOKENS
    return [(stream[s:s + PROMPT_TOKENS].astype(np.int64).tolist(), stream[s + PROMPT_TOKENS:s + end].astype(np.int64).tolist())
            for s in pick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--models", default="models")
    ap.add_argument("--data", default="data/tokens")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--note", action="append", default=[], help="a line of provenance for the record (what the checkpoints do not say)")
    ap.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                    help="final checkpoint of NAME (default RUNS/NAME/ckpt.pt); phases before it are followed through --init")
    ap.add_argument("--transcribed-phase", action="append", default=[], metavar="NAME=JSON",
                    help="a last training phase of NAME whose checkpoint is gone, as transcribed from its log "
                         "(tools/train/transcribed/); it follows the phases the earlier record gives")
    args = ap.parse_args()
    torch.set_num_threads(2)
    family = json.loads((Path(args.models) / "family.json").read_text())
    names = [family["target"], *family["drafters"]]
    test = load_split(Path(args.data), "test")
    record_path = Path(args.models, "training-record.json")
    previous = json.loads(record_path.read_text())["models"] if record_path.exists() else {}
    ckpts = dict(kv.split("=", 1) for kv in args.ckpt)
    transcribed = {k: json.loads(Path(v).read_text()) for k, v in (kv.split("=", 1) for kv in args.transcribed_phase)}
    record: dict = {"corpus": json.loads((Path(args.corpus) / "manifest.json").read_text()), "models": {}, "notes": args.note,
                    "eval_seq": args.seq}
    pairs = {d: prompts(test[d], PROMPTS_PER_DOMAIN) for d in DOMAINS}
    # The same statistic on the held-out text itself: how much real code and prose repeat.
    record["text_repeat4"] = {d: round(float(np.mean([repeated_4gram_rate(c) for _, c in pairs[d]])), 4) for d in DOMAINS}
    target_preds: dict[str, np.ndarray] = {}
    for name in names:
        # What ships is what is measured: the weights come from the exported ONNX model.
        model = load_from_model_dir(Path(args.models) / name)
        onnx_path = Path(args.models) / name / "model.onnx"
        ckpt = Path(ckpts.get(name, Path(args.runs) / name / "ckpt.pt"))
        phases = training_phases(ckpt, previous.get(name))
        if name in transcribed:
            # As for checkpoints: an earlier record's copy of the same run is replaced, not repeated.
            phases = [ph for ph in phases if ph["run"] != transcribed[name]["run"]] + [transcribed[name]]
        r = {
            "params": count_params(model),
            "config": model.cfg.to_json(),
            "onnx_bytes": onnx_path.stat().st_size,
            "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            "tokens_seen": sum(ph["tokens"] for ph in phases),
            "train_wall_s": sum(ph["wall_s"] for ph in phases),
            "phases": phases,
            "test_nll": {}, "agree_with_target": {}, "repeat4": {},
        }
        for d in DOMAINS:
            nll, preds = nll_and_argmax(model, test[d], args.seq)
            r["test_nll"][d] = round(nll, 4)
            if name == family["target"]:
                target_preds[d] = preds
            r["agree_with_target"][d] = round(float((preds == target_preds[d]).mean()), 4)
            conts = [greedy(model, p, CONTINUATION_TOKENS) for p, _ in pairs[d]]
            r["repeat4"][d] = round(float(np.mean([repeated_4gram_rate(c) for c in conts])), 4)
        record["models"][name] = r
        print(f"{name}: nll {r['test_nll']} agree {r['agree_with_target']} repeat4 {r['repeat4']}", flush=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    write_card(Path(args.models) / "README.md", record, names)


def write_card(path: Path, record: dict, names: list[str]) -> None:
    rows = []
    for n in names:
        r = record["models"][n]
        c = r["config"]
        rows.append(
            f"| {n} | {c['num_hidden_layers']}×{c['hidden_size']} | {r['params'] / 1e6:.2f}M | {r['onnx_bytes'] / 1e6:.1f} MB | "
            f"{r['tokens_seen'] / 1e6:.2f}M | {r['train_wall_s'] / 60:.0f} min | {r['test_nll']['code']:.3f} | {r['test_nll']['english']:.3f} | "
            f"{r['agree_with_target']['code']:.1%} | {r['agree_with_target']['english']:.1%} | {r['repeat4']['code']:.1%} | {r['repeat4']['english']:.1%} |")
    src = record["corpus"]["sources"]
    sources = "\n".join(f"- `{k}` ({v['domain']}): {v['package']}, licence {v['licence']}; "
                        f"{v.get('train_docs', 0)} train / {v.get('val_docs', 0)} val / {v.get('test_docs', 0)} test documents"
                        for k, v in src.items())
    notes = "".join(f"- {n}\n" for n in record.get("notes", []))
    notes = f"## Notes\n\n{notes}\n" if notes else ""
    eagle_record = path.parent / "eagle" / "record.json"
    if eagle_record.exists():  # the feature drafter's section (tools/train/eagle.py card) survives a rewrite
        from eagle import card_section
        notes += card_section(json.loads(eagle_record.read_text()))
    path.write_text(f"""# The bundled model family

Trained by this project from scratch (`tools/train/`; the training record says on which machine), no model hub involved. All members
share `tokenizer.json` (byte-level BPE, 8192 tokens). Each directory follows the ONNX contract of
SPEC §3 (decoder with past, Optimum layout) and holds `reference.json`/`reference.bin`: torch logits
for a fixed held-out input that the tests compare with ONNX Runtime.

Numbers below come from `python3 tools/train/evaluate.py` on the held-out **test** split (documents
never trained on), in windows of {record.get('eval_seq', 256)} tokens: NLL in nats/token; *agree* is how often the model's greedy next token equals the
target's on the same test positions; *repeat-4* is the fraction of repeated 4-grams in {CONTINUATION_TOKENS}-token greedy
continuations of {PROMPTS_PER_DOMAIN} held-out prompts per domain (degenerate loops score high; the held-out text's own
continuations score {record['text_repeat4']['code']:.1%} on code and {record['text_repeat4']['english']:.1%} on english). Decode costs: `cascade bench costs`.

| model | layers×width | params | ONNX | tokens seen | train time | NLL code | NLL english | agree code | agree english | repeat-4 code | repeat-4 english |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Corpus

{sources}

Man pages and npm's own JavaScript sources are kept out of training for independent evaluation.

{notes}Full record (per-model config, training phases and arguments, validation curves, sha256): `training-record.json`.
""")


if __name__ == "__main__":
    main()
