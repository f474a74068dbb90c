"""Joint self-attention over the tokens of several 2D planes of any sizes (PVDM section 3.2).

PVDM denoises its three latent planes ``z_s (b, c, h, w)``, ``z_h (b, c, t, w)``, ``z_w (b, c, t, h)``
with one shared 2D U-Net; convolutions see one plane at a time, and "to handle the dependency among
z^s, z^h, z^w to model the joint distribution p(z^s, z^h, z^w), we add attention layers that
operate[] to the intermediate features of z^s, z^h, z^w from shared U-Net" (section 3.2, "Latent
diffusion model"). :class:`JointPlaneAttention` is that layer, for any number of planes of any sizes:
the planes' tokens are concatenated into one sequence of ``n = sum_i h_i w_i`` tokens (PVDM's
``O((HW + SW + SH)^2)`` attention) that attend to each other, so a token of one plane sees every
token of every plane.

Readings taken (the paper gives no more detail than the sentence above):

* **Pre-norm residual, as an ADM/LDM attention block.** Each plane is GroupNorm-ed on its own (the
  planes are separate feature maps; GroupNorm normalises per sample), the attention output is added
  back to each plane.
* **Positions.** Attention is permutation-equivariant over tokens, so without positions a token
  knows neither where it lies in its plane nor which plane it belongs to. ``positions="triplane"``
  adds :func:`plane_positions`: fixed sin-cos features of the video axes a token lies on, so tokens
  on the same row, column or frame of different planes share position features (the volume
  ``v_shw = [z_hw, z_sw, z_sh]`` of PVDM's decoder pairs exactly those). ``positions=None`` leaves
  this to the surrounding network (e.g. a per-plane embedding in its conditioning).
* **Kernel.** ``attention="softmax"`` is exact softmax attention through the library's backend
  dispatch (:func:`vdblocks.attention.attention`: SDPA, xformers or the math reference);
  ``attention="mixed"`` is EVDM's :class:`~vdblocks.MixedSelfAttention` (eq. 14: FAVOR+ once the
  token count exceeds ``threshold * dim_head``), for long joint sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
from einops import pack, rearrange, unpack

from ..attention.dispatch import BackendSpec
from ..attention.mixed import MixedSelfAttention
from ..validation import check_positive_int, check_tensor
from .embeddings import sincos_1d
from .norm import check_group_norm_input, group_norm
from .transformer import Attention

__all__ = ["JointPlaneAttention", "plane_positions"]

# The video axes each plane lies on, in the order of its two spatial dims: z_s (h, w), z_h (t, w), z_w (t, h).
_PLANE_AXES = (("h", "w"), ("t", "w"), ("t", "h"))
_LAYOUT = "(b, c, h_i, w_i)"
_ATTENTIONS = ("softmax", "mixed")
_POSITIONS = (None, "triplane")


def plane_positions(dim: int, shapes: Sequence[tuple[int, int]], like: torch.Tensor | None = None) -> torch.Tensor:
    """Sin-cos positions of the tokens of PVDM's three planes: ``-> (n, dim)``, ``n = sum of p_k q_k``.

    ``shapes`` are the planes' spatial shapes ``(p_k, q_k)`` in the order ``z_s (h, w)``,
    ``z_h (t, w)``, ``z_w (t, h)``. Channels ``[0, a)`` encode ``t``, ``[a, 2a)`` ``h``, ``[2a, 3a)``
    ``w`` (``a = 2 * (dim // 6)``; the remaining channels are zero); a plane's missing axis gets
    zeros, so e.g. a ``z_s`` token in column ``j`` and a ``z_h`` token in column ``j`` share their
    ``w`` features. Tokens are row-major within a plane, planes in order, as
    ``rearrange(x, "b c p q -> b (p q) c")``. ``like``: the result takes its dtype and device.
    """
    check_positive_int(dim, "dim")
    if len(shapes) != 3:
        raise ValueError(
            f"expected the spatial shapes of the three planes [z_s (h, w), z_h (t, w), z_w (t, h)], got {shapes!r}"
        )
    a = 2 * (dim // 6)
    slots = {"t": 0, "h": a, "w": 2 * a}
    parts = []
    for axes, (p, q) in zip(_PLANE_AXES, shapes):
        pos = torch.zeros(p, q, dim)
        if a:
            rows = sincos_1d(a, torch.arange(p))  # p a
            cols = sincos_1d(a, torch.arange(q))  # q a
            pos[:, :, slots[axes[0]] : slots[axes[0]] + a] = rows[:, None]
            pos[:, :, slots[axes[1]] : slots[axes[1]] + a] = cols[None, :]
        parts.append(rearrange(pos, "p q c -> (p q) c"))
    out = torch.cat(parts)  # n dim
    if like is not None:
        out = out.to(device=like.device, dtype=like.dtype)
    return out


class JointPlaneAttention(nn.Module):
    """Self-attention over the tokens of all planes at once (PVDM section 3.2, "Latent diffusion model").

    ``[(b, c, h_1, w_1), ..., (b, c, h_k, w_k)] -> [(b, c, h_1, w_1), ..., (b, c, h_k, w_k)]``: every
    plane shares ``b`` and ``c``, sizes may differ. Each plane is GroupNorm-ed and flattened to
    tokens, the sequences are concatenated (``n = sum_i h_i w_i`` tokens, ``einops.pack``),
    :func:`plane_positions` are added under ``positions="triplane"``, multi-head self-attention runs
    over all ``n`` tokens, and each plane gets its share of the output back as a residual::

        tokens = [norm(x_1), ..., norm(x_k)] flattened and concatenated          # b n c
        y_i    = x_i + attn(tokens + pos)[tokens of plane i], back to (h_i, w_i)  # b c h_i w_i

    So the result for a plane depends on every plane; without positions it does not depend on the
    order the planes come in (attention is permutation-equivariant over tokens).

    Args:
        channels: ``c``.
        heads: attention heads.
        dim_head: per-head width; ``None`` takes ``channels // heads`` (then ``heads`` must divide
            ``channels``).
        attention: ``"softmax"``, exact attention through the backend dispatch
            (:class:`~vdblocks.layers.transformer.Attention`, PVDM's choice), or ``"mixed"``,
            EVDM's :class:`~vdblocks.MixedSelfAttention` (eq. 14: FAVOR+ above ``threshold * dim_head``
            tokens). The module is ``self.attn`` either way; zero its ``to_out`` to start the block as
            the identity.
        threshold: ``lambda`` of EVDM eq. 14, for ``attention="mixed"`` only.
        max_groups: GroupNorm groups, at most this many (the largest divisor of ``channels``); PVDM
            passes ``channels // 2`` capped at 32, so a ``1 x 1`` plane still has two values per group.
        positions: ``None`` or ``"triplane"``: add :func:`plane_positions` (exactly three planes
            ``[z_s (b, c, h, w), z_h (b, c, t, w), z_w (b, c, t, h)]`` then).
        backend: attention backend spec for the exact path (see :mod:`vdblocks.attention.dispatch`).

    Submodules: ``norm`` (the GroupNorm, shared by the planes) and ``attn``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        dim_head: int | None = None,
        *,
        attention: Literal["softmax", "mixed"] = "softmax",
        threshold: float = 2.0,
        max_groups: int = 32,
        positions: Literal["triplane"] | None = None,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        heads = check_positive_int(heads, "heads")
        if dim_head is None:
            if channels % heads:
                raise ValueError(f"expected channels={channels} divisible by heads={heads} (or an explicit dim_head)")
            dim_head = channels // heads
        dim_head = check_positive_int(dim_head, "dim_head")
        if attention not in _ATTENTIONS:
            raise ValueError(f"expected attention to be one of {_ATTENTIONS}, got {attention!r}")
        if positions not in _POSITIONS:
            raise ValueError(f"expected positions to be one of {_POSITIONS}, got {positions!r}")
        self.attention = attention
        self.positions = positions
        # norm before attn: the construction (and so the random init) order the PVDM U-Net had.
        self.norm = group_norm(channels, check_positive_int(max_groups, "max_groups"))
        if attention == "softmax":
            self.attn: nn.Module = Attention(channels, heads, dim_head, backend=backend)
        else:
            self.attn = MixedSelfAttention(
                channels, heads=heads, dim_head=dim_head, threshold=threshold, backend=backend
            )

    def _check(self, planes: object) -> None:
        if not isinstance(planes, (list, tuple)):
            raise TypeError(
                f"expected planes to be a list of tensors of shape {_LAYOUT} with c={self.channels}, "
                f"got {type(planes).__name__}"
            )
        if not planes:
            raise ValueError(f"expected planes to be a non-empty list of tensors of shape {_LAYOUT}, got []")
        if self.positions == "triplane" and len(planes) != 3:
            raise ValueError(
                f"expected the three planes [z_s (b, c, h, w), z_h (b, c, t, w), z_w (b, c, t, h)] "
                f"(positions='triplane'), each of shape {_LAYOUT}, got {len(planes)} tensors"
            )
        first = check_tensor(planes[0], "planes[0]", _LAYOUT, sizes={"c": self.channels}, like=self)
        for i, x in enumerate(planes[1:], start=1):
            # every plane shares b and c with the first: a message naming both, not a cat error
            check_tensor(x, f"planes[{i}]", _LAYOUT, sizes={"b": first.shape[0], "c": self.channels}, like=self)
        for x in planes:
            check_group_norm_input(self, x)

    def forward(self, planes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(planes)
        shapes = [tuple(x.shape[2:]) for x in planes]
        tokens, layout = pack([rearrange(self.norm(x), "b c h w -> b (h w) c") for x in planes], "b * c")  # b n c
        if self.positions == "triplane":
            tokens = tokens + plane_positions(self.channels, shapes, like=tokens)  # b n c
        out = unpack(self.attn(tokens), layout, "b * c")  # k x (b, h_i w_i, c)
        return [x + rearrange(o, "b (h w) c -> b c h w", h=h) for x, o, (h, _) in zip(planes, out, shapes)]

    def extra_repr(self) -> str:
        return f"{self.channels}, attention={self.attention!r}, positions={self.positions!r}"
