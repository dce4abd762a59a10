"""Paired trial (issue 24): does EAGLE-3's multi-layer feature input raise the feature drafter's agreement?

EAGLE-3 (Li et al., 2025) feeds its drafter the target's low, middle and high layers' hidden states
instead of the last one alone. This trial asks whether that helps the shipped EAGLE-1 drafter
(models/eagle) on this family's 6-layer target before anything is built for it: both arms warm-start
from models/eagle and train for the same steps on the same cached windows; the aux arm also reads the
target's residual stream after layers 2 and 4 (AUX), each RMS-normalised, concatenated and added to
fc's output through a zero-initialised linear map (so at step 0 it is the shipped drafter exactly),
with those inputs zeroed at a random AUX-dropout share of positions (a drafted position has no target
layers to read). The control arm trains the same layers without them. The base layers train at --lr
(warm-up over 10%, cosine to 10%), the aux map at --aux-lr. Validation agreement (first draft, draft
vocabulary and full vocabulary) every --eval-every steps; test-split agreement at the end, with the aux
inputs and without them. Results: bench/results/eagle-aux-trial.

  python3 tools/train/eagle_aux_trial.py extract --windows 400 --seed 27 --cache .cache/eagle/trial
  python3 tools/train/eagle_aux_trial.py extract --windows 1200 --seed 28 --cache .cache/eagle/trial2
  python3 tools/train/eagle_aux_trial.py --threads 1 train --arm control --steps 1500 \
      --cache .cache/eagle/trial,.cache/eagle/trial2 --run runs/trial2-control    # and --arm aux, beside it
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from eagle import VAL_WINDOWS, TEST_WINDOWS, drawn_windows, held_out_windows, warm_start  # noqa: E402
from eagle_model import EagleDrafter, drafter_config, eagle_noise  # noqa: E402
from model import rope_tables  # noqa: E402
from onnx_weights import load_from_model_dir  # noqa: E402
from train import DOMAINS  # noqa: E402

AUX = (1, 3)  # 0-based layer indices whose outputs (the residual stream) are the aux features: after layers 2 and 4 of 6


@torch.no_grad()
def features(target, ids):
    b, s = ids.shape
    pos = torch.arange(s).unsqueeze(0).expand(b, s)
    x = target.embed_tokens(ids)
    rc = rope_tables(pos, target.cfg.head_dim, target.cfg.rope_theta)
    aux = []
    for i, layer in enumerate(target.layers):
        x, _, _ = layer(x, rc, None)
        if i in AUX:
            aux.append(x)
    return target.norm(x), torch.cat(aux, dim=-1)


def rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


class AuxDrafter(EagleDrafter):
    def __init__(self, *a, use_aux: bool):
        super().__init__(*a)
        d = self.cfg.hidden_size
        self.use_aux = use_aux
        self.aux = nn.Linear(len(AUX) * d, d, bias=False)
        nn.init.zeros_(self.aux.weight)

    def forward(self, next_ids, feats, positions, aux=None):
        x = self.fc(torch.cat([F.embedding(next_ids, self.embed), feats], dim=-1))
        if self.use_aux and aux is not None:
            m = torch.cat([rms(c) for c in aux.split(self.cfg.hidden_size, dim=-1)], dim=-1)
            x = x + self.aux(m)
        y, _, _ = self.layer(x, rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta), None)
        return self.norm(y)


def extract(args):
    target = load_from_model_dir(Path(args.target)).eval()
    out = Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    t0, done = time.time(), 0
    for s0, rows, _ in drawn_windows(Path(args.data), args.seed, args.windows, 4):
        shard = out / f"{s0:05d}.npz"
        if shard.exists():
            continue
        ids = torch.from_numpy(np.stack(rows))
        f, m = features(target, ids)
        np.savez(out / f"{s0:05d}.tmp.npz", ids=ids.numpy().astype(np.uint16), f=f.numpy().astype(np.float16), m=m.numpy().astype(np.float16))
        (out / f"{s0:05d}.tmp.npz").rename(shard)
        done += ids.numel()
        print(f"extract {s0 + len(rows)}/{args.windows} {done / (time.time() - t0):.0f} tok/s", flush=True)


def held(target, data, split, windows, cache: Path):
    path = cache / f"aux-{split}-{windows}.npz"
    if not path.exists():
        z = {}
        for d, ids in held_out_windows(data, split, windows):
            fs, ms = zip(*[features(target, ids[i:i + 4]) for i in range(0, len(ids), 4)])
            f, m = torch.cat(fs), torch.cat(ms)
            z[f"{d}.ids"] = ids.numpy()
            z[f"{d}.f"] = f.numpy()
            z[f"{d}.m"] = m.numpy().astype(np.float16)
            z[f"{d}.greedy"] = (f @ target.embed_tokens.weight.T).argmax(-1).numpy()
        np.savez(path, **z)
    z = np.load(path)
    return {d: {k: z[f"{d}.{k}"] for k in ("ids", "f", "m", "greedy")} for d in DOMAINS}


@torch.no_grad()
def agree(drafter, w, use_aux=True):
    drafter.eval()
    hit = hitf = n = 0
    for i in range(0, len(w["ids"]), 4):
        x = torch.from_numpy(w["ids"][i:i + 4].astype(np.int64))
        f = torch.from_numpy(w["f"][i:i + 4].astype(np.float32))
        m = torch.from_numpy(w["m"][i:i + 4].astype(np.float32))
        g = torch.from_numpy(w["greedy"][i:i + 4].astype(np.int64))
        b, s = x.shape
        pos = torch.arange(1, s).unsqueeze(0).expand(b, s - 1)
        pred = drafter(x[:, 1:], f[:, :-1], pos, m[:, :-1] if use_aux else torch.zeros_like(m[:, :-1]))
        want = g[:, 1:]
        hit += int((drafter.draft_vocab[(pred @ drafter.head().T).argmax(-1)] == want).sum())
        hitf += int(((pred @ drafter.embed.T).argmax(-1) == want).sum())
        n += want.numel()
    drafter.train()
    return {"step1": round(hit / n, 4), "full": round(hitf / n, 4), "n": n}


def train(args):
    torch.manual_seed(0)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    target = load_from_model_dir(Path(args.target)).eval()
    tcfg = json.loads((Path(args.target) / "config.json").read_text())
    vocab = torch.tensor(json.loads((Path(args.init_from) / "config.json").read_text())["draft_vocab"], dtype=torch.int64)
    drafter = AuxDrafter(drafter_config(tcfg, 1024), target.embed_tokens.weight.detach(), vocab, use_aux=args.arm == "aux")
    aux_w = drafter.aux
    del drafter.aux  # warm_start loads strictly the shipped drafter's parameters
    warm_start(drafter, Path(args.init_from), run)
    drafter.aux = aux_w
    val = held(target, Path(args.data), "val", VAL_WINDOWS, Path(args.cache.split(",")[0]).parent)
    del target
    shards = sorted(p for c in args.cache.split(",") for p in Path(c).glob("*.npz") if not p.name.endswith(".tmp.npz"))
    rows = [(p, i) for p in shards for i in range(4)]

    def batch(picks):
        xs, fs, ms = [], [], []
        for k in picks:
            path, i = rows[int(k)]
            z = np.load(path)
            xs.append(z["ids"][i].astype(np.int64)); fs.append(z["f"][i]); ms.append(z["m"][i])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(fs)).float(), torch.from_numpy(np.stack(ms)).float()
    print(f"{args.arm}: {len(rows)} windows; start val " + json.dumps({d: agree(drafter, w) for d, w in val.items()}), flush=True)
    params = [p for p in drafter.parameters() if p.requires_grad]
    base = [p for n, p in drafter.named_parameters() if p.requires_grad and not n.startswith("aux.")]
    groups = [{"params": base, "scale": 1.0}]
    if args.arm == "aux":
        groups.append({"params": list(drafter.aux.parameters()), "scale": args.aux_lr / args.lr})
    opt = torch.optim.AdamW(groups, args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(1)
    t0, step, log = time.time(), 0, []
    while step < args.steps:
        frac = step / args.steps
        for g in opt.param_groups:
            g["lr"] = g["scale"] * args.lr * min(1.0, frac / 0.1 + 1e-3) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))
        x, f, m = batch(rng.integers(0, len(rows), size=4))
        b, s = x.shape
        pos = torch.arange(1, s).unsqueeze(0).expand(b, s - 1)
        noise = eagle_noise(f[:, :-1])
        mn = m[:, :-1] + (torch.rand_like(m[:, :-1]) - 0.5) * 0.2 * 512 / s
        mn = mn * (torch.rand(b, s - 1, 1) >= args.aux_dropout)  # drafted positions have no aux features: zeros
        pred = drafter(x[:, 1:], noise, pos, mn)
        want = f[:, 1:]
        vloss = F.smooth_l1_loss(pred, want)
        with torch.no_grad():
            p = (want @ drafter.embed.T).softmax(-1)[..., drafter.draft_vocab]
        ploss = -(p * (pred @ drafter.head().T).log_softmax(-1)).sum(-1).mean()
        loss = vloss + ploss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        step += 1
        if step % 200 == 0:
            torch.save({"model": drafter.state_dict(), "opt": opt.state_dict(), "step": step, "log": log}, run / "ckpt.pt")
        if step % args.eval_every == 0:
            more = sorted(p for c in args.cache.split(",") for p in Path(c).glob("*.npz") if not p.name.endswith(".tmp.npz"))
            if len(more) != len(shards):
                shards = more
                rows = [(p, i) for p in shards for i in range(4)]
                print(f"{len(rows)} windows", flush=True)
            ev = {d: agree(drafter, w) for d, w in val.items()}
            log.append({"step": step, "s": round(time.time() - t0), "val": ev})
            print(f"{args.arm} step {step} {time.time() - t0:.0f}s vloss {vloss.item():.4f} ploss {ploss.item():.3f} val {json.dumps(ev)}", flush=True)
    ev = {d: agree(drafter, w) for d, w in val.items()}
    log.append({"step": step, "s": round(time.time() - t0), "val": ev})
    print(f"{args.arm} final step {step} val {json.dumps(ev)}", flush=True)
    torch.save({"model": drafter.state_dict(), "log": log, "args": vars(args)}, run / "final.pt")
    target = load_from_model_dir(Path(args.target)).eval()
    test = held(target, Path(args.data), "test", TEST_WINDOWS, Path(args.cache.split(",")[0]).parent)
    res = {d: agree(drafter, w) for d, w in test.items()}
    res["without_aux"] = {d: agree(drafter, w, use_aux=False) for d, w in test.items()}
    print(f"{args.arm} TEST {json.dumps(res)}", flush=True)
    (run / "result.json").write_text(json.dumps({"val_log": log, "test": res}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="models/target")
    ap.add_argument("--data", default="data/tokens")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("--windows", type=int, default=400)
    ex.add_argument("--seed", type=int, default=27)
    ex.add_argument("--cache", default=".cache/eagle/trial")
    tr = sub.add_parser("train")
    tr.add_argument("--arm", choices=["control", "aux"], required=True)
    tr.add_argument("--steps", type=int, default=200)
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--aux-lr", type=float, default=5e-4)
    tr.add_argument("--aux-dropout", type=float, default=0.25)
    tr.add_argument("--eval-every", type=int, default=100)
    tr.add_argument("--cache", default=".cache/eagle/trial")
    tr.add_argument("--run", required=True)
    tr.add_argument("--init-from", default="models/eagle")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"extract": extract, "train": train}[args.cmd](args)


if __name__ == "__main__":
    main()
