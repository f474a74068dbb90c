"""CMD's content-frame diffusion model (eq. 7): an image DiT or U-Net over content frames, class/text
conditioned.

``eps_theta_I(x_bar_t, c, t)`` learns ``p(x_bar | c)`` with the plain eps objective of eq. 7 (or,
where ``cfg.diffusion.prediction_type`` says so, the velocity or ``x_0`` objective). For
UCF-101 the paper trains a DiT-XL/2 from scratch (Table 7), for WebVid it fine-tunes Stable
Diffusion; :mod:`reference_models.cmd.diffusers_adapter` puts a pretrained diffusers model behind
the same call as :class:`ContentDiT` and :class:`ContentUNet`:

    ``model(x (b, C, H, W), t (b,), labels=None, text=None, drop=None) -> prediction (b, C, H, W)``

Conditioning (:class:`ConditionEmbedding`, shared with the motion model): DiT's adaLN vector
``c = TimestepMLP(t) + LabelEmbedding(y) + Linear(text)``. Class ``num_classes`` is the learned null
class, and a learned null text vector stands in for a dropped text; ``drop (b,)`` (bool) switches a
sample to both nulls. Classifier-free guidance runs the model on ``drop = False`` and ``drop = True``
(:func:`vdblocks.diffusion.cfg_model_fn`); training drops with probability ``cond_dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vdblocks.layers.dit import (
    DiTBlock,
    DiTFinalLayer,
    PatchEmbed2d,
    dit_positions,
    unpatchify,
)
from vdblocks.layers.embeddings import TimestepEmbedding
from vdblocks.layers.norm import group_norm
from vdblocks.layers.resblock import ResBlock2d
from vdblocks.validation import check_positive_int, check_tensor

from ..common.pretrained import PretrainedMixin
from ..common.unet_blocks import SelfAttention2d, adm_res_block, small_map_groups
from .config import CMDConfig

__all__ = [
    "ConditionEmbedding",
    "ContentDiT",
    "ContentUNet",
    "DataNormalizer",
    "build_native_content_model",
    "check_condition_inputs",
    "draw_drop",
    "init_dit_weights",
]


def check_condition_inputs(
    batch: int,
    labels: torch.Tensor | None,
    text: torch.Tensor | None,
    drop: torch.Tensor | None,
    num_classes: int | None,
    text_dim: int | None,
) -> None:
    """Boundary checks of ``labels (b,)`` int in ``[0, num_classes]``, ``text (b, text_dim)`` and ``drop (b,)`` bool."""
    if labels is not None:
        if num_classes is None:
            raise ValueError("this model has no class conditioning (num_classes=None); pass labels=None")
        check_tensor(labels, "labels", "(b,)", sizes={"b": batch}, floating=False)
        out_of_range = labels.device.type != "meta" and bool(((labels < 0) | (labels > num_classes)).any())
        if labels.dtype == torch.bool or out_of_range:
            raise ValueError(
                f"expected labels of shape (b,) with integer classes in [0, {num_classes}] "
                f"({num_classes} is the null class), got {labels.tolist()}"
            )
    if text is not None:
        if text_dim is None:
            raise ValueError("this model has no text conditioning (text_dim=None); pass text=None")
        check_tensor(text, "text", "(b, text_dim)", sizes={"b": batch, "text_dim": text_dim})
    if drop is not None:
        check_tensor(drop, "drop", "(b,)", sizes={"b": batch}, floating=False)
        if drop.dtype != torch.bool:
            raise TypeError(f"expected drop of shape (b,) to be a bool tensor, got {drop.dtype}")


def draw_drop(
    batch: int, probability: float, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """Condition-dropout mask ``(b,)`` bool, True with ``probability`` (None when it is 0).

    Uniforms come from ``generator`` on its own device and are moved to ``device``.
    """
    if probability <= 0:
        return None
    u = torch.rand(batch, generator=generator, device=generator.device if generator is not None else device)
    return (u < probability).to(device)


class DataNormalizer(nn.Module):
    """Per-channel shift and one global scale that make a model's diffusion target zero-mean, unit-variance.

    ``normalize(x) = (x - shift) * scale`` on ``x (b, c, ...)``, ``denormalize`` its inverse; ``bound``
    is the largest ``|normalize(x)|`` seen by :meth:`fit`, the clip range for DDIM's ``x_0`` estimate.
    Buffers, so they are saved with the weights and averaged into the EMA copy as they are.

    Why. An eps-model must get the data mean right at high noise, where ``x_0 = (x_t - sqrt(1 - abar)
    eps) / sqrt(abar)`` magnifies eps errors by ``1 / sqrt(abar)`` (about 150 at ``t = 980``): content
    frames of dark scenes (mean -0.8 for moving shapes) come out grey and broken unless the target is
    centred. Motion latents leave a 1x1 convolution with no fixed scale at all. LDM scales its latents
    for the same reason (``scale_factor``); CMD does not say how it handles this. Identity until
    :meth:`fit` is called (pretrained SD latents are already normalised).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("bound", torch.full((), float("inf")))

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, ...)", sizes={"c": self.channels}, ndim=max(x.ndim, 2))
        return self.shift.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> DataNormalizer:
        """Set the shift (per-channel mean), scale (1 / std) and bound from a batch ``x (b, c, ...)``."""
        self.shift.copy_(x.float().transpose(0, 1).reshape(self.channels, -1).mean(dim=1))
        centred = x.float() - self._view(x.float())
        self.scale.fill_(1.0 / float(centred.std().clamp_min(1e-6)))
        self.bound.fill_(float((centred * self.scale).abs().max()))
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._view(x)) * self.scale.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale.to(x.dtype) + self._view(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ConditionEmbedding(nn.Module):
    """DiT's adaLN condition: ``t (b,), labels (b,), text (b, text_dim), drop (b,) -> c (b, dim)``.

    ``c = TimestepEmbedding(t) + Embedding(labels) + Linear(text)``: the label table has
    ``num_classes + 1`` rows (the last is the null class, DiT's CFG embedding), text goes through one
    linear layer (CMD B.3: "a linear projection layer that maps the text hidden feature to ... the
    DiT hidden dimension"), with a learned null vector for dropped or missing text. ``labels=None``
    or ``text=None`` use the nulls; ``drop[i]=True`` uses both nulls for sample ``i``.
    """

    def __init__(
        self, dim: int, num_classes: int | None = None, text_dim: int | None = None, frequency_dim: int = 256
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.num_classes = None if num_classes is None else check_positive_int(num_classes, "num_classes")
        self.text_dim = None if text_dim is None else check_positive_int(text_dim, "text_dim")
        self.time = TimestepEmbedding(dim, frequency_dim=frequency_dim)
        self.labels = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None
        self.text = nn.Linear(text_dim, dim) if text_dim is not None else None
        self.null_text = nn.Parameter(torch.zeros(text_dim)) if text_dim is not None else None
        if self.labels is not None:
            nn.init.normal_(self.labels.weight, std=0.02)

    def forward(
        self,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_tensor(t, "t", "(b,)", floating=False)
        b = t.shape[0]
        check_condition_inputs(b, labels, text, drop, self.num_classes, self.text_dim)
        c = self.time(t)  # b dim
        if self.labels is not None:
            null = torch.full((b,), self.num_classes, dtype=torch.long, device=t.device)
            y = null if labels is None else labels.to(t.device).long()
            if drop is not None:
                y = torch.where(drop.to(t.device), null, y)
            c = c + self.labels(y)  # b dim
        if self.text is not None:
            null = self.null_text.expand(b, -1)
            txt = null if text is None else text.to(null.dtype)
            if drop is not None:
                txt = torch.where(drop.to(t.device)[:, None], null, txt)
            c = c + self.text(txt)  # b dim
        return c


def init_dit_weights(model: nn.Module, patch_embeds: list[PatchEmbed2d]) -> None:
    """DiT's ``initialize_weights`` for a model with ``cond``, ``blocks`` and ``final`` as :class:`ContentDiT`'s.

    Xavier-uniform linears with zero biases, each patch embedding initialised like a linear, the
    timestep MLP normal(0.02); every block's adaLN modulation and the output layer zero (adaLN-Zero,
    so a fresh model predicts 0).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for embed in patch_embeds:
        w = embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(embed.proj.bias)
    for layer in (model.cond.time.mlp[0], model.cond.time.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    for block in model.blocks:
        nn.init.zeros_(block.ada[-1].weight)
        nn.init.zeros_(block.ada[-1].bias)
    for layer in (model.final.ada[-1], model.final.linear):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class ContentDiT(nn.Module, PretrainedMixin):
    """Image DiT for content frames (eq. 7; DiT-XL/2 in Table 7): ``(b, C, H, W), (b,) -> (b, C, H, W)``.

    Patch embedding (``cfg.content_dit_patch``), fixed 2D sin-cos positions for any ``H x W``
    divisible by the patch, ``cfg.content_dit_depth`` adaLN-Zero :class:`~vdblocks.layers.dit.DiTBlock`\\ s,
    the adaLN final layer and unpatchify. Predicts what ``cfg.diffusion.prediction_type`` names (the
    paper's DiT: eps) and no variance (DiT also learns the variance; DDIM with ``eta = 0``, the
    paper's sampler, does not use it).

    ``forward(x, t, labels=None, text=None, drop=None)``: see :class:`ConditionEmbedding`.
    ``save_pretrained`` / ``from_pretrained``: kind ``"cmd_content"``.
    """

    pretrained_kind = "cmd_content"
    config_class = CMDConfig

    def __init__(self, cfg: CMDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, p = cfg.content_dit_dim, cfg.content_dit_patch
        self.in_channels = cfg.channels
        self.patch = p
        self.embed = PatchEmbed2d(cfg.channels, dim, p)
        self.cond = ConditionEmbedding(dim, cfg.num_classes, cfg.text_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, cfg.content_dit_heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.content_dit_depth)
        )
        self.final = DiTFinalLayer(dim, p * p * cfg.channels)
        self.normalizer = DataNormalizer(cfg.channels)  # the diffusion runs on normalizer.normalize(x_bar)
        self.init_weights()

    def init_weights(self) -> None:
        """DiT's ``initialize_weights``: Xavier linears, the patch embedding like a linear, timestep
        MLP normal(0.02); adaLN modulations and the output layer stay zero (adaLN-Zero)."""
        init_dit_weights(self, [self.embed])

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_tensor(x, "x", "(b, C, H, W)", sizes={"C": self.in_channels})
        gh, gw = self.embed.grid_size(*x.shape[-2:])
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"expected t of shape (b,) with b={x.shape[0]}, got {tuple(t.shape)}")
        c = self.cond(t, labels, text, drop)  # b dim
        tokens = self.embed(x)  # b n dim
        tokens = tokens + dit_positions(tokens.shape[-1], gh, gw, like=tokens)
        for block in self.blocks:
            tokens = block(tokens, c)  # b n dim
        return unpatchify(self.final(tokens, c), self.patch, gh, gw)  # b C H W


class _Level(nn.Module):
    def __init__(self, blocks: list[ResBlock2d], attns: list[nn.Module | None], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(a if a is not None else nn.Identity() for a in attns)
        self.resample = resample


class ContentUNet(nn.Module, PretrainedMixin):
    """ADM-style image U-Net for content frames, the convolutional alternative to the DiT of eq. 7.

    ``(b, C, H, W), (b,) -> (b, C, H, W)`` for any ``H, W``, with the call of :class:`ContentDiT`
    (``forward(x, t, labels=None, text=None, drop=None)``, the same :class:`ConditionEmbedding`, so
    classifier-free guidance and the null class work alike). The paper's content models are a
    DiT-XL/2 trained from scratch (UCF-101) and fine-tuned Stable Diffusion (WebVid), whose
    denoiser is a U-Net. At the tiny sizes that train on a CPU in minutes, the convolutional prior
    gives smoother objects in every class than a DiT after the same steps, so ``tiny`` uses this.

    Layout (ADM / LDM): ``conv3x3(C -> c0)``; per level ``l`` (width ``c0 * content_unet_mult[l]``)
    ``content_unet_blocks`` ADM res blocks (:func:`~reference_models.common.unet_blocks.adm_res_block`), each
    followed by :class:`~reference_models.common.unet_blocks.SelfAttention2d` where the
    downsampling factor ``2^l`` is in ``content_unet_attention``, then (but at the last level) a
    stride-2 ``conv3x3`` (``n -> ceil(n / 2)``); a middle of res block, attention, res block; per
    level from the last, ``blocks + 1`` res blocks on ``[h, skip]`` (plus attention), then nearest
    upsampling back to the skip's exact size and a ``conv3x3``; ``GN, SiLU, conv3x3(c0 -> C)``.
    The condition ``c`` (width ``4 c0``) drives every res block's scale-shift norm. Residual
    branches, attention outputs and the output start at zero (ADM's ``zero_module``).
    ``save_pretrained`` / ``from_pretrained``: kind ``"cmd_content"``.
    """

    pretrained_kind = "cmd_content"
    config_class = CMDConfig

    def __init__(self, cfg: CMDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c0, mults, n_blocks = cfg.content_unet_channels, cfg.content_unet_mult, cfg.content_unet_blocks
        emb = 4 * c0
        self.in_channels = cfg.channels
        self.cond = ConditionEmbedding(emb, cfg.num_classes, cfg.text_dim, frequency_dim=c0)
        self.conv_in = nn.Conv2d(cfg.channels, c0, 3, padding=1)

        def attn(ch: int, level: int) -> SelfAttention2d | None:
            return SelfAttention2d(ch, cfg.content_unet_heads) if 2**level in cfg.content_unet_attention else None

        ch, skips = c0, [c0]
        self.down = nn.ModuleList()
        for level, mult in enumerate(mults):
            blocks, attns = [], []
            for _ in range(n_blocks):
                blocks.append(adm_res_block(ch, c0 * mult, emb))
                ch = c0 * mult
                attns.append(attn(ch, level))
                skips.append(ch)
            last = level == len(mults) - 1
            self.down.append(_Level(blocks, attns, None if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)))
            if not last:
                skips.append(ch)
        self.mid = nn.ModuleList(
            [adm_res_block(ch, ch, emb), SelfAttention2d(ch, cfg.content_unet_heads), adm_res_block(ch, ch, emb)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            blocks, attns = [], []
            for _ in range(n_blocks + 1):
                blocks.append(adm_res_block(ch + skips.pop(), c0 * mult, emb))
                ch = c0 * mult
                attns.append(attn(ch, level))
            self.up.append(_Level(blocks, attns, nn.Conv2d(ch, ch, 3, padding=1) if level > 0 else None))
        self.norm_out = group_norm(ch, small_map_groups(ch))
        self.conv_out = nn.Conv2d(ch, cfg.channels, 3, padding=1)
        self.normalizer = DataNormalizer(cfg.channels)  # the diffusion runs on normalizer.normalize(x_bar)
        self.init_weights()

    def init_weights(self) -> None:
        """Zero the residual branches' last convolutions and scale-shifts, the attention outputs and
        the output convolution: the network starts as a skip-connected map that predicts zero."""
        for m in self.modules():
            if isinstance(m, ResBlock2d):
                m.zero_residual_()
                nn.init.zeros_(m.norm2.proj.weight)
                nn.init.zeros_(m.norm2.proj.bias)
            elif isinstance(m, SelfAttention2d):
                nn.init.zeros_(m.attn.to_out.weight)
                nn.init.zeros_(m.attn.to_out.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_tensor(x, "x", "(b, C, H, W)", sizes={"C": self.in_channels})
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"expected t of shape (b,) with b={x.shape[0]}, got {tuple(t.shape)}")
        c = self.cond(t, labels, text, drop)  # b 4c0
        h = self.conv_in(x)  # b c0 H W
        hs = [h]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, c))  # b c_l H_l W_l
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)  # b c_l ceil(H_l/2) ceil(W_l/2)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, c)), c)
        for level in self.up:
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), c))  # b c_l H_l W_l
            if level.resample is not None:
                h = level.resample(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))  # b c_l H_{l-1} W_{l-1}
        return self.conv_out(F.silu(self.norm_out(h)))  # b C H W


def build_native_content_model(cfg: CMDConfig) -> nn.Module:
    """The content model ``cfg.content_model`` names: :class:`ContentDiT` (``"dit"``) or :class:`ContentUNet`."""
    return ContentUNet(cfg) if cfg.content_model == "unet" else ContentDiT(cfg)
