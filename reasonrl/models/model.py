"""`DecoderLM`: one decoder-only transformer for the Llama, Qwen2 and Qwen3 families.

The same module serves training and inference. Tokens arrive flattened, (N,), with their
positions; how attention reads and writes keys and values is decided by the `attn` object passed
to `forward` (state is passed, never hidden in a module global):

- training: `CausalAttention(batch, seqlen)` runs causal attention over padded full sequences;
- inference: the engine passes a paged-KV attention built from its block tables.

q/k/v and gate/up projections are fused into one matmul each; `loader.py` maps the separate
Hugging Face tensors onto them and back.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.models.config import ModelConfig
from reasonrl.models.rope import Rotary, apply_rotary


class Attention(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (N, Hq, D), k and v (N, Hkv, D) for the new tokens -> output (N, Hq, D)."""


class CausalAttention:
    """Full-sequence causal attention for `batch` right-padded sequences of `seqlen` tokens."""

    def __init__(self, batch: int, seqlen: int):
        self.batch, self.seqlen = batch, seqlen

    def __call__(self, layer, q, k, v):
        b, t = self.batch, self.seqlen
        q, k, v = (x.view(b, t, x.shape[1], x.shape[2]).transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        return out.transpose(1, 2).reshape(b * t, out.shape[1], out.shape[3])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalised in fp32, cast back, then scaled, as the Hugging Face modules do; F.rms_norm is
        # one kernel where x * rsqrt(mean(x^2) + eps) is five (bit-identical on CPU, tested)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(self, x, cos, sin, attn: Attention):
        out = attn(self.layer, *self.project(x, cos, sin))
        return self.o_proj(out.reshape(-1, self.q_size))

    def project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows x (N, hidden) -> q (N, Hq, D), k and v (N, Hkv, D), q and k rotated."""
        qk, v = self.qkv_proj(x).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim)  # q's heads, then k's
        if self.q_norm is not None:  # Qwen3 normalises each head before rotating it
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=1)
        q, k = apply_rotary(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=1)  # one rotation for both
        return q, k, v.view(-1, self.num_kv_heads, self.head_dim)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int | None = None):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.rotary = Rotary(cfg, max_len)

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when the config says so (again after `to_empty`,
        which replaces parameters one module at a time and so unties them)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention) -> torch.Tensor:
        """input_ids, positions (N,) -> final hidden states (N, hidden), after the last norm."""
        return self.forward_embeds(self.embed_tokens(input_ids), positions, attn)

    def forward_embeds(self, x: torch.Tensor, positions: torch.Tensor, attn: Attention) -> torch.Tensor:
        """Input embeddings x (N, hidden), positions (N,) or M-RoPE rows (3, N) -> final hidden (N, hidden)."""
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, attn)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward_padded(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Training forward: input_ids (B, T), right-padded -> hidden (B, T, hidden)."""
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).repeat(b)
        hidden = self(input_ids.reshape(-1), positions, CausalAttention(b, t))
        return hidden.view(b, t, -1)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype
