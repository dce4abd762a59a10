"""EAGLE-1 feature drafter for the family's target: cache the target's features, train, evaluate, export.

The drafter (Li et al., "EAGLE", ICML 2024; SafeAILab/EAGLE eagle/model/cnets.py, eagle/train/main.py)
predicts the target's next *feature* rather than its next token. At position t it reads the target's
feature f_t and the embedding of the token x_{t+1} that follows: fc([embed(x_{t+1}); f_t]) -> one
decoder layer (model.py's Block: RMSNorm, RoPE attention, SwiGLU) -> RMSNorm -> f^_{t+1}, and the
target's frozen head turns the predicted feature into logits for x_{t+2}. The feature is the target's
last hidden state after its final RMSNorm, the LM head's input (add_hidden_output.py exposes it from
the ONNX graph), so logits = f @ embed_tokens^T for the target's features and the drafter's alike.
The embedding and head are the target's, frozen. The layer and the output norm start as the target's
last layer (its first --intermediate MLP neurons) and final norm, fc as the identity on the feature half
(eagle_model.py).

Reduced vocabulary (FR-Spec): the drafter's head keeps only the --vocab most frequent tokens of the
train split (rows of the target's embedding), so its pass costs a fraction of the target's. Its
logits index that list (config.json "draft_vocab": position -> token id).

Loss (EAGLE's main.py): 1.0 x smooth-L1(f^_{t+1}, f_{t+1}) + 0.1 x cross-entropy of the drafter's
head against the target's distribution at t+1 (softmax of the full head over f_{t+1}, restricted
to the draft vocabulary); the shipped drafter's second phase weights the token loss 1.0, which a
paired 8-minute trial on the val split preferred (code agreement 0.478 against 0.469 for 0.1; 3.0
was level with 1.0). The input features get EAGLE's uniform noise, (U(0,1) - 0.5) x 0.2 x
512 / sequence length, in training only.

Subcommands (each resumable; all on --threads CPU threads, default 2):
  extract   runs the target (weights from models/target/model.onnx) over random 1024-token windows of
            the TRAIN split (75% code) and caches the tokens and float16 features (shards of 4 windows)
  train     trains the drafter over the cached shards (re-read at every evaluation, so an extraction
            may run beside it), logging tokens/s, losses and training agreement every --log-every
            steps and VAL-split agreement (first draft) every --eval-every; RUN/ckpt.pt resumes,
            RUN/best.pt keeps the best validation agreement on code; --init-from DIR starts from an
            exported drafter instead of the target's last layer (a warm start), --token-weight sets
            the token loss's weight (EAGLE's 0.1 by default)
  evaluate  agreement with the target's greedy token on the TEST split per domain (eagle_model.agreement):
            the first draft (from the target's true feature) and the second (from its own), -> RUN/test.json
  export    the ONNX graph (EAGLE_CONTRACT), config.json, torch reference outputs and record.json
  heldout   the TEST split's windows, the target's features and greedy tokens as raw arrays, for
            tools/train/eagle_agreement.mjs (an ONNX drafter's agreement, a quantized copy's included)
  card      the drafter's section of models/README.md from models/eagle/record.json

Retrain everything (models/eagle, its three training phases, and its card section): bash tools/train/eagle.sh

Usage:
  python3 tools/train/eagle.py extract --windows 600 --cache .cache/eagle/train
  python3 tools/train/eagle.py train --cache .cache/eagle/train --run runs/eagle --minutes 80
  python3 tools/train/eagle.py evaluate --run runs/eagle
  python3 tools/train/eagle.py export --run runs/eagle --out models/eagle
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from eagle_model import (EAGLE_CONTRACT, FEATURE_WEIGHT, NOISE_STD, TOKEN_WEIGHT, EagleDrafter, EagleOnnx,  # noqa: E402
                         agreement, drafter_config, init_from_target, losses, target_features)
from model import count_params  # noqa: E402
from onnx_weights import load_from_model_dir  # noqa: E402
from train import DOMAINS, load_split  # noqa: E402

SEQ = 1024
# Domains of the extracted windows: the level's goal is code (>= 70% agreement there).
DOMAIN_WEIGHTS = {"code": 0.75, "english": 0.25}
# Validation (model selection) and test windows per domain, consecutive from the split's start.
VAL_WINDOWS = 12
TEST_WINDOWS = 48


def drawn_windows(data: Path, seed: int, windows: int, per_shard: int):
    """The extraction's random SEQ-token windows of the TRAIN split (domains drawn by DOMAIN_WEIGHTS),
    per shard: yields (first window's index, its windows' token rows int64, their domains). Every
    shard's windows are drawn, even one whose file exists, so a resumed extraction sees the same ones."""
    streams = load_split(data, "train")
    rng = np.random.default_rng(seed)
    names = list(DOMAIN_WEIGHTS)
    p = np.array([DOMAIN_WEIGHTS[d] for d in names])
    picks = [names[i] for i in rng.choice(len(names), size=windows, p=p / p.sum())]
    for s0 in range(0, windows, per_shard):
        rows, doms = [], []
        for d in picks[s0:s0 + per_shard]:
            s = streams[d]
            i = int(rng.integers(0, len(s) - SEQ))
            rows.append(s[i:i + SEQ].astype(np.int64))
            doms.append(d)
        yield s0, rows, doms


