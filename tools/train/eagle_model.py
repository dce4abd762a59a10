"""The EAGLE-1 feature drafter (the torch module, its loss and its agreement measures) for eagle.py.

EagleDrafter: fc([embed(x_{t+1}); f_t]) -> model.Block -> RMSNorm -> f^_{t+1}; logits = f^ @ head^T
over the draft vocabulary (rows of the target's frozen embedding). `forward` runs whole windows
(training, evaluation); `step` is the incremental pass the ONNX graph exports (EAGLE_CONTRACT).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from model import Block, ModelConfig, RMSNorm, rope, rope_tables  # noqa: E402

NOISE_STD = 0.2
FEATURE_WEIGHT, TOKEN_WEIGHT = 1.0, 0.1

EAGLE_CONTRACT = """Inputs: input_ids int64 [b, s] (the tokens x_{t+1}); hidden_states float32 [b, s, hidden] (the
features f_t of the tokens before them: the target's for verified positions, the drafter's own
predicted features after that); attention_mask int64 [b, past + s]; position_ids int64 [b, s]
(the positions of input_ids); past_key_values.0.key/value float32 [b, heads, past, head_dim].
Outputs: logits float32 [b, s, draft_vocab] (index i is token config.draft_vocab[i]);
next_hidden_states float32 [b, s, hidden] (f^_{t+2} ... the predicted features, fed back as
hidden_states with the next drafted token); present.0.key/value [b, heads, past + s, head_dim]."""



class EagleDrafter(nn.Module):
    """fc([embed(x_{t+1}); f_t]) -> Block -> f^_{t+1}; logits = f^ @ head^T over the draft vocabulary."""

    def __init__(self, cfg: ModelConfig, embed: torch.Tensor, draft_vocab: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(embed.clone(), requires_grad=False)  # [vocab, hidden], the target's
        self.register_buffer("draft_vocab", draft_vocab.clone())  # [n] token ids, most frequent first
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=True)
        self.layer = Block(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # the features are post-norm, as the target's

    def head(self) -> torch.Tensor:
        return self.embed[self.draft_vocab]

    def step(self, input_ids, hidden_states, attention_mask, position_ids, past_k, past_v):
        """Incremental forward (the ONNX graph): returns draft logits, next features and the cache."""
        s = input_ids.shape[1]
        total = attention_mask.shape[1]
        key_idx = torch.arange(total)[None, :]
        query_idx = (torch.arange(s) + total - s)[:, None]
        allowed = (key_idx <= query_idx)[None, None] & (attention_mask[:, None, None, :] > 0)
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        x = self.fc(torch.cat([F.embedding(input_ids, self.embed), hidden_states], dim=-1))
        rope_cs = rope_tables(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        y, (k, v), _ = self.layer(x, rope_cs, bias, past_k, past_v)
        f = self.norm(y)
        b, _, d = f.shape
        logits = F.linear(f.reshape(b * s, d), self.head()).reshape(b, s, -1)
        return logits, f, k, v

    def forward(self, next_ids: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Training forward over whole windows (causal): next_ids [b, s] = x_{t+1}, feats [b, s, d] = f_t."""
        x = self.fc(torch.cat([F.embedding(next_ids, self.embed), feats], dim=-1))
        y, _, _ = self.layer(x, rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta), None)
        return self.norm(y)


def drafter_config(target_cfg: dict, intermediate: int) -> ModelConfig:
    return ModelConfig(name="eagle", vocab_size=target_cfg["vocab_size"], hidden_size=target_cfg["hidden_size"],
                       num_hidden_layers=1, num_attention_heads=target_cfg["num_attention_heads"],
                       num_key_value_heads=target_cfg["num_key_value_heads"], intermediate_size=intermediate,
                       max_position_embeddings=target_cfg["max_position_embeddings"], rope_theta=target_cfg["rope_theta"],
                       rms_norm_eps=target_cfg["rms_norm_eps"])


