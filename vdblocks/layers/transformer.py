"""Multi-head attention and pre-norm transformer blocks on tokens ``(b, n, dim)``.

The modules own their projections; the kernel is :func:`vdblocks.attention.attention`, so the
backend follows the dispatch rules (argument > context manager > environment variable > default).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from ..attention.dispatch import BackendSpec, attention
from ..validation import check_positive_int, check_same_batch, check_tensor

__all__ = ["Attention", "FeedForward", "TransformerBlock"]


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention with input and output projections.

    Shapes: x ``(b, n, dim)``, optional context ``(b, m, context_dim)`` -> ``(b, n, dim)``.
    Without context it is self-attention. ``backend`` (a name or priority list) is passed to the
    kernel dispatch; None follows the context manager / environment / default.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.heads = check_positive_int(heads, "heads")
        self.dim_head = check_positive_int(dim_head, "dim_head")
        self.context_dim = check_positive_int(context_dim, "context_dim") if context_dim else None
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_kv = nn.Linear(self.context_dim or dim, 2 * inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim)
        self.backend = backend

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", "(b, n, dim)", sizes={"dim": self.dim}, like=self)
        if context is None:
            if self.context_dim is not None:
                raise ValueError(
                    f"expected context of shape (b, m, context_dim) with context_dim={self.context_dim} "
                    "(this Attention was built with context_dim), got None"
                )
            context = x
        else:
            check_tensor(
                context,
                "context",
                "(b, m, context_dim)",
                sizes={"context_dim": self.context_dim or self.dim},
                like=self,
            )
            check_same_batch(x, "x", context, "context")
        q = rearrange(self.to_q(x), "b n (k d) -> b k n d", k=self.heads)
        k, v = rearrange(self.to_kv(context), "b m (two k d) -> two b k m d", two=2, k=self.heads)
        out = attention(q, k, v, backend=self.backend)  # b k n d
        return self.to_out(rearrange(out, "b k n d -> b n (k d)"))  # b n dim


class FeedForward(nn.Module):
    """``Linear -> GELU -> Linear`` with hidden width ``mult * dim``: ``(b, n, dim) -> (b, n, dim)``.

    Any leading axes are kept: ``(b, ..., dim) -> (b, ..., dim)``.
    """

    def __init__(self, dim: int, mult: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        hidden = int(dim * mult)
        if hidden < 1:
            raise ValueError(f"expected mult * dim >= 1 hidden units, got dim={dim}, mult={mult}")
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, ..., dim)", sizes={"dim": self.dim}, like=self)
        return self.net(x)  # b ... dim


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, feed-forward.

    ``x = x + Attn(LN(x)); x = x + CrossAttn(LN(x), context); x = x + FF(LN(x))``.
    Shapes: x ``(b, n, dim)``, context ``(b, m, context_dim)`` -> ``(b, n, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.context_dim = check_positive_int(context_dim, "context_dim") if context_dim else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, backend=backend)
        self.cross = None
        if context_dim:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, dim_head, context_dim=context_dim, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", "(b, n, dim)", sizes={"dim": self.dim}, like=self)
        if self.cross is None:
            if context is not None:
                raise ValueError(
                    "expected no context: this TransformerBlock was built without context_dim; build it "
                    f"with context_dim=e to attend to a context of shape (b, m, e), got "
                    f"{type(context).__name__} {tuple(getattr(context, 'shape', ()))}"
                )
        else:
            if context is None:
                raise ValueError(
                    f"expected context of shape (b, m, context_dim) with context_dim={self.context_dim} "
                    "(this TransformerBlock has cross-attention), got None"
                )
            check_tensor(context, "context", "(b, m, context_dim)", sizes={"context_dim": self.context_dim}, like=self)
            check_same_batch(x, "x", context, "context")
        x = x + self.attn(self.norm1(x))  # b n dim
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context)
        return x + self.ff(self.norm2(x))  # b n dim