def extract(args: argparse.Namespace) -> None:
    target = load_from_model_dir(Path(args.target)).eval()
    out = Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    t0, done = time.time(), 0
    for s0, rows, doms in drawn_windows(Path(args.data), args.seed, args.windows, args.per_shard):
        shard = out / f"{s0:05d}.npz"
        if shard.exists():
            continue
        ids = torch.from_numpy(np.stack(rows))
        f = target_features(target, ids)
        tmp = out / f"{s0:05d}.tmp.npz"
        np.savez(tmp, ids=ids.numpy().astype(np.uint16), f=f.numpy().astype(np.float16), dom=np.array(doms))
        tmp.rename(shard)
        done += ids.numel()
        print(f"extract {s0 + len(rows)}/{args.windows} windows, {done / (time.time() - t0):.0f} tokens/s", flush=True)


def held_out_windows(data: Path, split: str, windows: int):
    """Per domain, up to WINDOWS consecutive SEQ-token windows from the split's start: (domain,
    int64 ids [n, SEQ]). The held-out sets of held_out and of eagle_aux_trial.py."""
    streams = load_split(data, split)
    for d in DOMAINS:
        n = min(windows, len(streams[d]) // SEQ)
        yield d, torch.from_numpy(streams[d][:n * SEQ].astype(np.int64)).view(n, SEQ)


def held_out(target: nn.Module, data: Path, split: str, windows: int, cache: Path) -> dict[str, dict[str, np.ndarray]]:
    """Consecutive SEQ-token windows from the split's start per domain, with the target's features
    (float32) and greedy tokens, cached in CACHE/{split}-{windows}.npz."""
    path = cache / f"{split}-{windows}.npz"
    if not path.exists():
        z = {}
        for d, ids in held_out_windows(data, split, windows):
            f = torch.cat([target_features(target, ids[i:i + 4]) for i in range(0, len(ids), 4)])
            z[f"{d}.ids"] = ids.numpy().astype(np.uint16)
            z[f"{d}.f"] = f.numpy()
            z[f"{d}.greedy"] = (f @ target.embed_tokens.weight.T).argmax(-1).numpy().astype(np.uint16)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **z)
    z = np.load(path)
    return {d: {k: z[f"{d}.{k}"] for k in ("ids", "f", "greedy")} for d in DOMAINS}


# ------------------------------------------------------------------------------------------- training

def draft_vocab_of(data: Path, n: int) -> torch.Tensor:
    """The n most frequent token ids of the train split (both domains), most frequent first."""
    streams = load_split(data, "train")
    counts = sum(np.bincount(s.astype(np.int64), minlength=8192) for s in streams.values())
    return torch.from_numpy(np.argsort(-counts, kind="stable")[:n].astype(np.int64))


