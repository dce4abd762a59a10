"""A Llama-style decoder (RMSNorm, RoPE, SwiGLU, tied embeddings) whose forward follows the
Hugging Face Optimum "decoder with past" contract of SPEC §3, so the ONNX export is this module.

Contract of `forward_with_past` (all shapes as in SPEC §3):
  input_ids      int64 [b, s]            new tokens only
  attention_mask int64 [b, past + s]     1 = attend; a query at cache index past+j attends to cache
                                          indices <= past+j whose mask is 1 (causal by cache order)
  position_ids   int64 [b, s]            absolute positions for RoPE; need not be contiguous
  past           list of (key, value)    float [b, kv_heads, past, head_dim], keys stored after RoPE
returns logits [b, s, vocab] and presents [(key, value)] of length past + s.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    name: str
    vocab_size: int = 8192
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    num_key_value_heads: int = 6
    intermediate_size: int = 1024
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    eos_token_id: int = 0
    bos_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(head_dim=self.head_dim, model_type="llama", architectures=["LlamaForCausalLM"],
                 tie_word_embeddings=True, eos_token_id=[self.eos_token_id])
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the Hugging Face Llama rotary embedding, [b, 1, s, head_dim]; computed once per
    forward and shared by every layer (the exported graph then holds one copy, not one per layer)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    freqs = position_ids.to(torch.float32)[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :, :]
    return emb.cos(), emb.sin()


def rope(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding (rotate_half convention). x: [b, h, s, d]."""
    cos, sin = tables
    return x * cos + rotate_half(x) * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    s = q.shape[-2]
    bias = torch.full((s, s), float("-inf")).triu(1)
    return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias, dim=-1), v)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, h * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, cfg.hidden_size, bias=False)

    def forward(self, x, rope_cs, bias, past_k=None, past_v=None):
        """Returns the output, the (key, value) cache and, with a bias (inference), the attention
        probabilities summed over heads [b, s, past + s]; None in training."""
        b, s, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, s, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q = rope(q, rope_cs)
        k = rope(k, rope_cs)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        present = (k, v)
        rep = c.num_attention_heads // c.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        probs = None
        if bias is None:  # training: plain causal attention, fused where this torch has it
            out = causal_attention(q, k, v)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(c.head_dim) + bias
            probs = torch.softmax(scores, dim=-1)
            out = torch.matmul(probs, v)
        out = out.transpose(1, 2).reshape(b, s, -1)
        return self.o_proj(out), present, None if probs is None else probs.sum(dim=1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x, rope_cs, bias, past_k=None, past_v=None, dropout: float = 0.0):
        a, present, attn = self.self_attn(self.input_layernorm(x), rope_cs, bias, past_k, past_v)
        x = x + F.dropout(a, dropout, self.training)
        h = self.post_attention_layernorm(x)
        x = x + F.dropout(self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)), dropout, self.training)
        return x, present, attn


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.dropout = 0.0  # residual dropout in training only (a data-limited corpus seen for several epochs)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "embed_tokens.weight":
                std = 0.02 / math.sqrt(2 * cfg.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied head as a 2-D Gemm so the exported graph shares the embedding initializer."""
        b, s, d = h.shape
        return F.linear(h.reshape(b * s, d), self.embed_tokens.weight).reshape(b, s, -1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Training forward: full causal attention over [b, s] with positions 0..s-1."""
        b, s = input_ids.shape
        pos = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)
        x = self.embed_tokens(input_ids)
        rope_cs = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_theta)
        for layer in self.layers:
            x, _, _ = layer(x, rope_cs, None, dropout=self.dropout)
        return self.logits(self.norm(x))

    def forward_with_past(self, input_ids, attention_mask, position_ids, past, attention_sum=False):
        """Logits and presents; with `attention_sum` also the attention each new token pays to each
        cached token, summed over heads and layers [b, s, past + s] (for H2O scores and ADORE labels)."""
        s = input_ids.shape[1]
        total = attention_mask.shape[1]
        past_len = total - s
        key_idx = torch.arange(total)[None, :]
        query_idx = (torch.arange(s) + past_len)[:, None]
        allowed = (key_idx <= query_idx)[None, None] & (attention_mask[:, None, None, :] > 0)
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        x = self.embed_tokens(input_ids)
        rope_cs = rope_tables(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        presents, attn_sum = [], None
        for i, layer in enumerate(self.layers):
            x, present, attn = layer(x, rope_cs, bias, past[i][0], past[i][1])
            presents.append(present)
            attn_sum = attn if attn_sum is None else attn_sum + attn
        logits = self.logits(self.norm(x))
        return (logits, presents, attn_sum) if attention_sum else (logits, presents)


class OnnxWrapper(nn.Module):
    """Flat positional signature for torch.onnx.export: (ids, mask, pos, k0, v0, k1, v1, ...) ->
    (logits, attention_sum, present k0, v0, ...). attention_sum is an extra output beside the Optimum
    contract; runners that do not know it ignore it."""

    def __init__(self, model: Decoder):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents, attn_sum = self.model.forward_with_past(input_ids, attention_mask, position_ids, past, attention_sum=True)
        out = [logits, attn_sum]
        for k, v in presents:
            out += [k, v]
        return tuple(out)


FAMILY = {
    "target": ModelConfig(name="target", hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                          num_key_value_heads=8, intermediate_size=1408),
    "draft-l2": ModelConfig(name="draft-l2", hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=2, intermediate_size=384),
    "draft-l2w": ModelConfig(name="draft-l2w", hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
                             num_key_value_heads=3, intermediate_size=512),
    "draft-l1": ModelConfig(name="draft-l1", hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                            num_key_value_heads=1, intermediate_size=192),
}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
