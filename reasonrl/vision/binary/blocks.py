"""The transformer block of the tokenizer and the generators: pre-norm, q/k RMSNorm, SwiGLU.

Parameter names follow Instella-T2I's `BasicTransformerBlock` (`input_layernorm`, `attn.q_proj`,
`attn.norm_q`, ..., `post_attention_layernorm`, `mlp.gate_proj`/`up_proj`/`down_proj`, no biases)
so a real checkpoint's keys land on it. Two additions serve the generators: an optional
conditioning prefix (keys and values computed from extra tokens and prepended, as Instella's
image stream takes the language model's hidden states) and a boolean attention mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.models.model import RMSNorm

from .rope import rotate

EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not a multiple of {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim, EPS)
        self.norm_k = RMSNorm(self.head_dim, EPS)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def keys_values(self, x: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, dim) -> keys and values (B, L, H, D), keys normalised (and rotated when `rope`)."""
        k = self.norm_k(self.heads(self.k_proj(x)))
        return (rotate(k, *rope) if rope is not None else k), self.heads(self.v_proj(x))

    def forward(self, x, rope=None, mask=None, prefix=None, cache=None):
        """x (B, L, dim); rope: (cos, sin) (L, D) or None; mask: bool, broadcastable to (B, H, L, P + S),
        True where a query may look; prefix: (keys, values) (B, P, H, D) prepended to the keys;
        cache: a KVCache that these keys join (S: all cached tokens, these included; else S = L)."""
        q = self.norm_q(self.heads(self.q_proj(x)))
        k, v = self.keys_values(x, rope)
        if cache is not None:
            k, v = cache.extend(k, v)
        if rope is not None:
            q = rotate(q, *rope)
        if prefix is not None:
            k, v = torch.cat([prefix[0], k], 1), torch.cat([prefix[1], v], 1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape))


class KVCache:
    """One layer's keys and values of the tokens decoded so far (incremental decoding, no rope)."""

    def __init__(self):
        self.k = self.v = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, L, H, D) keys and values; returns all of them so far."""
        self.k = k if self.k is None else torch.cat([self.k, k], 1)
        self.v = v if self.v is None else torch.cat([self.v, v], 1)
        return self.k, self.v


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.input_layernorm = RMSNorm(dim, EPS)
        self.attn = Attention(dim, num_heads)
        self.post_attention_layernorm = RMSNorm(dim, EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, rope=None, mask=None, prefix=None, cache=None):
        x = x + self.attn(self.input_layernorm(x), rope, mask, prefix, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def init_linear(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) weights and zero biases for every Linear and Conv2d below `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