def init_from_target(drafter: EagleDrafter, target: nn.Module) -> None:
    """The decoder layer and the output norm start as the target's last layer (its first `intermediate`
    MLP neurons) and final norm: the drafter is the target's last layer fed with an estimate, fc, of
    the residual stream at t+1."""
    last = target.layers[-1]
    n = drafter.cfg.intermediate_size
    with torch.no_grad():
        drafter.norm.weight.copy_(target.norm.weight)
        for name, p in drafter.layer.named_parameters():
            src = dict(last.named_parameters())[name]
            if name.startswith(("gate_proj", "up_proj")):
                p.copy_(src[:n])
            elif name.startswith("down_proj"):
                p.copy_(src[:, :n])
            else:
                p.copy_(src)


# ------------------------------------------------------------------------------------------- features

@torch.no_grad()
def target_features(target: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The target's post-norm last hidden state [b, s, d] for full causal windows (the head's input)."""
    b, s = ids.shape
    pos = torch.arange(s).unsqueeze(0).expand(b, s)
    x = target.embed_tokens(ids)
    rope_cs = rope_tables(pos, target.cfg.head_dim, target.cfg.rope_theta)
    for layer in target.layers:
        x, _, _ = layer(x, rope_cs, None)
    return target.norm(x)


def eagle_noise(f: torch.Tensor) -> torch.Tensor:
    return f + (torch.rand_like(f) - 0.5) * NOISE_STD * 512 / f.shape[1]


def losses(drafter: EagleDrafter, ids: torch.Tensor, f: torch.Tensor, noise: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature loss, token loss and the drafter's step-1 predictions for positions t = 0..s-2."""
    b, s = ids.shape
    pos = torch.arange(1, s).unsqueeze(0).expand(b, s - 1)
    inp = eagle_noise(f[:, :-1]) if noise else f[:, :-1]
    pred = drafter(ids[:, 1:], inp, pos)
    want = f[:, 1:]
    vloss = F.smooth_l1_loss(pred, want)
    head = drafter.head()
    with torch.no_grad():
        p_full = (want @ drafter.embed.T).softmax(-1)
        p = p_full[..., drafter.draft_vocab]
    logq = (pred @ head.T).log_softmax(-1)
    ploss = -(p * logq).sum(-1).mean()
    return vloss, ploss, logq.argmax(-1)


@torch.no_grad()
def agreement(drafter: EagleDrafter, windows: dict[str, np.ndarray], steps: int = 1) -> dict[str, float]:
    """Top-1 agreement with the target's greedy token on held-out text positions.

    step1: from (x_{t+1}, f_t) with the target's true features at every position <= t (as after a
    verification), the drafter's argmax equals the target's greedy token at t+1.
    step2: from (x_{t+2}, f^_{t+1}), its own predicted feature, with its cache holding the true-feature
    entries <= t: the argmax equals the target's greedy token at t+2 (the text's tokens as context).
    step2_given_step1: the same over the positions where the first draft was accepted and equals the
    text's next token, so the text is the drafted path: the second draft's acceptance given the first's.
    Over the draft vocabulary (the drafter's head) unless named full_vocab (all rows of the head)."""
    drafter.eval()
    ids = torch.from_numpy(windows["ids"].astype(np.int64))
    f = torch.from_numpy(windows["f"].astype(np.float32))
    greedy = torch.from_numpy(windows["greedy"].astype(np.int64))
    n = {"step1": 0, "step1_full": 0, "pos1": 0, "step2": 0, "pos2": 0, "step2_on_path": 0, "on_path": 0}
    for i in range(0, len(ids), 4):
        x, ff, g = ids[i:i + 4], f[i:i + 4], greedy[i:i + 4]
        b, s = x.shape
        pos = torch.arange(1, s).unsqueeze(0).expand(b, s - 1)
        pred = drafter(x[:, 1:], ff[:, :-1], pos)  # pred[:, t] = f^_{t+1}; the target's token: g[:, t+1]
        want = g[:, 1:]
        hit1 = drafter.draft_vocab[(pred @ drafter.head().T).argmax(-1)] == want
        n["step1"] += int(hit1.sum())
        n["step1_full"] += int(((pred @ drafter.embed.T).argmax(-1) == want).sum())
        n["pos1"] += want.numel()
        if steps >= 2:
            hit2, on_path = step2(drafter, x, ff, pred, g, hit1)
            n["step2"] += int(hit2.sum())
            n["pos2"] += hit2.numel()
            n["step2_on_path"] += int((hit2 & on_path).sum())
            n["on_path"] += int(on_path.sum())
    drafter.train()
    r = {"step1": n["step1"] / n["pos1"], "step1_full_vocab": n["step1_full"] / n["pos1"]}
    if steps >= 2:
        r["step2"] = n["step2"] / n["pos2"]
        r["step2_given_step1"] = n["step2_on_path"] / max(1, n["on_path"])
        r["step1_and_step2"] = n["step2_on_path"] / n["pos2"]
    return {**{k: round(v, 4) for k, v in r.items()}, "positions": n["pos1"]}