def load_shards(cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    shards = sorted(p for p in cache.glob("*.npz") if not p.name.endswith(".tmp.npz"))
    if not shards:
        raise SystemExit(f"{cache}: no shards; run `extract` first")
    zs = [np.load(p) for p in shards]
    ids = torch.from_numpy(np.concatenate([z["ids"] for z in zs]).astype(np.int64))
    feats = torch.from_numpy(np.concatenate([z["f"] for z in zs]))  # float16, converted per batch
    return ids, feats


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    target = load_from_model_dir(Path(args.target)).eval()
    target_cfg = json.loads((Path(args.target) / "config.json").read_text())
    drafter = EagleDrafter(drafter_config(target_cfg, args.intermediate), target.embed_tokens.weight.detach(),
                           draft_vocab_of(Path(args.data), args.vocab))
    d = target_cfg["hidden_size"]
    if args.init_from:
        if not (run / "ckpt.pt").exists():  # a resumed run takes its weights from the checkpoint below
            warm_start(drafter, Path(args.init_from), run)
    else:
        init_from_target(drafter, target)
        with torch.no_grad():  # fc starts as the identity on the feature half: f^_{t+1} = f_t + layer(f_t)
            drafter.fc.weight.normal_(0, 0.02)
            drafter.fc.weight[:, d:] = torch.eye(d)
            drafter.fc.bias.zero_()
    val = held_out(target, Path(args.data), "val", VAL_WINDOWS, Path(args.cache).parent)
    del target
    ids, feats = load_shards(Path(args.cache))
    shards = len(ids)
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, elapsed, log, best = 0, 0.0, [], -1.0
    ckpt = run / "ckpt.pt"
    if ckpt.exists():
        ck = torch.load(ckpt, weights_only=False)
        drafter.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed, log, best = ck["step"], ck["elapsed"], ck["log"], ck["best"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min)", flush=True)
    budget = args.minutes * 60
    rng = np.random.default_rng(step + 1)
    print(f"drafter {(count_params(drafter.fc) + count_params(drafter.layer)) / 1e6:.2f}M trainable + head {args.vocab}x{d}; "
          f"{len(ids)} windows ({ids.numel()} tokens) of cached features", flush=True)
    t0, seen, acc = time.time(), 0, {"v": 0.0, "p": 0.0, "hit": 0, "n": 0}
    while elapsed + (time.time() - t0) < budget:
        frac = (elapsed + time.time() - t0) / budget
        for g in opt.param_groups:  # warmup over the first 2% of the budget, cosine to 10%
            g["lr"] = args.lr * min(1.0, frac / 0.02 + 1e-3) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))
        pick = torch.from_numpy(rng.integers(0, len(ids), size=args.batch))
        x, f = ids[pick], feats[pick].float()
        vloss, ploss, pred = losses(drafter, x, f, noise=True)
        loss = FEATURE_WEIGHT * vloss + args.token_weight * ploss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        step += 1
        seen += x[:, 1:].numel()
        with torch.no_grad():
            greedy = (f[:, 1:] @ drafter.embed.T).argmax(-1)
            acc["hit"] += int((drafter.draft_vocab[pred] == greedy).sum())
            acc["n"] += greedy.numel()
        acc["v"] += vloss.item()
        acc["p"] += ploss.item()
        if step % args.log_every == 0:
            now = time.time()
            print(f"step {step} {seen / (now - t0):.0f} tokens/s vloss {acc['v'] / args.log_every:.4f} "
                  f"ploss {acc['p'] / args.log_every:.3f} train-agree {acc['hit'] / acc['n']:.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} {(elapsed + now - t0) / 60:.1f}/{args.minutes} min", flush=True)
            acc = {"v": 0.0, "p": 0.0, "hit": 0, "n": 0}
        if step % args.eval_every == 0:
            best = checkpoint(drafter, opt, step, elapsed + time.time() - t0, log, best, val, run, args)
            ids, feats = load_shards(Path(args.cache))  # an extraction running beside training adds shards
            if len(ids) != shards:
                print(f"{len(ids)} windows of cached features ({ids.numel()} tokens)", flush=True)
                shards = len(ids)
    checkpoint(drafter, opt, step, elapsed + time.time() - t0, log, best, val, run, args)


