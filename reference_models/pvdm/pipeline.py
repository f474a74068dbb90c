"""Load the two PVDM stages from their checkpoints and turn sampled latents into videos.

:func:`load_autoencoder` and :func:`load_diffusion` rebuild a stage-1 / stage-2 model from the config
its training run stored (``config["model"]["pvdm_autoencoder"]`` / ``["pvdm_diffusion"]``) with its
EMA weights; :func:`generate_long_video` is Algorithm 1 end to end (latents clip by clip, then the
decoder ``g_psi`` per clip, concatenated in time). The command line lives in
:mod:`reference_models.pvdm.sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference_models.common.checkpoint import Checkpoint, load_model_from_checkpoint
from vdblocks.validation import check_positive_int

from .autoencoder import PVDMAutoencoder
from .config import AutoencoderConfig, DiffusionConfig
from .diffusion import sample_long_latents
from .losses import AutoencoderObjective
from .unet import TriplaneUNet

__all__ = [
    "AUTOENCODER_KEY",
    "DIFFUSION_KEY",
    "decode_latents",
    "generate_long_video",
    "load_autoencoder",
    "load_diffusion",
]

AUTOENCODER_KEY = "pvdm_autoencoder"
DIFFUSION_KEY = "pvdm_diffusion"


def load_autoencoder(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[PVDMAutoencoder, Checkpoint]:
    """The :class:`PVDMAutoencoder` of a stage-1 run (EMA weights by default), in eval mode.

    ``checkpoint``: a manifest, checkpoint directory or training output directory of
    ``python -m reference_models.pvdm.train --stage ae`` (only the model or EMA tensors are read),
    or a ``save_pretrained`` directory of a :class:`PVDMAutoencoder`.
    """
    model, ckpt = load_model_from_checkpoint(
        checkpoint,
        AUTOENCODER_KEY,
        lambda d: AutoencoderObjective(AutoencoderConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=PVDMAutoencoder,
    )
    # A training run holds the whole objective; a save_pretrained directory the autoencoder alone.
    autoencoder = model.autoencoder if isinstance(model, AutoencoderObjective) else model
    return autoencoder.eval(), ckpt


def load_diffusion(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[TriplaneUNet, Checkpoint]:
    """The :class:`TriplaneUNet` of a stage-2 run (EMA weights by default), in eval mode.

    ``checkpoint``: the run (output directory, checkpoint directory or manifest; only the model or
    EMA tensors are read) or a ``save_pretrained`` directory of a :class:`TriplaneUNet`.
    """
    return load_model_from_checkpoint(
        checkpoint,
        DIFFUSION_KEY,
        lambda d: TriplaneUNet(DiffusionConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=TriplaneUNet,
    )


@torch.no_grad()
def decode_latents(
    autoencoder: PVDMAutoencoder, latents: Sequence[torch.Tensor], grid: tuple[int, int, int]
) -> torch.Tensor:
    """Decode clip latents ``[(b, C, n), ...]`` one by one and concatenate them in time:
    ``-> (b, c, L T, H, W)``."""
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        return torch.cat([autoencoder.decode_packed(z, grid) for z in latents], dim=2)  # b c (L T) H W
    finally:
        autoencoder.train(was_training)


def generate_long_video(
    model: nn.Module,
    autoencoder: PVDMAutoencoder,
    batch: int,
    clips: int,
    *,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    first_steps: int = 100,
    next_steps: int = 20,
    return_latents: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Algorithm 1: ``batch`` videos of ``clips * frames`` frames, ``(b, c, clips T, H, W)``.

    ``frames, height, width``: the clip size (default: the autoencoder's training size; any size
    its patches divide works, the U-Net takes any plane grid). ``kwargs`` go to
    :func:`~reference_models.pvdm.diffusion.sample_long_latents` (``sampler``, ``eta``,
    ``generator`` ...). ``return_latents`` also returns the clip latents ``[(b, C, n)] * clips``.
    """
    check_positive_int(batch, "batch")
    cfg = autoencoder.cfg
    grid = autoencoder.latent_grid(frames or cfg.frames, height or cfg.height, width or cfg.width)
    latents = sample_long_latents(
        model, batch, clips, grid=grid, first_steps=first_steps, next_steps=next_steps, **kwargs
    )
    device = next(autoencoder.parameters()).device
    video = decode_latents(autoencoder, [z.to(device) for z in latents], grid)
    return (video, latents) if return_latents else video