def step2(drafter: EagleDrafter, x, ff, pred, g, hit1) -> tuple[torch.Tensor, torch.Tensor]:
    """The second draft from every start position j of the windows at once: query j is the input
    (x_{j+2}, f^_{j+1}) at position j + 2; its keys are the cache entries 0..j (entry i holds the
    true-feature input (x_{i+1}, f_i): f_{j+1} is not known yet when drafting from j) and itself.
    Returns the hits against the target's greedy token at j + 2 and where the text is the drafted path."""
    b, s = x.shape
    cfg = drafter.cfg
    pos = torch.arange(1, s).unsqueeze(0).expand(b, s - 1)
    layer = drafter.layer
    x1 = drafter.fc(torch.cat([F.embedding(x[:, 1:], drafter.embed), ff[:, :-1]], dim=-1))
    h1 = layer.input_layernorm(x1)
    rc1 = rope_tables(pos, cfg.head_dim, cfg.rope_theta)
    att = layer.self_attn
    n = s - 2  # drafted entries for t = 0..s-3 (the target's greedy at t+2 is known)
    k1 = att.k_proj(h1).view(b, s - 1, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
    v1 = att.v_proj(h1).view(b, s - 1, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
    k1 = rope(k1, rc1)
    x2 = drafter.fc(torch.cat([F.embedding(x[:, 2:n + 2], drafter.embed), pred[:, :n]], dim=-1))
    pos2 = torch.arange(2, n + 2).unsqueeze(0).expand(b, n)
    rc2 = rope_tables(pos2, cfg.head_dim, cfg.rope_theta)
    h2 = layer.input_layernorm(x2)
    q2 = rope(att.q_proj(h2).view(b, n, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2), rc2)
    k2 = rope(att.k_proj(h2).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2), rc2)
    v2 = att.v_proj(h2).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
    scale = 1 / math.sqrt(cfg.head_dim)
    s_cache = (q2 @ k1.transpose(-1, -2)) * scale  # [b, heads, n, s - 1]
    mask = torch.arange(s - 1)[None, :] <= torch.arange(n)[:, None]
    s_cache = s_cache.masked_fill(~mask, float("-inf"))
    s_self = (q2 * k2).sum(-1, keepdim=True) * scale
    probs = torch.cat([s_cache, s_self], dim=-1).softmax(-1)
    out = probs[..., :-1] @ v1 + probs[..., -1:] * v2
    a = att.o_proj(out.transpose(1, 2).reshape(b, n, -1))
    y = x2 + a
    hh = layer.post_attention_layernorm(y)
    f2 = drafter.norm(y + layer.down_proj(F.silu(layer.gate_proj(hh)) * layer.up_proj(hh)))
    tok2 = drafter.draft_vocab[(f2 @ drafter.head().T).argmax(-1)]
    want2 = g[:, 2:n + 2]
    hit2 = tok2 == want2
    on_path = hit1[:, :n] & (g[:, 1:n + 1] == x[:, 2:n + 2])  # the first draft was accepted and is the text's token
    return hit2, on_path


class EagleOnnx(nn.Module):
    """Flat signature for torch.onnx.export: (input_ids, hidden_states, attention_mask, position_ids,
    past key, past value) -> (logits, next_hidden_states, present key, present value)."""

    def __init__(self, drafter: EagleDrafter):
        super().__init__()
        self.drafter = drafter

    def forward(self, input_ids, hidden_states, attention_mask, position_ids, past_k, past_v):
        return self.drafter.step(input_ids, hidden_states, attention_mask, position_ids, past_k, past_v)
