"""CMD's motion diffusion model (eq. 8, Table 6): a DiT over motion-latent patches with the content
frame as dense input-level condition.

``eps_theta_M(z_t, c, x_bar, t)`` learns ``p(z | x_bar, c)``. The input sequence is

    [ patches of z_x (L/p x H'/p) | patches of z_y (L/p x W'/p) | patches of x_bar (H/q x W/q) ]

with motion patch ``p = cfg.motion_patch`` (2 in the paper) and content patch ``q =
cfg.content_patch`` (4-16, Tables 4c and 6): a larger ``q`` shortens the sequence, the knob of
section 4.3. Each part gets its own patch embedding (``z_x`` and ``z_y`` share one, as they share
``f_M`` in the encoder), fixed 2D sin-cos positions over its own grid and a learned type
embedding that tells the three parts apart. The condition ``c`` (class and/or pooled text) and the
timestep enter through adaLN (:class:`~reference_models.cmd.content_model.ConditionEmbedding`;
the CMD release ignores ``c`` here, we do not), and the adaLN final layer reads only the motion
tokens, which unpatchify to the prediction for ``z_x`` and ``z_y``: the noise of eq. 8, the
velocity or ``z_0``, as ``cfg.diffusion.prediction_type`` says.

Call: ``model(z (b, D, L, H' + W'), t (b,), content (b, C, H, W), labels=None, text=None,
drop=None) -> prediction (b, D, L, H' + W')``, with ``z`` packed as
:func:`~reference_models.cmd.autoencoder.pack_motion` does; ``H' = H / cfg.ae_patch``.

Latent scale. The motion latents come out of a 1x1 convolution with no prior on their scale; the
diffusion needs roughly zero mean and unit variance. As LDM's ``scale_factor``, the model holds a
:class:`~reference_models.cmd.content_model.DataNormalizer` (fitted once on data before training,
saved with the weights): the diffusion runs on ``normalizer.normalize(z)``. The paper does not say how
it handles this.
"""

from __future__ import annotations

import torch
from torch import nn

from vdblocks.layers.dit import (
    DiTBlock,
    DiTFinalLayer,
    PatchEmbed2d,
    dit_positions,
    unpatchify,
)
from vdblocks.validation import check_tensor

from ..common.pretrained import PretrainedMixin
from .autoencoder import unpack_motion
from .config import CMDConfig
from .content_model import ConditionEmbedding, DataNormalizer, init_dit_weights

__all__ = ["MotionDiT", "motion_sequence_length"]


def motion_sequence_length(
    cfg: CMDConfig, frames: int | None = None, height: int | None = None, width: int | None = None
) -> tuple[int, int]:
    """``(motion tokens, content tokens)`` of the motion DiT for a ``frames x height x width`` input.

    ``(L/p) (H'/p) + (L/p) (W'/p)`` and ``(H/q) (W/q)`` (config sizes by default).
    """
    frames, height, width = frames or cfg.frames, height or cfg.height, width or cfg.width
    cfg.check_size(frames, height, width)
    p, q = cfg.motion_patch, cfg.content_patch
    lt, hh, ww = frames // p, height // cfg.ae_patch // p, width // cfg.ae_patch // p
    return lt * (hh + ww), (height // q) * (width // q)


class MotionDiT(nn.Module, PretrainedMixin):
    """The motion DiT of eq. 8; see the module docstring for the sequence layout.

    Shapes: ``z (b, D, L, H' + W')``, ``t (b,)``, ``content (b, C, H, W)``, optional ``labels (b,)``,
    ``text (b, text_dim)``, ``drop (b,)`` -> prediction ``(b, D, L, H' + W')`` (noise, velocity or
    ``z_0`` as ``cfg.diffusion`` says). Any ``L``, ``H``, ``W`` that
    :meth:`CMDConfig.check_size` accepts.
    ``save_pretrained`` / ``from_pretrained``: kind ``"cmd_motion"`` (the fitted normaliser included).
    """

    pretrained_kind = "cmd_motion"
    config_class = CMDConfig

    def __init__(self, cfg: CMDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.motion_dim
        self.motion_embed = PatchEmbed2d(cfg.motion_channels, dim, cfg.motion_patch)
        self.content_embed = PatchEmbed2d(cfg.channels, dim, cfg.content_patch)
        self.type_embed = nn.Parameter(torch.zeros(3, dim))  # z_x, z_y, content
        self.cond = ConditionEmbedding(dim, cfg.num_classes, cfg.text_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, cfg.motion_heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.motion_depth)
        )
        self.final = DiTFinalLayer(dim, cfg.motion_patch**2 * cfg.motion_channels)
        self.normalizer = DataNormalizer(cfg.motion_channels)  # the diffusion runs on normalizer.normalize(z)
        self.init_weights()

    def init_weights(self) -> None:
        """DiT's initialisation (see :meth:`ContentDiT.init_weights`); type embeddings normal(0.02)."""
        init_dit_weights(self, [self.motion_embed, self.content_embed])
        nn.init.normal_(self.type_embed, std=0.02)

    def sequence_length(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """``(motion tokens, content tokens)`` for this input size (:func:`motion_sequence_length`)."""
        return motion_sequence_length(self.cfg, frames, height, width)

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        content: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        check_tensor(content, "content", "(b, C, H, W)", sizes={"C": cfg.channels})
        b, _, height, width = content.shape
        check_tensor(z, "z", "(b, D, L, h + w)", sizes={"b": b, "D": cfg.motion_channels})
        frames = z.shape[2]
        cfg.check_size(frames, height, width)
        h, w = height // cfg.ae_patch, width // cfg.ae_patch
        if z.shape[-1] != h + w:
            raise ValueError(
                f"expected z of shape (b, D, L, h + w) with h + w = {h} + {w} for content {tuple(content.shape)} "
                f"(ae_patch={cfg.ae_patch}), got {tuple(z.shape)}"
            )
        if t.ndim != 1 or t.shape[0] != b:
            raise ValueError(f"expected t of shape (b,) with b={b}, got {tuple(t.shape)}")
        c = self.cond(t, labels, text, drop)  # b dim
        z_x, z_y = unpack_motion(z, h)  # b D L h, b D L w
        p, q, dim = cfg.motion_patch, cfg.content_patch, cfg.motion_dim
        lt = frames // p
        parts = [
            self.motion_embed(z_x) + dit_positions(dim, lt, h // p, like=z) + self.type_embed[0],  # b n_x dim
            self.motion_embed(z_y) + dit_positions(dim, lt, w // p, like=z) + self.type_embed[1],  # b n_y dim
            self.content_embed(content.to(z.dtype))
            + dit_positions(dim, height // q, width // q, like=z)
            + self.type_embed[2],  # b n_c dim
        ]
        n_x, n_y = parts[0].shape[1], parts[1].shape[1]
        tokens = torch.cat(parts, dim=1)  # b (n_x + n_y + n_c) dim
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final(tokens[:, : n_x + n_y], c)  # b (n_x + n_y) (p p D): motion tokens only
        eps_x = unpatchify(out[:, :n_x], p, lt, h // p)  # b D L h
        eps_y = unpatchify(out[:, n_x:], p, lt, w // p)  # b D L w
        return torch.cat([eps_x, eps_y], dim=-1)  # b D L (h + w)
