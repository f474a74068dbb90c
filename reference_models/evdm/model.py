"""The U-Net shared by the MCVD "concat" baseline and every EVDM variant.

Skeleton: MCVD's NCSN++ "unetmore" (``models/better/ncsnpp_more.py`` of MCVD, itself score_sde's
NCSN++ with ``resblock_type="biggan"``, ``skip_rescale``, FIR ``[1, 3, 3, 1]`` resampling and
GroupNorm scale-shift from the time embedding). With ``c_0`` base channels, ``M_n`` multipliers and
``N`` res blocks per level (KTH: 96, (1, 2, 3, 4), 2):

    conv3x3(c (T + P + F) -> c_0)
    per level n:   N res blocks (-> c_0 M_n) each followed by attention if n attends,
                   then (but at the last level) a res block that downsamples
    middle:        res block, attention, res block
    per level n (from the last): N + 1 res blocks on [h, skip] (-> c_0 M_n), attention if n
                   attends, then (but at level 0) a res block that upsamples
    GroupNorm, SiLU, conv3x3(c_0 -> c T)

Attention sits after every down res block of an attending level but only once per up level, as in
MCVD (Table 1's attention column counts 3, 3 and 4 blocks at Layers 2, 3 and 4). Res blocks are
:class:`~vdblocks.ResBlock2d` in its BigGAN++ configuration (MCVD) or, with ``use_brp``, EVDM's
:class:`~vdblocks.BottleneckResidualPathway` (:class:`BRPResBlock`), up/down blocks included;
attention is :class:`AttentionBlock` around :class:`~vdblocks.MixedSelfAttention` (exact softmax
for MCVD, eq. 14's gate with ``mixed_attention``).

Conditioning (eqs. 6-7, MCVD "concat"): the ``T`` noisy current frames, the ``P`` past and the ``F``
future frames are stacked along channels (frames folded as ``(t c)``); the model returns the noise
of the current frames. The masks ``m_p``, ``m_f`` of eq. 7 multiply the conditioning frames before
anything sees them, so a masked-out sample's past (future) content cannot reach the output.

``G_emb(p, t)`` of eq. 8 (our reading; the paper gives no architecture): the timestep embedding
(sinusoid of width ``c_0``, ``Linear -> SiLU -> Linear`` to ``E = 4 c_0``, MCVD's) plus, with
``temporal_enhancement``, a :class:`PastFrameEncoder` of the masked past frames: three stride-2
3x3 convolutions of the stacked past frames, global average pooling and a linear map to ``E``.
The sum keeps ``E`` unchanged, so every scale-shift linear has MCVD's size, and the encoder is
small (0.09 M parameters, 8 M MACs per 64x64 sample for KTH): Table 8 charges BRP-eh 2.7 M
parameters and no GFLOPs, which the bottleneck scale-shift linears of eq. 9 alone account for.
Without temporal enhancement the embedding is the timestep's alone (MCVD; Table 8's "+BRP").

The frames live in channels throughout ("the frame dimension of the video is integrated into the
channel dimension to reduce the computational cost", section 3.2): this is a 2D U-Net.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn as nn
from einops import rearrange
from torch._subclasses.fake_tensor import FakeTensorMode

from vdblocks import BottleneckResidualPathway, MixedSelfAttention, ScaleShiftGroupNorm, TimestepEmbedding
from vdblocks.flops import FlopReport, count_flops
from vdblocks.layers.norm import group_norm
from vdblocks.layers.resample import Resample2d
from vdblocks.layers.resblock import ResBlock2d
from vdblocks.validation import check_tensor

from ..common.pretrained import PretrainedMixin
from .config import EVDMConfig

__all__ = [
    "EVDMUNet",
    "BRPResBlock",
    "AttentionBlock",
    "PastFrameEncoder",
    "count_model_flops",
]

ResampleMode = Literal["up", "down"]


class BRPResBlock(nn.Module):
    """EVDM's res block: optional 2x resampling, then a :class:`~vdblocks.BottleneckResidualPathway`.

    ``(b, c_in, h, w), (b, e) -> (b, c_out, h', w')``. EVDM replaces every BigGAN block of MCVD by a
    BRP (section 3.2), up/down ones included; the BRP has no resampling of its own, so the input is
    resampled first and the BRP (with a projecting shortcut, as MCVD's up/down blocks have) runs at
    the output resolution: the convolutions see the same resolution as in MCVD's block, only the
    first GroupNorm moves across the resampling. Keyword arguments go to the BRP.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        emb_dim: int = 384,
        resample: ResampleMode | None = None,
        fir: bool = True,
        **brp_kwargs,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resample = Resample2d(resample, fir) if resample else None
        if resample is not None:
            brp_kwargs.setdefault("project_shortcut", True)
        self.brp = BottleneckResidualPathway(in_channels, out_channels, emb_dim, **brp_kwargs)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            x = self.resample(x)  # b c_in h' w'
        return self.brp(x, emb)  # b c_out h' w'

    def zero_residual_(self) -> None:
        """Zero the convolutions that end the second stage (its direct link, if split, stays)."""
        body = self.brp.stage2.body
        paths = getattr(body, "paths", body)  # ChannelSplit wraps the bottleneck convs in .paths
        for conv in (paths.conv3x3, paths.conv1x1):
            if conv is not None:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)


