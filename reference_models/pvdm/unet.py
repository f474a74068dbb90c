"""PVDM's latent denoiser: one 2D U-Net, shared by the three planes, with joint attention across them.

Section 3.2: "we use a single U-Net (i.e., shared parameters) to denoise each z_s, z_h, z_w. To
handle the dependency among z_s, z_h, z_w ... we add attention layers that operate on the
intermediate features of z_s, z_h, z_w from shared U-Net." Architecture (LDM / ADM, Table 6)::

    per plane: conv3x3([z_t, c, m] : 2C + 1 -> c_0)
    per level l (downsample factor 2^l):  N x [ResBlock -> c_0 M_l, JointPlaneAttention if 2^l attends]
                                           then (but at the last level) a stride-2 conv
    middle:                                ResBlock, JointPlaneAttention, ResBlock
    per level l (from the last):           (N + 1) x [ResBlock on [h, skip], JointPlaneAttention if 2^l
                                           attends], then (but at level 0) nearest upsampling + conv3x3
    per plane: GroupNorm, SiLU, conv3x3(c_0 -> C)

Every convolution and norm runs on each plane on its own (planes of one shape are batched
together, which changes nothing: GroupNorm normalises per sample). The only place the planes meet
is :class:`vdblocks.JointPlaneAttention` (``positions="triplane"``): the tokens of all three planes
are concatenated into one sequence of ``h w + t w + t h`` tokens and attend to each other.

Readings taken:

* **Planes of any size.** The release pastes the planes into one square image, which ties it to
  32/16 sizes. Here each plane keeps its own shape; downsampling is a stride-2 ``3x3`` convolution
  with padding 1 (``n -> ceil(n / 2)``, any ``n >= 1``) and upsampling returns exactly to the size
  of the matching skip, so odd, non-square and tiny grids all work. GroupNorm keeps at least two
  channels per group (at most 32 groups, LDM's count at every Table 6 width), so even a ``1 x 1``
  plane has more than one value per group.
* **Which plane is which.** The planes share weights, and ``z_h`` and ``z_w`` may have the same
  shape, so every plane adds a learned plane embedding to the timestep embedding (the scale-shift
  of every res block sees it). In the joint attention each token carries fixed sin-cos positions of
  the axes it lies on (:func:`vdblocks.layers.plane_positions`): a ``z_s`` token at ``(h, w)``, a ``z_h`` token at ``(t, w)``, a ``z_w``
  token at ``(t, h)``; channels are split in three parts for ``t``, ``h`` and ``w`` and the part of
  the missing axis is zero, so tokens on the same row, column or frame of different planes share
  position features (the volume ``v_shw`` of section 3.2 pairs exactly those).
* **Conditioning** (section 3.3, Algorithm 1): the previous clip's clean latent ``z_0^{l-1}``
  enters by channel concatenation per plane. The null condition of the paper is ``0``; since 0 is
  also a valid (tanh-bounded) latent, a flag channel ``m`` (1 = conditional, 0 = null) is
  concatenated as well, and the condition is multiplied by ``m``, so a null sample cannot see it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vdblocks import JointPlaneAttention, TimestepEmbedding
from vdblocks.layers.norm import group_norm
from vdblocks.layers.resblock import ResBlock2d
from vdblocks.validation import check_tensor

from ..common.pretrained import PretrainedMixin
from ..common.unet_blocks import adm_res_block, small_map_groups
from .config import DiffusionConfig
from .planes import check_grid, pack_planes, unpack_planes

__all__ = ["TriplaneUNet"]

PlaneList = list[torch.Tensor]


def _per_plane(fn: Callable[..., torch.Tensor], xs: PlaneList, embs: Sequence[torch.Tensor] | None = None) -> PlaneList:
    """``[fn(x_k, emb_k)]`` for every plane, batching the planes that share a spatial shape."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, x in enumerate(xs):
        groups.setdefault(tuple(x.shape[2:]), []).append(k)
    out: list[torch.Tensor | None] = [None] * len(xs)
    for idx in groups.values():
        x = torch.cat([xs[k] for k in idx])  # (g b) c . .
        y = fn(x) if embs is None else fn(x, torch.cat([embs[k] for k in idx]))
        for k, part in zip(idx, y.chunk(len(idx))):
            out[k] = part
    return out  # type: ignore[return-value]


