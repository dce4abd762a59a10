"""Train the ADORE controller on labels from the full-attention target (docs/adore.md).

The controller scores every token of a sequence for the current step (higher = keep its KV):
  x_i = Emb(token_i)                              own small embedding
  z_i = GRU(x_i, z_{i-1})                         one state per token, computed once when it arrives
  s_{t,i} = v . tanh(A z_i + B z_t + u log(1 + t - i)) + c     score of token i at step t (i <= t)
A pairwise form with the current state (SPEC §5 allows it). Labels: y_{t,i} = 1 when token i is
among the `--label-k` tokens the target attends to most at query t (attention summed over heads and
layers, from the exported `attention_sum`); binary cross-entropy over sampled queries.

Outputs in --out: controller.json + controller.bin (weights for the TypeScript runtime),
controller.onnx (inputs token_ids [n], h0 [1, H], past_states [p, H], past_distance [p]; outputs
states [n, H] for the new tokens and scores [p + n] of every token at the step of the last new
token), reference.json (scores for a fixed input, for the tests) and record.json (label K, loss,
precision@m against the target's true top-m at several budgets).

Usage: python3 tools/train/controller.py --target models/target --out models/controller
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from onnx_weights import load_from_model_dir  # noqa: E402
from train import load_split  # noqa: E402


class Controller(nn.Module):
    def __init__(self, vocab: int, emb: int = 32, hidden: int = 64):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True)
        self.a = nn.Linear(hidden, hidden)
        self.b = nn.Linear(hidden, hidden, bias=False)
        self.u = nn.Parameter(torch.zeros(hidden))
        self.v = nn.Linear(hidden, 1)

    def states(self, ids: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, T] -> per-token states [B, T, H] and the last state [1, B, H]."""
        return self.gru(self.embed(ids), h0)

    def pair_logits(self, z_keys: torch.Tensor, z_query: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """z_keys [..., P, H], z_query [..., 1, H], distance [..., P] -> logits [..., P]."""
        h = torch.tanh(self.a(z_keys) + self.b(z_query) + self.u * torch.log1p(distance.clamp(min=0).float())[..., None])
        return self.v(h).squeeze(-1)


class OnnxController(nn.Module):
    """The runtime graph: new tokens update the state; every token is scored at the last new one."""

    def __init__(self, c: Controller):
        super().__init__()
        self.c = c

    def forward(self, token_ids, h0, past_states, past_distance):
        z, _ = self.c.states(token_ids[None, :], h0[None])           # [1, n, H]
        z = z[0]
        n = token_ids.shape[0]
        keys = torch.cat([past_states, z], dim=0)                     # [p + n, H]
        new_distance = (n - 1 - torch.arange(n)).float()
        distance = torch.cat([past_distance + n, new_distance], dim=0)
        return z, self.c.pair_logits(keys, z[-1:], distance)


@torch.no_grad()
def attention_labels(target, ids: torch.Tensor) -> torch.Tensor:
    """Attention of each query to each key, summed over heads and layers: [T, T]."""
    cfg = target.cfg
    t = ids.shape[1]
    empty = [(torch.zeros(1, cfg.num_key_value_heads, 0, cfg.head_dim),) * 2 for _ in range(cfg.num_hidden_layers)]
    _, _, attn = target.forward_with_past(ids, torch.ones(1, t, dtype=torch.int64), torch.arange(t)[None], empty, attention_sum=True)
    return attn[0]


def make_windows(target, streams: dict[str, np.ndarray], n: int, seq: int, rng: np.random.Generator):
    out = []
    names = sorted(streams)
    for j in range(n):
        s = streams[names[j % len(names)]]
        start = int(rng.integers(0, len(s) - seq - 1))
        ids = torch.from_numpy(s[start:start + seq].astype(np.int64))[None]
        out.append((ids, attention_labels(target, ids)))
    return out


def sampled_loss(c: Controller, ids: torch.Tensor, attn: torch.Tensor, label_k: int, queries: int, rng: np.random.Generator, min_t: int):
    z, _ = c.states(ids)
    z = z[0]
    ts = rng.choice(np.arange(min_t, ids.shape[1]), size=queries, replace=False)
    losses = []
    for t in ts:
        t = int(t)
        row = attn[t, :t + 1]
        y = torch.zeros(t + 1)
        y[row.topk(min(label_k, t + 1)).indices] = 1.0
        logits = c.pair_logits(z[:t + 1], z[t:t + 1], torch.arange(t, -1, -1))
        losses.append(F.binary_cross_entropy_with_logits(logits, y, reduction="mean"))
    return torch.stack(losses).mean()


@torch.no_grad()
def precision_at(c: Controller, windows, fractions: list[float], min_t: int) -> dict[str, float]:
    """Mean overlap of the controller's top-m with the target's true top-m (m = fraction of t + 1)."""
    hits = {f: [] for f in fractions}
    for ids, attn in windows:
        z, _ = c.states(ids)
        z = z[0]
        for t in range(min_t, ids.shape[1], 16):
            logits = c.pair_logits(z[:t + 1], z[t:t + 1], torch.arange(t, -1, -1))
            for f in fractions:
                m = max(1, int(f * (t + 1)))
                true = set(attn[t, :t + 1].topk(m).indices.tolist())
                got = set(logits.topk(m).indices.tolist())
                hits[f].append(len(true & got) / m)
    return {f"{f:g}": round(float(np.mean(v)), 4) for f, v in hits.items()}


@torch.no_grad()
def recency_precision(windows, fractions: list[float], min_t: int) -> dict[str, float]:
    """The same overlap for a sliding window (keep the newest m): the baseline the controller must beat."""
    hits = {f: [] for f in fractions}
    for _, attn in windows:
        for t in range(min_t, attn.shape[0], 16):
            for f in fractions:
                m = max(1, int(f * (t + 1)))
                true = set(attn[t, :t + 1].topk(m).indices.tolist())
                hits[f].append(len(true & set(range(t + 1 - m, t + 1))) / m)
    return {f"{f:g}": round(float(np.mean(v)), 4) for f, v in hits.items()}


def export(c: Controller, out: Path, vocab: int) -> None:
    c.eval()
    h = c.hidden
    tensors = {
        "embed": c.embed.weight, "w_ih": c.gru.weight_ih_l0, "w_hh": c.gru.weight_hh_l0,
        "b_ih": c.gru.bias_ih_l0, "b_hh": c.gru.bias_hh_l0, "a_w": c.a.weight, "a_b": c.a.bias,
        "b_w": c.b.weight, "u": c.u, "v_w": c.v.weight, "v_b": c.v.bias,
    }
    blob, layout, offset = [], {}, 0
    for name, t in tensors.items():
        arr = t.detach().float().contiguous().numpy().ravel()
        layout[name] = {"offset": offset, "shape": list(t.shape)}
        blob.append(arr)
        offset += arr.size
    data = np.concatenate(blob).astype("<f4")
    data.tofile(out / "controller.bin")
    (out / "controller.json").write_text(json.dumps({
        "format": "adore-controller/1", "vocab_size": vocab, "embedding": c.embed.embedding_dim, "hidden": h,
        "gru_gate_order": "r,z,n (torch.nn.GRU)", "weights": {"file": "controller.bin", "dtype": "float32", "tensors": layout},
        "sha256": hashlib.sha256(data.tobytes()).hexdigest()}, indent=1) + "\n")
    wrapper = OnnxController(c)
    dummy = (torch.tensor([5, 6, 7]), torch.zeros(1, h), torch.randn(4, h), torch.tensor([3.0, 2.0, 1.0, 0.0]))
    torch.onnx.export(wrapper, dummy, str(out / "controller.onnx"), input_names=["token_ids", "h0", "past_states", "past_distance"],
                      output_names=["states", "scores"], opset_version=14,
                      dynamic_axes={"token_ids": {0: "new"}, "past_states": {0: "past"}, "past_distance": {0: "past"},
                                    "states": {0: "new"}, "scores": {0: "all"}})


@torch.no_grad()
def reference(c: Controller, out: Path) -> None:
    """Torch outputs for a fixed input (prefix, then one more token), for the runtime tests."""
    ids = [11, 42, 7, 300, 42, 9, 1000, 5, 42, 77]
    z, _ = c.states(torch.tensor([ids]))
    z = z[0]
    t = len(ids) - 1
    scores = c.pair_logits(z, z[t:t + 1], torch.arange(t, -1, -1))
    (out / "reference.json").write_text(json.dumps({"token_ids": ids, "states_last": z[-1].tolist(), "scores": scores.tolist()}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="models/target")
    ap.add_argument("--data", default="data/tokens")
    ap.add_argument("--out", default="models/controller")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--label-k", type=int, default=32)
    ap.add_argument("--windows", type=int, default=96, help="training windows labelled by the target")
    ap.add_argument("--val-windows", type=int, default=12)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--queries", type=int, default=16, help="query steps sampled per window per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_from_model_dir(Path(args.target)).eval()
    vocab = target.cfg.vocab_size
    min_t = 16
    t0 = time.time()
    train = make_windows(target, load_split(Path(args.data), "train"), args.windows, args.seq, rng)
    val = make_windows(target, load_split(Path(args.data), "val"), args.val_windows, args.seq, rng)
    print(f"labelled {len(train)} + {len(val)} windows of {args.seq} tokens in {time.time() - t0:.0f} s", flush=True)
    c = Controller(vocab)
    opt = torch.optim.AdamW(c.parameters(), lr=args.lr, weight_decay=0.01)
    curve = []
    for step in range(1, args.steps + 1):
        ids, attn = train[int(rng.integers(len(train)))]
        loss = sampled_loss(c, ids, attn, args.label_k, args.queries, rng, min_t)
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(c.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps:
            with torch.no_grad():
                vl = float(np.mean([sampled_loss(c, i, a, args.label_k, args.queries, np.random.default_rng(step), min_t).item() for i, a in val]))
            curve.append({"step": step, "train_bce": round(loss.item(), 4), "val_bce": round(vl, 4)})
            print(f"step {step}/{args.steps} bce {loss.item():.4f} val {vl:.4f}", flush=True)
    fractions = [0.125, 0.25, 0.5]
    record = {
        "target": args.target, "label_k": args.label_k, "seq": args.seq, "windows": args.windows, "steps": args.steps,
        "queries_per_step": args.queries, "params": sum(p.numel() for p in c.parameters()), "train_wall_s": round(time.time() - t0),
        "curve": curve,
        "precision_at_budget": {"controller": precision_at(c, val, fractions, min_t), "sliding_window": recency_precision(val, fractions, min_t)},
        "torch": torch.__version__,
    }
    export(c, out, vocab)
    reference(c, out)
    (out / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["precision_at_budget"]), flush=True)


if __name__ == "__main__":
    main()