def warm_start(drafter: EagleDrafter, folder: Path, run: Path) -> None:
    """Start from an exported drafter (its model.onnx; float16 weights behind Casts, so the start is the
    float16-rounded drafter) with its own draft vocabulary. Its record.json is kept as
    RUN/warm_start_record.json, so the new record says what the start had seen."""
    import onnx
    import onnx.numpy_helper
    state = {}
    for init in onnx.load(str(folder / "model.onnx")).graph.initializer:
        name = init.name.removeprefix("drafter.").removesuffix(".fp16")
        arr = onnx.numpy_helper.to_array(init)
        state[name] = torch.from_numpy(arr.astype(np.int64 if name == "draft_vocab" else np.float32))
    try:
        missing, unexpected = drafter.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a size mismatch (another vocabulary, width or draft vocabulary)
        raise SystemExit(f"{folder}: not a drafter of this shape: {err}") from None
    if missing or unexpected:
        raise SystemExit(f"{folder}: not a drafter of this shape (missing {missing}, unexpected {unexpected})")
    # a resumed run keeps the record of the start it began from (FROM may since have been overwritten)
    if (folder / "record.json").exists() and not (run / "warm_start_record.json").exists():
        (run / "warm_start_record.json").write_text((folder / "record.json").read_text())
    print(f"warm start from {folder}", flush=True)


def checkpoint(drafter, opt, step, elapsed, log, best, val, run: Path, args) -> float:
    """Validation agreement (step 1, per domain), then ckpt.pt; best.pt keeps the best code agreement."""
    ev = {d: agreement(drafter, w) for d, w in val.items()}
    log.append({"step": step, "tokens": step * args.batch * (SEQ - 1), "elapsed_s": round(elapsed), "val": ev})
    print(f"val step {step}: " + " ".join(f"{d} {r['step1']:.4f} (full vocab {r['step1_full_vocab']:.4f})" for d, r in ev.items()), flush=True)
    state = {"model": drafter.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed, "log": log,
             "args": vars(args), "best": max(best, ev["code"]["step1"])}
    torch.save(state, run / "ckpt.pt.tmp")
    (run / "ckpt.pt.tmp").replace(run / "ckpt.pt")
    if ev["code"]["step1"] > best:
        torch.save({"model": drafter.state_dict(), "step": step, "val": ev, "args": vars(args)}, run / "best.pt")
    return max(best, ev["code"]["step1"])


def trained(args: argparse.Namespace) -> tuple[EagleDrafter, dict, dict]:
    """The best-by-validation drafter of RUN, its best.pt and ckpt.pt (for the record)."""
    run = Path(args.run)
    best, last = torch.load(run / "best.pt", weights_only=False), torch.load(run / "ckpt.pt", weights_only=False)
    target_cfg = json.loads((Path(args.target) / "config.json").read_text())
    a = best["args"]
    emb = load_from_model_dir(Path(args.target)).embed_tokens.weight.detach()
    drafter = EagleDrafter(drafter_config(target_cfg, a["intermediate"]), emb, torch.zeros(a["vocab"], dtype=torch.int64))
    drafter.load_state_dict(best["model"])
    return drafter.eval(), best, last


def half_rounded(drafter: EagleDrafter) -> EagleDrafter:
    """The weights as the ONNX file stores them (float16)."""
    with torch.no_grad():
        for p in drafter.parameters():
            p.copy_(p.half().float())
    return drafter


def evaluate(args: argparse.Namespace) -> None:
    drafter, best, last = trained(args)
    half_rounded(drafter)
    target = load_from_model_dir(Path(args.target)).eval()
    test = held_out(target, Path(args.data), "test", TEST_WINDOWS, Path(args.cache).parent)
    result = {d: agreement(drafter, w, steps=2) for d, w in test.items()}
    print(json.dumps(result), flush=True)
    (Path(args.run) / "test.json").write_text(json.dumps(result, indent=1) + "\n")