class _Stage(nn.Module):
    """One step of the U-Net: a res block and optional joint attention, or a resampling."""

    def __init__(
        self,
        res: ResBlock2d | None = None,
        attn: JointPlaneAttention | None = None,
        down: nn.Module | None = None,
        up: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res, self.attn, self.down, self.up = res, attn, down, up


class TriplaneUNet(nn.Module, PretrainedMixin):
    """PVDM's denoiser ``eps_theta(z_t, z_0^{l-1}, t)`` on the packed triplane latent.

    ``forward(z_t (b, C, n), t (b,), cond=None, cond_mask=None, grid=None) -> prediction (b, C, n)``
    (the noise, as PVDM's presets say; the velocity or ``z_0`` under another ``cfg.diffusion``):
    ``n = h w + t w + t h`` for the plane grid ``grid = (t, h, w)`` (default: the config's training
    grid; any grid works). ``cond (b, C, n)``: the previous clip's clean latent; ``cond_mask (b,)``:
    1/True where a sample is conditioned on it, 0/False for the null condition (default: all
    conditional when ``cond`` is given; ``cond=None`` means null for every sample).
    :meth:`forward_planes` takes and returns the three planes instead.
    ``save_pretrained`` / ``from_pretrained``: kind ``"pvdm_diffusion"``.
    """

    pretrained_kind = "pvdm_diffusion"
    config_class = DiffusionConfig

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        if not isinstance(cfg, DiffusionConfig):
            raise TypeError(f"expected a DiffusionConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        C, c0, E = cfg.latent_channels, cfg.base_channels, cfg.emb_dim
        self.time_embed = TimestepEmbedding(E, frequency_dim=c0)
        self.plane_embed = nn.Parameter(torch.zeros(3, E))
        self.input_conv = nn.Conv2d(2 * C + 1, c0, 3, padding=1)

        def joint(ch: int) -> JointPlaneAttention:
            return JointPlaneAttention(ch, cfg.heads, max_groups=small_map_groups(ch), positions="triplane")

        def attn(ch: int, factor: int) -> JointPlaneAttention | None:
            return joint(ch) if factor in cfg.attn_resolutions else None

        ch, factor, skips = c0, 1, [c0]
        self.down_stages = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out = c0 * mult
                self.down_stages.append(_Stage(adm_res_block(ch, out, E, cfg.dropout), attn(out, factor)))
                ch = out
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down_stages.append(_Stage(down=nn.Conv2d(ch, ch, 3, stride=2, padding=1)))
                skips.append(ch)
                factor *= 2
        self.mid_res1 = adm_res_block(ch, ch, E, cfg.dropout)
        self.mid_attn = joint(ch)
        self.mid_res2 = adm_res_block(ch, ch, E, cfg.dropout)
        self.up_stages = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = c0 * mult
                up = nn.Conv2d(out, out, 3, padding=1) if level > 0 and i == cfg.num_res_blocks else None
                self.up_stages.append(
                    _Stage(adm_res_block(ch + skips.pop(), out, E, cfg.dropout), attn(out, factor), up=up)
                )
                ch = out
            factor //= 2
        self.out_norm = group_norm(ch, small_map_groups(ch))
        self.out_conv = nn.Conv2d(ch, C, 3, padding=1)
        self.init_weights()

    def init_weights(self) -> None:
        """Residual branches, attention outputs, scale-shift projections and the output start at zero
        (ADM's ``zero_module``), so the network starts as a skip-connected identity-like map."""
        for m in self.modules():
            if isinstance(m, ResBlock2d):
                m.zero_residual_()
                nn.init.zeros_(m.norm2.proj.weight)
                nn.init.zeros_(m.norm2.proj.bias)
            elif isinstance(m, JointPlaneAttention):
                nn.init.zeros_(m.attn.to_out.weight)
                nn.init.zeros_(m.attn.to_out.bias)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        nn.init.zeros_(self.plane_embed)

    # ------------------------------------------------------------------ inputs

    def _condition(
        self, z: torch.Tensor, cond: torch.Tensor | None, cond_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = z.shape[0]
        if cond is None:
            if cond_mask is not None and bool(torch.as_tensor(cond_mask).any()):
                raise ValueError("cond_mask marks conditional samples but no cond (b, C, n) was given")
            return torch.zeros_like(z), z.new_zeros(b)
        check_tensor(cond, "cond", "(b, c, n)", sizes=dict(zip("bcn", z.shape)))
        if cond_mask is None:
            mask = z.new_ones(b)
        else:
            if not isinstance(cond_mask, torch.Tensor) or cond_mask.shape != (b,):
                got = tuple(cond_mask.shape) if isinstance(cond_mask, torch.Tensor) else type(cond_mask).__name__
                raise ValueError(f"expected cond_mask of shape (b,) with b={b}, got {got}")
            mask = cond_mask.to(device=z.device, dtype=z.dtype)
        return cond.to(z.dtype) * mask[:, None, None], mask

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        grid: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        grid = check_grid(grid if grid is not None else cfg.latent_grid)
        check_tensor(z_t, "z_t", "(b, c, n)", sizes={"c": cfg.latent_channels})
        cond, mask = self._condition(z_t, cond, cond_mask)
        planes = unpack_planes(z_t, grid)
        cond_planes = unpack_planes(cond, grid)
        return pack_planes(*self._run(list(planes), list(cond_planes), mask, t))  # b C n

    def forward_planes(
        self,
        planes: Sequence[torch.Tensor],
        t: torch.Tensor,
        cond: Sequence[torch.Tensor] | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """:meth:`forward` on ``[z_s, z_h, z_w]`` (and the condition's planes) -> prediction planes."""
        z = pack_planes(*planes)
        grid = (planes[1].shape[2], planes[0].shape[2], planes[0].shape[3])
        pred = self.forward(z, t, None if cond is None else pack_planes(*cond), cond_mask, grid)
        return list(unpack_planes(pred, grid))

    # ------------------------------------------------------------------ the network

    def _run(self, planes: PlaneList, cond: PlaneList, mask: torch.Tensor, t: torch.Tensor) -> PlaneList:
        b = planes[0].shape[0]
        if not isinstance(t, torch.Tensor) or t.shape != (b,):
            raise ValueError(f"expected t of shape (b,) with b={b}, got {tuple(getattr(t, 'shape', ())) or t!r}")
        temb = self.time_embed(t.to(planes[0].device))  # b E
        embs = [temb + self.plane_embed[k] for k in range(3)]  # 3 x (b, E)
        flag = mask[:, None, None, None]
        xs = [torch.cat([z, c, flag.expand(-1, 1, *z.shape[2:])], dim=1) for z, c in zip(planes, cond)]  # b 2C+1 p q
        hs = [_per_plane(self.input_conv, xs)]  # b c0 p q
        for stage in self.down_stages:
            h = hs[-1]
            if stage.down is not None:
                h = _per_plane(stage.down, h)  # b c ceil(p/2) ceil(q/2)
            else:
                h = _per_plane(stage.res, h, embs)
                if stage.attn is not None:
                    h = stage.attn(h)
            hs.append(h)
        h = _per_plane(self.mid_res1, hs[-1], embs)
        h = self.mid_attn(h)
        h = _per_plane(self.mid_res2, h, embs)
        for stage in self.up_stages:
            skip = hs.pop()
            h = _per_plane(stage.res, [torch.cat([x, s], dim=1) for x, s in zip(h, skip)], embs)
            if stage.attn is not None:
                h = stage.attn(h)
            if stage.up is not None:
                # back to exactly the size of the next skip: odd sizes were rounded up going down
                h = [stage.up(F.interpolate(x, size=s.shape[2:], mode="nearest")) for x, s in zip(h, hs[-1])]
        return _per_plane(lambda x: self.out_conv(F.silu(self.out_norm(x))), h)  # b C p q