class AttentionBlock(nn.Module):
    """``(b, c, h, w) -> (b, c, h, w)``: ``(x + MixedSelfAttention(GN(x))) / sqrt(2)`` (MCVD's AttnBlockpp).

    Heads: ``c // head_channels`` (one head of width ``c`` when ``c < head_channels``), as MCVD's
    ``n_head_channels``. ``mixed=False`` forces exact softmax attention (MCVD); ``True`` applies
    eq. 14's gate, FAVOR+ when ``h w > threshold * d``.
    """

    def __init__(
        self,
        channels: int,
        head_channels: int,
        mixed: bool = False,
        threshold: float = 2.0,
        nb_features: int | None = None,
        skip_rescale: bool = True,
    ) -> None:
        super().__init__()
        heads = max(1, channels // head_channels)
        dim_head = channels // heads
        if heads * dim_head != channels:
            raise ValueError(f"expected channels={channels} divisible by head_channels={head_channels}")
        self.norm = group_norm(channels)
        kwargs = dict(
            heads=heads,
            dim_head=dim_head,
            threshold=threshold,
            algorithm="auto" if mixed else "softmax",
            nb_features=nb_features or dim_head,
        )
        if torch.empty(0).device.type == "meta":
            # performer draws its orthogonal random features with a QR, which the meta device cannot
            # run: draw them on CPU, then move the block to meta like everything around it.
            with torch.device("cpu"):
                attn = MixedSelfAttention(channels, **kwargs)
            attn = attn.to("meta")
        else:
            attn = MixedSelfAttention(channels, **kwargs)
        self.attn = attn
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.attn(self.norm(x))  # b c h w
        return out / math.sqrt(2.0) if self.skip_rescale else out

    def algorithm_for(self, height: int, width: int) -> str:
        """``"favor"`` or ``"softmax"``: what runs on an ``height x width`` feature map (eq. 14)."""
        return self.attn.select_algorithm(height * width)


class PastFrameEncoder(nn.Module):
    """The past-frame half of EVDM's ``G_emb(p, t)`` (eq. 8): ``(b, c P, h, w) -> (b, e)``.

    ``Linear(mean_hw(SiLU(conv_s2(SiLU(conv_s2(SiLU(conv_s2(p))))))))`` with widths
    ``hidden/4, hidden/2, hidden``: a small strided CNN of the stacked past frames, pooled to a
    vector. Our reading: the paper names ``G_emb`` but gives no architecture; a pooled CNN gives
    one vector per sample, which eqs. 8-9 need (``e in R^{B x E x 1 x 1}``).
    """

    def __init__(self, in_channels: int, emb_dim: int, hidden: int = 96) -> None:
        super().__init__()
        widths = (max(1, hidden // 4), max(1, hidden // 2), hidden)
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.SiLU()]
            c = w
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(hidden, emb_dim)

    def forward(self, past: torch.Tensor) -> torch.Tensor:
        h = self.convs(past)  # b hidden h/8 w/8
        return self.proj(h.mean(dim=(2, 3)))  # b e


def _autocast_enabled(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # device types without autocast ("meta")
        return False


class _DownLevel(nn.Module):
    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)  # empty, or one per block
        self.downsample = downsample


class _UpLevel(nn.Module):
    def __init__(self, blocks: list[nn.Module], attn: nn.Module | None, upsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.upsample = upsample


class EVDMUNet(nn.Module, PretrainedMixin):
    """MCVD's concat U-Net and EVDM's variants of it, built from one :class:`EVDMConfig`.

    ``forward(x, t, past=None, future=None, past_mask=None, future_mask=None) -> prediction``:

    * ``x``: noisy current frames ``(b, c, t, h, w)`` with ``c = cfg.channels``, ``t = cfg.num_frames``
      and ``h, w`` multiples of ``cfg.size_multiple``;
    * ``t``: timesteps ``(b,)`` (integer or float);
    * ``past``: ``(b, c, P, h, w)`` with ``P = cfg.num_past``; ``future``: ``(b, c, F, h, w)`` with
      ``F = cfg.num_future``. ``None`` means all-masked (zeros), e.g. unconditional generation;
      passing frames to a model built without them is an error;
    * ``past_mask`` / ``future_mask``: ``(b,)`` bool or 0/1 float, eq. 7's ``m_p`` / ``m_f``
      (1 keeps the sample's frames, 0 drops them); ``None`` keeps all. Masking multiplies the frames
      at the input, so a dropped sample's frames do not influence the output at all.

    Returns the prediction ``(b, c, t, h, w)``, like ``x``: the noise (MCVD, EVDM), the velocity or
    ``x_0``, as ``cfg.diffusion.prediction_type`` says. With keyword conditioning the model
    fits ``vdblocks.diffusion``'s ``model_fn(x_t, t)`` through ``functools.partial``.

    The module tree (``down[n]``, ``mid``, ``up[n]``) groups blocks by the paper's Layer ``n + 1``
    (see :meth:`layer_of`); :meth:`attention_plan` lists which attention algorithm every attention
    block runs at a given frame size. ``save_pretrained`` / ``from_pretrained``: see
    :class:`~reference_models.common.pretrained.PretrainedMixin`.
    """

    pretrained_kind = "evdm"
    config_class = EVDMConfig

    def __init__(self, cfg: EVDMConfig) -> None:
        super().__init__()
        if not isinstance(cfg, EVDMConfig):
            raise TypeError(f"expected an EVDMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        c0, mult, emb_dim = cfg.base_channels, cfg.channel_mult, cfg.emb_dim

        self.time_embed = TimestepEmbedding(emb_dim, frequency_dim=c0, hidden_dim=emb_dim)
        self.past_encoder: PastFrameEncoder | None = None
        if cfg.temporal_enhancement and cfg.num_past > 0:
            hidden = cfg.past_encoder_channels or c0
            self.past_encoder = PastFrameEncoder(cfg.channels * cfg.num_past, emb_dim, hidden=hidden)

        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        skips = [c0]
        ch = c0
        self.down = nn.ModuleList()
        for level, m in enumerate(mult):
            attends = level in cfg.attn_levels
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(self._res_block(ch, c0 * m))
                ch = c0 * m
                if attends:
                    attns.append(self._attention(ch))
                skips.append(ch)
            downsample = None
            if level != len(mult) - 1:
                downsample = self._res_block(ch, ch, resample="down")
                skips.append(ch)
            self.down.append(_DownLevel(blocks, attns, downsample))

        self.mid = nn.ModuleList([self._res_block(ch, ch), self._attention(ch), self._res_block(ch, ch)])

        up_levels: list[_UpLevel] = []
        for level in reversed(range(len(mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(self._res_block(ch + skips.pop(), c0 * mult[level]))
                ch = c0 * mult[level]
            attn = self._attention(ch) if level in cfg.attn_levels else None
            upsample = self._res_block(ch, ch, resample="up") if level != 0 else None
            up_levels.append(_UpLevel(blocks, attn, upsample))
        self.up = nn.ModuleList(reversed(up_levels))  # up[n] is level n

        self.norm_out = group_norm(ch)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        self.init_weights()

    # -- construction helpers ------------------------------------------------------------------

    def _res_block(self, c_in: int, c_out: int, resample: ResampleMode | None = None) -> nn.Module:
        cfg = self.cfg
        if not cfg.use_brp:
            # MCVD's ResnetBlockBigGANppGN: scale-shift on both norms, resampling, skip_rescale.
            return ResBlock2d(
                c_in,
                c_out,
                emb_dim=cfg.emb_dim,
                emb_mode="scale_shift_both",
                dropout=cfg.dropout,
                resample=resample,
                fir=cfg.fir_resample,
                skip_rescale=True,
                eps=1e-6,
            )
        return BRPResBlock(
            c_in,
            c_out,
            emb_dim=cfg.emb_dim,
            resample=resample,
            fir=cfg.fir_resample,
            bottleneck_ratio=cfg.bottleneck_ratio,
            temporal_enhancement=cfg.temporal_enhancement,
            dropout=cfg.dropout,
            shortcut="group_shuffle" if cfg.shortcut_optimization else "conv",
            shortcut_groups=cfg.shortcut_groups,
            channel_split=cfg.channel_split,
        )

    def _attention(self, channels: int) -> AttentionBlock:
        cfg = self.cfg
        return AttentionBlock(
            channels,
            cfg.head_channels,
            mixed=cfg.mixed_attention,
            threshold=cfg.attn_threshold,
            nb_features=cfg.favor_features,
        )

    # -- weights -------------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """Start every residual and conditioning branch as identity (MCVD's ``init_scale=0``, DiT).

        ``__init__`` calls it, so a new model is ready to train; call it again to reset those layers.

        Zeroed: the last convolution(s) of each res block's branch, each attention output
        projection, every scale-shift projection (norms start as plain GroupNorm), the last layer of
        the past-frame encoder and the output convolution (the model starts predicting zero noise).
        Everything else keeps PyTorch's default initialisation.
        """
        for module in self.modules():
            if isinstance(module, (ResBlock2d, BRPResBlock)):
                module.zero_residual_()
            elif isinstance(module, AttentionBlock):
                nn.init.zeros_(module.attn.to_out.weight)
                nn.init.zeros_(module.attn.to_out.bias)
            elif isinstance(module, ScaleShiftGroupNorm):
                nn.init.zeros_(module.proj.weight)
                nn.init.zeros_(module.proj.bias)
        if self.past_encoder is not None:
            nn.init.zeros_(self.past_encoder.proj.weight)
            nn.init.zeros_(self.past_encoder.proj.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # -- introspection -------------------------------------------------------------------------

    def layer_of(self, name: str) -> int | None:
        """The paper's layer index (0-based level) of the module or parameter ``name``, else None.

        ``down.{n}.*`` and ``up.{n}.*`` belong to level ``n`` (an up level's upsampling block, which
        runs at the next finer resolution, counts with the level that builds it, as MCVD's module
        list orders it; this convention reproduces Table 1's per-layer MCVD parameters);
        ``mid.*`` to the last level; the embeddings and the in/out convolutions to none.
        """
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in ("down", "up") and parts[i + 1].isdigit():
                return int(parts[i + 1])
            if part == "mid":
                return self.cfg.num_levels - 1
        return None

    def attention_blocks(self) -> Iterator[tuple[int, AttentionBlock]]:
        """``(level, block)`` for every attention block, in forward order."""
        for level, down in enumerate(self.down):
            for attn in down.attns:
                yield level, attn
        yield self.cfg.num_levels - 1, self.mid[1]
        for level in reversed(range(self.cfg.num_levels)):
            if self.up[level].attn is not None:
                yield level, self.up[level].attn

    def attention_plan(self, height: int | None = None, width: int | None = None) -> list[dict]:
        """What every attention block runs on ``height x width`` frames (default: ``cfg.image_size``).

        One dict per block: ``level``, ``tokens`` ``L = (h / 2^n)(w / 2^n)`` (eq. 14's
        ``HW / 4^n``), ``heads`` ``h_n``, ``dim_head`` ``d``, ``algorithm`` (``"favor"`` or
        ``"softmax"``).
        """
        height = height or self.cfg.image_size
        width = width or height
        plan = []
        for level, block in self.attention_blocks():
            h, w = height // 2**level, width // 2**level
            plan.append(
                dict(
                    level=level,
                    tokens=h * w,
                    heads=block.attn.heads,
                    dim_head=block.attn.dim_head,
                    algorithm=block.algorithm_for(h, w),
                )
            )
        return plan

    # -- forward -------------------------------------------------------------------------------

    def _condition(
        self, frames: torch.Tensor | None, mask: torch.Tensor | None, count: int, name: str, x: torch.Tensor
    ) -> torch.Tensor | None:
        """Validated, masked conditioning frames folded to ``(b, (f c), h, w)``; None if ``count == 0``."""
        cfg = self.cfg
        b, _, _, h, w = x.shape
        if count == 0:
            if frames is not None or mask is not None:
                raise ValueError(
                    f"this model was built with num_{name}=0 and takes no {name} frames or {name}_mask; "
                    f"build it with num_{name}>0 to condition on {name} frames"
                )
            return None
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.ndim != 1 or mask.shape[0] != b:
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"expected {name}_mask of shape (b,) with b={b}, got {got}")
        if frames is None:
            return x.new_zeros(b, cfg.channels * count, h, w)  # all masked
        check_tensor(frames, name, "(b, c, t, h, w)", sizes={"b": b, "c": cfg.channels, "t": count, "h": h, "w": w})
        if mask is not None:
            frames = frames * mask.to(frames.dtype).reshape(b, 1, 1, 1, 1)  # eq. 7: m p
        return rearrange(frames, "b c t h w -> b (t c) h w")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        past: torch.Tensor | None = None,
        future: torch.Tensor | None = None,
        past_mask: torch.Tensor | None = None,
        future_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": cfg.channels, "t": cfg.num_frames})
        b, _, _, height, width = x.shape
        if height % cfg.size_multiple or width % cfg.size_multiple:
            raise ValueError(
                f"expected x of shape (b, c, t, h, w) with h and w multiples of {cfg.size_multiple} "
                f"(2 ** (levels - 1)), got {tuple(x.shape)}"
            )
        weight_dtype = self.conv_in.weight.dtype
        if x.dtype != weight_dtype and not _autocast_enabled(x.device):
            raise TypeError(
                f"expected x of shape (b, c, t, h, w) with dtype {weight_dtype} (the model's), got {x.dtype}; "
                "cast the input or the model, or run under torch.autocast"
            )
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != b:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"expected t of shape (b,) with b={b}, got {got}")
        p = self._condition(past, past_mask, cfg.num_past, "past", x)
        f = self._condition(future, future_mask, cfg.num_future, "future", x)

        emb = self.time_embed(t)  # b e
        if self.past_encoder is not None:
            emb = emb + self.past_encoder(p)  # b e: G_emb(p, t)
        inputs = [rearrange(x, "b c t h w -> b (t c) h w")] + [c for c in (p, f) if c is not None]
        h = self.conv_in(torch.cat(inputs, dim=1))  # b c0 h w
        hs = [h]
        for down in self.down:
            for i, block in enumerate(down.blocks):
                h = block(h, emb)  # b c_n h_n w_n
                if len(down.attns):
                    h = down.attns[i](h)
                hs.append(h)
            if down.downsample is not None:
                h = down.downsample(h, emb)  # b c_n h_n/2 w_n/2
                hs.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)  # b c_L h_L w_L
        for level in reversed(range(cfg.num_levels)):
            up = self.up[level]
            for block in up.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)  # b c_n h_n w_n
            if up.attn is not None:
                h = up.attn(h)
            if up.upsample is not None:
                h = up.upsample(h, emb)  # b c_n 2h_n 2w_n
        h = self.conv_out(self.act(self.norm_out(h)))  # b (t c) h w
        return rearrange(h, "b (t c) h w -> b c t h w", c=cfg.channels)


def count_model_flops(
    cfg: EVDMConfig, height: int | None = None, width: int | None = None
) -> tuple[EVDMUNet, FlopReport]:
    """Forward MACs/FLOPs of the model ``cfg`` builds, for one ``height x width`` sample (batch 1).

    Returns ``(model, report)``; the model is built and run under PyTorch's ``FakeTensorMode``
    (shapes without storage: nothing is allocated or computed, so the 0.7 B-parameter UCF baseline
    counts in a second) and is only good for inspection (its parameter shapes and names, e.g. for
    ``report.by_module``, whose names start with ``"EVDMUNet."``). Every op that
    :func:`vdblocks.flops.count_flops` counts (convolutions, linears, attention matmuls, FAVOR+'s
    matmuls, the FIR resampling) scales linearly with the batch: a batch of ``B`` costs
    ``B * report.macs``. (Fake rather than meta tensors because BRP blocks ask PyTorch for the
    autocast state of their input's device, which it cannot answer for "meta".)
    """
    height = height or cfg.image_size
    width = width or height
    c = cfg.channels
    with FakeTensorMode():
        model = EVDMUNet(cfg).eval()

        def frames(n: int) -> torch.Tensor | None:
            return torch.zeros(1, c, n, height, width) if n else None

        with torch.no_grad():
            report = count_flops(
                model, frames(cfg.num_frames), torch.zeros(1), past=frames(cfg.num_past), future=frames(cfg.num_future)
            )
    return model, report
