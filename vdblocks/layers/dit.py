"""DiT building blocks: 2D patch embedding, adaLN-Zero transformer blocks and the adaLN final layer.

DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023), section 3.2: an
image ``(b, c, h, w)`` is cut into ``p x p`` patches, embedded as tokens ``(b, n, dim)`` with fixed
2D sin-cos positions (:func:`~vdblocks.layers.sincos_2d`), and each block is conditioned on a vector
``c (b, cond_dim)`` (timestep plus class / text embedding) through *adaLN-Zero*:

    (gamma_1, beta_1, alpha_1, gamma_2, beta_2, alpha_2) = Linear(SiLU(c))
    x = x + alpha_1 * Attn(LN(x) * (1 + gamma_1) + beta_1)
    x = x + alpha_2 * MLP(LN(x) * (1 + gamma_2) + beta_2)

with the LayerNorms affine-free and the ``Linear`` zero-initialised, so every block starts as the
identity (DESIGN convention 6). The final layer is the same adaLN (shift and scale only) followed by
a zero-initialised linear map to ``p * p * out_channels`` values per token, and :func:`unpatchify`
lays them back out as an image.

CMD (section 3.2) uses these blocks twice: for the content-frame model (an image DiT) and for the
motion model, whose token sequence mixes motion-latent patches with content-frame patches.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..attention.dispatch import BackendSpec
from ..validation import check_positive_int, check_same_batch, check_tensor
from .embeddings import sincos_2d
from .modulation import modulate
from .transformer import Attention, FeedForward

__all__ = ["DiTBlock", "DiTFinalLayer", "PatchEmbed2d", "dit_positions", "unpatchify"]


def dit_positions(dim: int, grid_h: int, grid_w: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Fixed 2D sin-cos positions of a ``grid_h x grid_w`` token grid: ``-> (1, grid_h grid_w, dim)``.

    Row-major, the token order of :class:`PatchEmbed2d`; ``dim`` divisible by 4 (DiT / MAE tables).
    """
    work = torch.float64 if like is not None and like.dtype == torch.float64 else torch.float32
    pos = sincos_2d(dim, grid_h, grid_w, dtype=work)[None]  # 1 n dim
    if like is not None:
        pos = pos.to(device=like.device, dtype=like.dtype)
    return pos


class PatchEmbed2d(nn.Module):
    """Cut an image into ``p x p`` patches and embed each: ``(b, c, h, w) -> (b, (h/p) (w/p), dim)``.

    Any ``h, w`` divisible by ``p`` (non-square included; the error names the axis that is not).
    Tokens are row-major over the ``(h/p, w/p)`` grid, which :meth:`grid_size` returns. A strided
    ``Conv2d``: one linear map per patch (DiT's ``PatchEmbed``).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int = 2, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.dim = check_positive_int(dim, "dim")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h / p, w / p)``; raises ``ValueError`` when ``p`` does not divide ``h`` or ``w``."""
        p = self.patch_size
        for size, name in ((height, "h"), (width, "w")):
            if size % p:
                raise ValueError(
                    f"expected x of shape (b, c, h, w) with {name} divisible by the patch size {p}, got {name}={size}"
                )
        return height // p, width // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, h, w)", sizes={"c": self.in_channels}, like=self)
        self.grid_size(*x.shape[-2:])
        return rearrange(self.proj(x), "b d h w -> b (h w) d")  # b n dim

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, dim={self.dim}, patch_size={self.patch_size}"


def unpatchify(tokens: torch.Tensor, patch_size: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Inverse of the patch cut: ``(b, grid_h grid_w, c p p) -> (b, c, grid_h p, grid_w p)``.

    Token ``i`` fills the patch at row ``i // grid_w``, column ``i % grid_w``; within a token the
    values are ordered ``(c, p1, p2)``, channels outermost (DiT's ``unpatchify`` orders them
    ``(p1, p2, c)``; any fixed order is equivalent for a learned final layer).
    """
    p = check_positive_int(patch_size, "patch_size")
    check_positive_int(grid_h, "grid_h")
    check_positive_int(grid_w, "grid_w")
    check_tensor(tokens, "tokens", "(b, n, e)", sizes={"n": grid_h * grid_w})
    if tokens.shape[-1] % (p * p):
        raise ValueError(
            f"expected tokens of shape (b, n, c p p) with the last axis divisible by p*p={p * p}, "
            f"got {tuple(tokens.shape)}"
        )
    return rearrange(tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=grid_h, p1=p, p2=p)


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning (DiT section 3.2): ``(b, n, dim), (b, cond_dim) -> (b, n, dim)``.

    ``x = x + alpha_1 Attn(modulate(LN(x), beta_1, gamma_1))``, ``x = x + alpha_2 MLP(modulate(LN(x),
    beta_2, gamma_2))`` with the six per-channel vectors from ``Linear(SiLU(c))``. The LayerNorms have
    no affine parameters (adaLN replaces them). With ``zero_init=True`` (default, "adaLN-Zero") the
    modulation linear starts at zero, so the block is the identity until trained.

    ``dim_head`` defaults to ``dim // heads`` (DiT's ``timm`` attention); ``cond_dim`` to ``dim``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int | None = None,
        mlp_ratio: float = 4.0,
        cond_dim: int | None = None,
        zero_init: bool = True,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        heads = check_positive_int(heads, "heads")
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"expected dim divisible by heads when dim_head is not given, got {dim}, {heads}")
            dim_head = dim // heads
        self.cond_dim = check_positive_int(cond_dim or dim, "cond_dim")
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, check_positive_int(dim_head, "dim_head"), backend=backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(self.cond_dim, 6 * dim))
        if zero_init:
            nn.init.zeros_(self.ada[-1].weight)
            nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, n, dim)", sizes={"dim": self.dim}, like=self)
        check_tensor(c, "c", "(b, cond_dim)", sizes={"cond_dim": self.cond_dim}, like=self)
        check_same_batch(x, "x", c, "c")
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)  # b 1 dim each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))  # b n dim
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # b n dim


class DiTFinalLayer(nn.Module):
    """DiT's output head: adaLN (shift, scale) then a linear map per token: ``(b, n, dim) -> (b, n, out_features)``.

    ``out_features`` is ``p * p * out_channels`` for :func:`unpatchify`. Both the modulation and the
    output linear are zero-initialised (``zero_init=True``), so a fresh model predicts 0 (DiT's
    ``initialize_weights``).
    """

    def __init__(self, dim: int, out_features: int, cond_dim: int | None = None, zero_init: bool = True) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.out_features = check_positive_int(out_features, "out_features")
        self.cond_dim = check_positive_int(cond_dim or dim, "cond_dim")
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(self.cond_dim, 2 * dim))
        self.linear = nn.Linear(dim, out_features)
        if zero_init:
            for layer in (self.ada[-1], self.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, n, dim)", sizes={"dim": self.dim}, like=self)
        check_tensor(c, "c", "(b, cond_dim)", sizes={"cond_dim": self.cond_dim}, like=self)
        check_same_batch(x, "x", c, "c")
        shift, scale = self.ada(c)[:, None].chunk(2, dim=-1)  # b 1 dim each
        return self.linear(modulate(self.norm(x), shift, scale))  # b n out_features
