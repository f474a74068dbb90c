"""Scale-shift modulation from a conditioning embedding (FiLM / adaGN / adaLN)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import check_positive_int, check_same_batch, check_tensor
from .norm import group_norm

__all__ = ["modulate", "ScaleShiftGroupNorm"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``shift``/``scale`` ``(b, c)`` broadcast over ``x``'s trailing axes.

    ``x`` is ``(b, c, *spatial)`` (channels first); for tokens ``(b, n, c)`` pass ``shift[:, None]``
    yourself (DiT's ``modulate``). In general ``shift`` and ``scale`` share one shape, of rank at most
    ``x``'s, that broadcasts against ``x``'s leading axes, and ``x``'s dtype and device (any dtype
    under ``torch.autocast``).
    """
    check_tensor(x, "x", "(b, c, *spatial)")
    for name, v in (("shift", shift), ("scale", scale)):
        check_tensor(v, name, "(b, c, *spatial)", like=x, like_name="x")
        if v.ndim > x.ndim or any(s not in (1, t) for s, t in zip(v.shape, x.shape)):
            raise ValueError(
                f"expected {name} of shape (b, c, *spatial) broadcastable to the leading axes of x "
                f"{tuple(x.shape)}, got {tuple(v.shape)}"
            )
    if shift.shape != scale.shape:
        raise ValueError(
            f"expected shift and scale of one shape (b, c, *spatial), got {tuple(shift.shape)} and {tuple(scale.shape)}"
        )
    extra = x.ndim - shift.ndim
    shift = shift.reshape(*shift.shape, *([1] * extra))
    scale = scale.reshape(*scale.shape, *([1] * extra))
    return x * (1 + scale) + shift


class ScaleShiftGroupNorm(nn.Module):
    """GroupNorm whose output is scaled and shifted by a projection of an embedding.

    ``y = GN(x) * (1 + e_1) + e_2`` with ``[e_1, e_2] = Linear(SiLU(emb))`` (EVDM eq. 8, the BigGAN /
    guided-diffusion "scale-shift norm"). Shapes: x ``(b, c, *spatial)`` (at least one spatial
    axis), emb ``(b, emb_dim)`` -> ``(b, c, *spatial)``, both in the module's dtype and on its
    device (any dtype under ``torch.autocast``). The projection starts from PyTorch's default init; a model that wants the
    branch to start as plain GroupNorm zeroes ``self.proj`` in its ``init_weights``.
    """

    def __init__(self, channels: int, emb_dim: int, max_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.emb_dim = check_positive_int(emb_dim, "emb_dim")
        self.norm = group_norm(channels, max_groups, eps=eps)
        self.act = nn.SiLU()
        self.proj = nn.Linear(emb_dim, 2 * channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, *spatial)", sizes={"c": self.channels}, min_ndim=3, like=self)
        check_tensor(emb, "emb", "(b, e)", sizes={"e": self.emb_dim}, like=self)
        check_same_batch(x, "x", emb, "emb")
        scale, shift = self.proj(self.act(emb)).chunk(2, dim=1)  # b c, b c
        # GN(x) * (1 + scale) + shift with GN's affine folded into the per-sample (b, c) factors:
        # (gamma * xhat + beta) * (1 + scale) + shift = xhat * a + c, a = gamma (1 + scale),
        # c = beta (1 + scale) + shift. One pass over x after the normalization instead of three
        # (affine, scale, shift), which matters where the block is memory-bound (EVDM-L on a CPU).
        gain = 1 + scale  # b c
        if self.norm.affine:
            a, c = gain * self.norm.weight, torch.addcmul(shift, gain, self.norm.bias)  # b c, b c
        else:
            a, c = gain, shift
        extra = (1,) * (x.ndim - 2)
        a, c = a.view(*a.shape, *extra), c.view(*c.shape, *extra)  # b c 1.., b c 1..
        xhat = F.group_norm(x, self.norm.num_groups, eps=self.norm.eps)  # b c *spatial
        if torch.is_grad_enabled() and (xhat.requires_grad or a.requires_grad):
            y = xhat * a  # autograd keeps xhat (addcmul would cost one more pass in its backward)
        else:
            y = xhat.mul_(a)  # nothing records xhat: reuse its memory
        return y.add_(c)  # in place: neither product keeps its output