def heldout(args: argparse.Namespace) -> None:
    """The TEST split's windows as raw little-endian arrays, for tools/train/eagle_agreement.mjs (the
    agreement of an ONNX drafter, a quantized copy included, under ONNX Runtime): OUT/DOMAIN.ids.bin
    int32 [n, SEQ], OUT/DOMAIN.f.bin float32 [n, SEQ, hidden] (the target's features), OUT/DOMAIN.greedy.bin
    int32 [n, SEQ] (its greedy tokens), OUT/meta.json {"seq", "hidden", "windows": {domain: n}}."""
    target = load_from_model_dir(Path(args.target)).eval()
    test = held_out(target, Path(args.data), "test", TEST_WINDOWS, Path(args.cache).parent)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for d, w in test.items():
        w["ids"].astype("<i4").tofile(out / f"{d}.ids.bin")
        w["f"].astype("<f4").tofile(out / f"{d}.f.bin")
        w["greedy"].astype("<i4").tofile(out / f"{d}.greedy.bin")
    meta = {"seq": SEQ, "hidden": int(test[DOMAINS[0]]["f"].shape[-1]), "windows": {d: int(len(w["ids"])) for d, w in test.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}: {meta['windows']}", flush=True)


def float16_initializers(model) -> None:
    """Store float32 initializers as float16 behind a Cast (ONNX Runtime folds the Casts and the
    head's Gather at session start); the embedding is then stored once, as the target ships it."""
    import onnx
    import onnx.numpy_helper
    g = model.graph
    casts = []
    for init in list(g.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < 1024:
            continue
        arr = onnx.numpy_helper.to_array(init)
        name = init.name
        g.initializer.remove(init)
        g.initializer.append(onnx.numpy_helper.from_array(arr.astype(np.float16), name + ".fp16"))
        casts.append(onnx.helper.make_node("Cast", [name + ".fp16"], [name], to=onnx.TensorProto.FLOAT, name=f"/fp16/{name}"))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)


def export(args: argparse.Namespace) -> None:
    import onnx
    drafter, best, last = trained(args)
    half_rounded(drafter)
    cfg = drafter.cfg
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    names_in = ["input_ids", "hidden_states", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value"]
    names_out = ["logits", "next_hidden_states", "present.0.key", "present.0.value"]
    past_len, s = 2, 3
    dummy = (torch.randint(0, cfg.vocab_size, (1, s)), torch.randn(1, s, cfg.hidden_size), torch.ones(1, past_len + s, dtype=torch.int64),
             torch.arange(past_len, past_len + s).unsqueeze(0), torch.randn(1, cfg.num_key_value_heads, past_len, cfg.head_dim),
             torch.randn(1, cfg.num_key_value_heads, past_len, cfg.head_dim))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "hidden_states": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total"}, "position_ids": {0: "batch", 1: "sequence"},
            "past_key_values.0.key": {0: "batch", 2: "past"}, "past_key_values.0.value": {0: "batch", 2: "past"},
            "logits": {0: "batch", 1: "sequence"}, "next_hidden_states": {0: "batch", 1: "sequence"},
            "present.0.key": {0: "batch", 2: "total"}, "present.0.value": {0: "batch", 2: "total"}}
    with torch.no_grad():
        # No constant folding: the head stays Gather(embedding, draft_vocab), so the file holds the embedding once.
        torch.onnx.export(EagleOnnx(drafter), dummy, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=14, do_constant_folding=False)
    model = onnx.load(str(path))
    float16_initializers(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    config = {**cfg.to_json(), "model_type": "eagle", "architectures": ["EagleDrafter"], "name": "eagle",
              "draft_vocab": drafter.draft_vocab.tolist(), "target": "target",
              "target_feature": "hidden_states: the target's last hidden state after its final norm (the LM head's input)",
              "contract": EAGLE_CONTRACT}
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    reference(drafter, args, out)
    (out / "record.json").write_text(json.dumps(record(drafter, best, last, args, path), indent=1) + "\n")
    print(f"exported {out}: {path.stat().st_size / 1e6:.2f} MB", flush=True)


def record(drafter: EagleDrafter, best: dict, last: dict, args: argparse.Namespace, onnx_path: Path) -> dict:
    """Data, training, validation curve, test agreement and the parameter estimate of the pass cost."""
    shards = sorted(p for p in Path(args.cache).glob("*.npz") if not p.name.endswith(".tmp.npz"))
    doms = np.concatenate([np.load(p)["dom"] for p in shards])
    target = load_from_model_dir(Path(args.target))
    n_target = count_params(target)  # the tied embedding counted once: it is the head's matmul
    d = drafter.cfg.hidden_size
    trainable = count_params(drafter.fc) + count_params(drafter.layer) + count_params(drafter.norm)
    head = len(drafter.draft_vocab) * d
    a = last["args"]
    test = Path(args.run) / "test.json"
    init = "layer and output norm from the target's last layer (first intermediate_size MLP neurons) and final norm; fc = identity on the feature half"
    previous = Path(args.run) / "warm_start_record.json"
    if a.get("init_from"):
        init = f"warm start from {a['init_from']} as it was then (its data, training and test agreement: warm_start)"
    return {
        "feature": "the target's last hidden state after its final RMSNorm (the LM head's input), float32 [batch, seq, 512]",
        "data": {"split": "train", "window_tokens": SEQ, "windows": len(doms), "tokens": len(doms) * SEQ,
                 "windows_per_domain": {dm: int((doms == dm).sum()) for dm in DOMAINS}, "domain_weights": DOMAIN_WEIGHTS,
                 "cache": str(args.cache)},
        "model": {"config": drafter.cfg.to_json(), "draft_vocab": len(drafter.draft_vocab), "trainable_params": trainable,
                  "frozen": "the target's embedding (input and head rows)",
                  "init": init},
        "loss": {"feature_smooth_l1": FEATURE_WEIGHT, "token_ce_to_target_distribution": a.get("token_weight", TOKEN_WEIGHT),
                 "feature_noise": f"uniform, (U - 0.5) x {NOISE_STD} x 512 / seq"},
        "training": {"args": a, "steps": last["step"], "tokens_seen": last["step"] * a["batch"] * (SEQ - 1),
                     "wall_s": round(last["elapsed"]), "best_step": best["step"], "best_val": best["val"], "val_curve": last["log"],
                     "torch": torch.__version__, "threads": args.threads},
        "test_agreement": json.loads(test.read_text()) if test.exists() else None,
        "cost_estimate": {"drafter_matmul_params": trainable + head, "target_matmul_params": n_target,
                          "ratio": round((trainable + head) / n_target, 4),
                          "note": "per token, weights touched by one pass (fc, layer, norm, draft head) over the target's (6 layers, norm, 8192-row head)"},
        "onnx": {"bytes": onnx_path.stat().st_size, "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                 "initializers": "float16 behind Casts (the weights are evaluated float16-rounded)"},
        "notes": args.note,
        **({"warm_start": {k: v for k, v in json.loads(previous.read_text()).items() if k in ("data", "model", "training", "test_agreement", "cost_estimate", "measured", "onnx", "notes", "warm_start")}}
           if a.get("init_from") and previous.exists() else {}),
    }


@torch.no_grad()
def reference(drafter: EagleDrafter, args: argparse.Namespace, out: Path) -> None:
    """reference.json/.bin: the target's features over a fixed test-split window and the drafter's
    outputs over them in two calls (a prefix, then the rest over the prefix's cache)."""
    target = load_from_model_dir(Path(args.target)).eval()
    ids = torch.from_numpy(load_split(Path(args.data), "test")["code"][:17].astype(np.int64)).unsqueeze(0)
    f = target_features(target, ids)
    x, h = ids[:, 1:], f[:, :-1]
    cfg = drafter.cfg
    k = v = torch.zeros(1, cfg.num_key_value_heads, 0, cfg.head_dim)
    outs, prefix = [], 10
    for a, b in ((0, prefix), (prefix, x.shape[1])):
        logits, nf, k, v = drafter.step(x[:, a:b], h[:, a:b], torch.ones(1, b, dtype=torch.int64), torch.arange(a + 1, b + 1).unsqueeze(0), k, v)
        outs.append((logits, nf))
    logits = torch.cat([o[0] for o in outs], 1)[0].numpy().astype(np.float32)
    nf = torch.cat([o[1] for o in outs], 1)[0].numpy().astype(np.float32)
    h[0].numpy().astype(np.float32).tofile(out / "reference-hidden.bin")
    np.concatenate([logits.ravel(), nf.ravel()]).tofile(out / "reference.bin")
    (out / "reference.json").write_text(json.dumps({
        "target_input_ids": ids[0, :-1].tolist(), "input_ids": x[0].tolist(), "position_ids": list(range(1, x.shape[1] + 1)), "prefix": prefix,
        "hidden_states": {"file": "reference-hidden.bin", "dtype": "float32", "shape": list(h[0].shape)},
        "outputs": {"file": "reference.bin", "dtype": "float32", "logits_shape": list(logits.shape), "next_hidden_states_shape": list(nf.shape)},
        "target_greedy": (f[0, 1:] @ target.embed_tokens.weight.T).argmax(-1).tolist(),
        "draft_greedy": drafter.draft_vocab[torch.from_numpy(logits).argmax(-1)].tolist()}, indent=1) + "\n")


CARD_HEADING = "## EAGLE feature drafter"


def card_row(rec: dict, label: str, m: dict | None) -> str:
    """One training phase's row of the card's table (data, steps, time, test agreement, cost)."""
    t, tr = rec.get("test_agreement") or {}, rec["training"]
    a = tr["args"]

    def pct(d: str, k: str) -> str:
        return f"{t[d][k]:.1%}" if d in t and k in t[d] else "n/a"

    cost = rec.get("cost_estimate", {}).get("ratio")
    measured = f"{m['drafter_over_target']:.3f}" if m else "n/a"
    return (f"| {label} | {rec['data']['tokens'] / 1e6:.2f}M tokens | {a['lr']:g}, {a.get('token_weight', TOKEN_WEIGHT):g} | {tr['steps']} | "
            f"{tr['tokens_seen'] / 1e6:.2f}M | {tr['wall_s'] / 60:.0f} min | {pct('code', 'step1')} | {pct('english', 'step1')} | "
            f"{pct('code', 'step2_given_step1')} | {pct('english', 'step2_given_step1')} | {f'{cost:.3f}' if cost else 'n/a'} | {measured} |")


def card_section(rec: dict) -> str:
    """The family card's section for models/eagle, from its record.json: a row per training phase
    (a warm-started run's record carries its start's as warm_start)."""
    t, c = rec.get("test_agreement") or {}, rec["cost_estimate"]
    m = (rec.get("measured") or {}).get("cost")
    cfg = rec["model"]["config"]
    measured = (f"{m['drafter_step_ms']:.2f} ms against the target's {m['original_target_decode_ms']:.2f} ms, "
                f"**{m['drafter_over_target']:.3f}** of it (ONNX Runtime CPU EP, one thread, decode of one token over a "
                f"{m['past']}-token cache, median of {m['repeats']}; `tools/train/eagle_check.mjs`)") if m else "not measured"
    phases, r = [], rec
    while r.get("warm_start"):
        r = r["warm_start"]
        phases.append(r)
    rows = [card_row(p, f"phase {i + 1}" + (" (from the target's last layer)" if i == 0 else ""), (p.get("measured") or {}).get("cost"))
            for i, p in enumerate(reversed(phases))]
    rows.append(card_row(rec, "shipped" + (f" (phase {len(phases) + 1}, warm start)" if phases else ""), m))
    positions = {d: t[d]["positions"] for d in t}
    notes = "".join(f"- {'Phase ' + str(k) + ': ' if phases else ''}{n}\n"
                    for k, r in enumerate([*reversed(phases), rec], 1) for n in r.get("notes", []))
    notes = f"{notes}\n" if notes else ""
    table = "\n".join(rows)
    return f"""{CARD_HEADING} (`eagle/`, issue 24)

An EAGLE-1 drafter (Li et al., ICML 2024) for `target`: fc([embed(x_t+1); f_t]) -> one decoder layer
({cfg['hidden_size']} wide, {cfg['num_attention_heads']} heads, SwiGLU {cfg['intermediate_size']}) -> RMSNorm -> the predicted feature f_t+1, read
by the target's frozen head restricted to the {rec['model']['draft_vocab']} most frequent train tokens (FR-Spec; `config.json`
`draft_vocab` maps logit i to a token id). The feature f is the target's last hidden state after its final
norm, the LM head's input: `tools/train/add_hidden_output.py` adds it to the target's graph as a
`hidden_states` output [batch, sequence, 512] without touching the other outputs; the shipped
`target/model.onnx` carries it (its logits are bit-identical to the graph before; sha256 in
`training-record.json`), and the runner fetches it only for a call that asks. The drafter's ONNX
contract is in `config.json` (`contract`); it runs as a cascade level with `--eagle-model models/eagle`
(`src/engine/eagle-level.ts`).

| run | data (train split) | lr, token-loss weight | steps | tokens seen | train time | agree code | agree english | 2nd step code | 2nd step english | pass cost (params) | pass cost (measured) |
|---|---|---|---|---|---|---|---|---|---|---|---|
{table}

*Agree* is EAGLE's first draft after a verification: from the target's true feature at t, the drafter's
argmax equals the target's greedy token at t+1, over {positions.get('code', 0)} code and {positions.get('english', 0)} english positions of the
held-out **test** split (1024-token windows; weights as shipped, float16-rounded). *2nd step* is the next
draft from the drafter's own predicted feature, where the first was accepted and is the text's token.
Model selection used the val split. Loss: smooth-L1 on the feature (weight {FEATURE_WEIGHT:g}) plus the token loss
(cross-entropy to the target's distribution, the weight in the table). Pass cost: {measured}; by parameters touched per token,
{c['drafter_matmul_params'] / 1e6:.2f}M against {c['target_matmul_params'] / 1e6:.2f}M.

{notes}Retrain (CPU, nice 19, resumable; the variables at the top of the script size it): `bash tools/train/eagle.sh`.
The same agreement under ONNX Runtime, for this graph or a quantized copy (`cascade quantize --model models/eagle
--out DIR --bits 8 --quantize-head`, docs/eagle.md): `python3 tools/train/eagle.py heldout --out H` once, then
`node tools/train/eagle_agreement.mjs --heldout H models/eagle DIR`.
Full record: `eagle/record.json`.

"""


def card(args: argparse.Namespace) -> None:
    """Write the section into models/README.md, in place of an earlier one or before the record line."""
    readme = Path(args.models) / "README.md"
    text = readme.read_text()
    section = card_section(json.loads((Path(args.models) / "eagle" / "record.json").read_text()))
    a = text.index(CARD_HEADING) if CARD_HEADING in text else text.index("Full record (")
    b = text.index("Full record (", a)
    readme.write_text(text[:a] + section + text[b:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="models/target")
    ap.add_argument("--data", default="data/tokens")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract", help="cache the target's features over random windows of the train split")
    ex.add_argument("--windows", type=int, default=800)
    ex.add_argument("--per-shard", type=int, default=4)
    ex.add_argument("--seed", type=int, default=24)
    ex.add_argument("--cache", default=".cache/eagle/train")
    for name, help_ in (("train", "train the drafter on the cached features"),
                        ("evaluate", "test-split agreement of RUN/best.pt (steps 1 and 2)"),
                        ("export", "write RUN/best.pt as an ONNX model directory")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--run", default="runs/eagle")
        p.add_argument("--cache", default=".cache/eagle/train", help="the extracted shards (held-out features are cached beside them)")
        if name == "train":
            p.add_argument("--minutes", type=float, default=60, help="wall-clock budget; the learning-rate schedule follows it")
            p.add_argument("--vocab", type=int, default=2048, help="draft vocabulary: the most frequent train tokens")
            p.add_argument("--intermediate", type=int, default=1024, help="the drafter layer's SwiGLU width")
            p.add_argument("--batch", type=int, default=4, help="windows of 1024 tokens per step")
            p.add_argument("--lr", type=float, default=1e-3)
            p.add_argument("--token-weight", type=float, default=TOKEN_WEIGHT,
                           help=f"weight of the token loss beside the feature loss's {FEATURE_WEIGHT} (EAGLE: {TOKEN_WEIGHT})")
            p.add_argument("--init-from", help="an exported drafter folder (models/eagle) to continue from, with its draft vocabulary")
            p.add_argument("--log-every", type=int, default=10)
            p.add_argument("--eval-every", type=int, default=100)
        if name == "export":
            p.add_argument("--out", default="models/eagle")
            p.add_argument("--note", action="append", default=[], help="a line of provenance for record.json")
    ho = sub.add_parser("heldout", help="write the TEST split's windows, features and greedy tokens as raw arrays (eagle_agreement.mjs)")
    ho.add_argument("--cache", default=".cache/eagle/train", help="held-out features are cached beside these shards")
    ho.add_argument("--out", required=True)
    cd = sub.add_parser("card", help="write the drafter's section of MODELS/README.md from MODELS/eagle/record.json")
    cd.add_argument("--models", default="models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"extract": extract, "train": train, "evaluate": evaluate, "export": export, "heldout": heldout, "card": card}[args.cmd](args)


if __name__ == "__main__":
    main()
